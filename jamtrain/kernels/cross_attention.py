"""Causal cross-attention between two streams: the PyTorch reference and the dispatcher.

Layout [B, H, L, D]. Query i of one stream may see key j of the other stream iff
    (not causal or j <= i)  and  seg_k[j] >= 0  and  seg_q[i] == seg_k[j]
(segment ids [B, L] int, -1 = padding; None = one document, no padding). Causality is
top-left aligned (position i sees positions <= i, also when Lq != Lk). A query row that can see
no key outputs zeros (never NaN) and gets zero gradient.

`bidirectional_cross_attention` runs both directions (A reads B, B reads A); on CUDA it uses the
fused Triton kernel (one launch for both), elsewhere the reference. Override with `impl=` or the
environment variable JAM_CROSS_ATTN_IMPL (auto | triton | reference); `impl=` wins.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

IMPLS = ("auto", "triton", "reference")
ENV_VAR = "JAM_CROSS_ATTN_IMPL"


def attention_mask(
    Lq: int, Lk: int, seg_q: torch.Tensor | None, seg_k: torch.Tensor | None, causal: bool, device: torch.device
) -> torch.Tensor | None:
    """Boolean [B or 1, 1, Lq, Lk] mask (True = may attend), or None when nothing is masked."""
    mask = None
    if causal:
        i = torch.arange(Lq, device=device)[:, None]
        j = torch.arange(Lk, device=device)[None, :]
        mask = (j <= i)[None, None]
    if seg_q is not None or seg_k is not None:
        if seg_q is None or seg_k is None:
            raise ValueError("segment ids must be given for both streams or neither")
        seg = (seg_q[:, None, :, None] == seg_k[:, None, None, :]) & (seg_k[:, None, None, :] >= 0)
        mask = seg if mask is None else mask & seg
    return mask


def reference_cross_attention(q, k, v, seg_q=None, seg_k=None, causal=True, scale=None):
    """One direction with `scaled_dot_product_attention`; fully masked rows give zeros."""
    Lq, Lk = q.shape[-2], k.shape[-2]
    mask = attention_mask(Lq, Lk, seg_q, seg_k, causal, q.device)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    # Rows with no visible key: let them see everything (finite softmax), then zero the output,
    # so neither the value nor its gradient can become NaN.
    empty = ~mask.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | empty, scale=scale)
    return out.masked_fill(empty, 0.0)


def reference_lse(q, k, seg_q=None, seg_k=None, causal=True, scale=None) -> torch.Tensor:
    """Per-row natural log-sum-exp of the masked scores (-inf for rows with no visible key)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    mask = attention_mask(q.shape[-2], k.shape[-2], seg_q, seg_k, causal, q.device)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.logsumexp(s, -1)


def reference_bidirectional_cross_attention(qa, ka, va, qb, kb, vb, seg_a=None, seg_b=None, causal=True, scale=None):
    oa = reference_cross_attention(qa, kb, vb, seg_a, seg_b, causal, scale)
    ob = reference_cross_attention(qb, ka, va, seg_b, seg_a, causal, scale)
    return oa, ob


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_impl(impl: str | None, device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """'triton' or 'reference' for these inputs (argument, then JAM_CROSS_ATTN_IMPL, then auto)."""
    choice = impl or os.environ.get(ENV_VAR) or "auto"
    if choice not in IMPLS:
        source = "impl" if impl else ENV_VAR
        raise ValueError(f"{source}={choice!r} is not a cross-attention implementation (allowed: {', '.join(IMPLS)})")
    if choice != "auto":
        return choice
    ok = (
        device.type == "cuda"
        and dtype in (torch.float16, torch.bfloat16, torch.float32)
        and head_dim <= 256
        and _triton_available()
    )
    return "triton" if ok else "reference"


def bidirectional_cross_attention(
    qa, ka, va, qb, kb, vb, seg_a=None, seg_b=None, causal=True, scale=None, impl: str | None = None
):
    """(out_a, out_b): stream A's queries over stream B's keys/values, and the reverse.

    qa/ka/va: [B, H, La, D] from stream A; qb/kb/vb: [B, H, Lb, D] from stream B;
    seg_a [B, La], seg_b [B, Lb] optional document ids (-1 = padding)."""
    if (seg_a is None) != (seg_b is None):
        raise ValueError("segment ids must be given for both streams or neither")
    if qa.shape[-1] != qb.shape[-1] or qa.shape[:2] != qb.shape[:2]:
        raise ValueError(f"streams disagree on batch/heads/head_dim: {tuple(qa.shape)} vs {tuple(qb.shape)}")
    if len({t.dtype for t in (qa, ka, va, qb, kb, vb)}) != 1:
        raise ValueError("q, k and v of both streams must share one dtype")
    which = resolve_impl(impl, qa.device, qa.dtype, qa.shape[-1])
    if which == "triton":
        from jamtrain.kernels.triton_cross_attention import triton_bidirectional_cross_attention

        return triton_bidirectional_cross_attention(qa, ka, va, qb, kb, vb, seg_a, seg_b, causal, scale)
    return reference_bidirectional_cross_attention(qa, ka, va, qb, kb, vb, seg_a, seg_b, causal, scale)
