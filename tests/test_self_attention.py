"""Document-masked causal self-attention: the segment-wise and FlexAttention paths equal the dense
reference (values and gradients, fp32), and neither allocates an [L, L] tensor."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from jamtrain.kernels.self_attention import (
    ENV_VAR,
    DocumentMask,
    dense_attention,
    document_attention,
    document_runs,
    resolve_self_impl,
)
from jamtrain.models import Backbone, BackboneConfig


def packed_segments(B: int = 3, L: int = 160) -> torch.Tensor:
    """Rows as the loader packs them: several documents then padding (-1); two rows share a layout."""
    seg = torch.full((B, L), -1, dtype=torch.int32)
    seg[0, :40], seg[0, 40:41], seg[0, 41:130] = 0, 1, 2  # a one-token document, then padding
    seg[1, :] = 0  # one document fills the row
    if B > 2:
        seg[2] = seg[0]
    return seg


def qkv(B, H, G, L, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, D, generator=g, requires_grad=True)
    k = torch.randn(B, G, L, D, generator=g, requires_grad=True)
    v = torch.randn(B, G, L, D, generator=g, requires_grad=True)
    return q, k, v


@pytest.mark.parametrize("impl", ["segments", "flex"])
@pytest.mark.parametrize("G", [4, 2])  # plain and grouped-query attention
def test_paths_equal_the_dense_reference_values_and_gradients(impl, G):
    seg = packed_segments()
    q, k, v = qkv(3, 4, G, seg.shape[1], 16)
    ref = dense_attention(q, k, v, seg)
    g_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    if impl == "flex":  # FlexAttention has no backward on CPU: values only here (gpu_check.sh does both)
        with torch.no_grad():
            out = document_attention(q.detach(), k.detach(), v.detach(), seg, impl=impl)
        torch.testing.assert_close(out, ref.detach(), atol=1e-5, rtol=1e-5)
        return
    out = document_attention(q, k, v, seg, impl=impl)
    g_out = torch.autograd.grad(out.square().sum(), (q, k, v))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


class ShapeLog(TorchDispatchMode):
    """Every tensor any aten operator returns, by shape (what the forward/backward allocates)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def square_tensors(shapes, L):
    return [s for s in shapes if len(s) >= 2 and s[-1] == L and s[-2] == L]


def test_segment_path_allocates_no_square_mask_in_a_backbone_forward_and_backward(monkeypatch):
    cfg = BackboneConfig(
        vocab_size=50,
        n_layers=2,
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        d_ff=64,
        max_seq_len=256,
        positions="rotary",
        norm="rmsnorm",
        activation="swiglu",
    )
    torch.manual_seed(0)
    model = Backbone(cfg)
    seg = packed_segments()
    L = seg.shape[1]
    tokens = torch.randint(0, 50, seg.shape)
    monkeypatch.setenv(ENV_VAR, "dense")
    ref = model(tokens, seg)
    with ShapeLog() as log:
        model(tokens, seg).sum().backward()
    assert square_tensors(log.shapes, L), "the detector must see the reference's dense mask"
    monkeypatch.setenv(ENV_VAR, "segments")
    model.zero_grad()
    with ShapeLog() as log:
        out = model(tokens, seg)
        out.sum().backward()
    assert square_tensors(log.shapes, L) == []
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    mask = model.context(tokens, seg).mask
    assert isinstance(mask, DocumentMask) and mask.impl == "segments" and mask.dense is None


def test_flex_mask_is_a_block_mask_of_tiles_not_an_L_by_L_tensor():
    from torch.nn.attention.flex_attention import BlockMask

    seg = packed_segments(B=2, L=384)
    m = DocumentMask(seg, "flex")
    assert isinstance(m.block_mask, BlockMask) and m.dense is None
    tensors = [t for t in vars(m.block_mask).values() if isinstance(t, torch.Tensor)]
    assert tensors and max(t.numel() for t in tensors) <= 2 * 3 * 3  # B x (L/128) x (L/128) tiles at most


def test_runs_are_the_documents_and_a_recurring_id_falls_back_to_the_reference():
    seg = packed_segments()
    runs = document_runs(seg)
    assert runs[0] == ((0, 40), (40, 41), (41, 130), (130, 160)) and runs[1] == ((0, 160),)
    odd = torch.tensor([[0, 0, 1, 1, 0, 0]])  # document 0 again after document 1
    assert document_runs(odd) is None
    m = DocumentMask(odd, "segments")
    assert m.impl == "dense"
    q, k, v = qkv(1, 2, 2, 6, 8)
    torch.testing.assert_close(m(q, k, v), dense_attention(q, k, v, odd))


def test_impl_choice_and_bad_names(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_self_impl(None, torch.device("cpu")) == "segments"
    assert resolve_self_impl(None, torch.device("cuda")) == "flex"
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match="JAM_SELF_ATTN_IMPL='fast'"):
        resolve_self_impl(None, torch.device("cpu"))
