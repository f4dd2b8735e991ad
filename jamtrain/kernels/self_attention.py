"""Document-masked causal self-attention over packed rows, without a dense [L, L] mask.

Layout q [B, H, L, D], k/v [B, G, L, D] (G key/value heads, G divides H: grouped-query attention).
Token i of a row may see token j iff j <= i and segment_ids[i] == segment_ids[j] (padding, id -1,
forms its own block, as in the reference), so a packed row behaves exactly like its documents
run one at a time.

Three implementations, equal in fp32 to 1e-5 (tests/test_self_attention.py):
- `dense`: the reference: one boolean [B, 1, L, L] mask into `scaled_dot_product_attention`.
  The mask rules out PyTorch's flash backend and costs B*L^2 bytes per forward.
- `segments`: each document run of a row is its own `scaled_dot_product_attention(is_causal=True)`
  call, so the flash (GPU) or fused CPU backend serves it; rows with the same document layout
  run together. Works on any device; the host reads the document boundaries once per forward.
- `flex`: FlexAttention with a `BlockMask` built from the segment ids (per 128x128 tile: empty,
  full or partial), compiled with `torch.compile` on CUDA. Eager (uncompiled) FlexAttention
  evaluates every score and has no backward on CPU, so off CUDA `auto` picks `segments`.

`auto` (the default) is `flex` on CUDA and `segments` elsewhere; JAM_SELF_ATTN_IMPL overrides it.
A row whose document ids repeat after another document (never written by the loader) is served
by `dense` under `segments`, which assumes contiguous runs.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch
import torch.nn.functional as F

IMPLS = ("auto", "dense", "segments", "flex")
ENV_VAR = "JAM_SELF_ATTN_IMPL"


def resolve_self_impl(impl: str | None, device: torch.device) -> str:
    choice = impl or os.environ.get(ENV_VAR) or "auto"
    if choice not in IMPLS:
        source = "impl" if impl else ENV_VAR
        raise ValueError(f"{source}={choice!r} is not a self-attention implementation (allowed: {', '.join(IMPLS)})")
    if choice != "auto":
        return choice
    return "flex" if device.type == "cuda" else "segments"


def dense_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """The reference's block-diagonal causal mask [B, 1, L, L] (the diagonal is always allowed)."""
    L = segment_ids.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (same & causal)[:, None]


def _expand_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rep = q.shape[1] // k.shape[1]
    if rep == 1:
        return k, v
    return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)


def dense_attention(q, k, v, segment_ids: torch.Tensor | None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The reference (the masked SDPA backends have no grouped-query attention: k/v are expanded)."""
    if segment_ids is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])
    k, v = _expand_kv(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(segment_ids) if mask is None else mask)


# -------------------------------------------------------------------------------------- segments
def document_runs(segment_ids: torch.Tensor) -> list[tuple[tuple[int, int], ...]] | None:
    """Per row, the (start, end) of each run of equal ids; None when an id recurs in a row after a
    different one (the runs would then not be the documents)."""
    seg = segment_ids.detach().to("cpu", torch.int64)
    B, L = seg.shape
    change = torch.ones(B, L, dtype=torch.bool)
    change[:, 1:] = seg[:, 1:] != seg[:, :-1]
    rows = []
    for b in range(B):
        starts = torch.nonzero(change[b]).flatten().tolist()
        ids = seg[b, starts].tolist()
        if len(set(ids)) != len(ids):
            return None
        rows.append(tuple(zip(starts, starts[1:] + [L])))
    return rows


def segment_attention(q, k, v, runs: list[tuple[tuple[int, int], ...]]) -> torch.Tensor:
    """One causal SDPA call per document run; rows with the same runs are batched together."""
    gqa = k.shape[1] != q.shape[1]
    groups: dict[tuple, list[int]] = {}
    for b, r in enumerate(runs):
        groups.setdefault(r, []).append(b)
    if len(groups) == 1:
        ((layout, _),) = groups.items()
        return torch.cat(
            [
                F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True, enable_gqa=gqa)
                for s, e in layout
            ],
            dim=2,
        )
    out: dict[int, torch.Tensor] = {}  # row -> its output
    for layout, rows in groups.items():
        idx = torch.tensor(rows, device=q.device)
        qs, ks, vs = q.index_select(0, idx), k.index_select(0, idx), v.index_select(0, idx)
        o = torch.cat(
            [
                F.scaled_dot_product_attention(
                    qs[:, :, s:e], ks[:, :, s:e], vs[:, :, s:e], is_causal=True, enable_gqa=gqa
                )
                for s, e in layout
            ],
            dim=2,
        )
        for j, b in enumerate(rows):
            out[b] = o[j : j + 1]
    return torch.cat([out[b] for b in range(q.shape[0])], dim=0)


# ------------------------------------------------------------------------------------------ flex
def flex_block_mask(segment_ids: torch.Tensor, compile: bool | None = None):
    """A FlexAttention `BlockMask` for document-masked causal attention (no [L, L] tensor when
    compiled; eager construction evaluates the mask tile by tile)."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg = segment_ids.to(torch.int32)
    B, L = seg.shape

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (seg[b, q_idx] == seg[b, kv_idx])

    compile = segment_ids.device.type == "cuda" if compile is None else compile
    return create_block_mask(mask_mod, B, None, L, L, device=segment_ids.device, _compile=compile)


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attention(q, k, v, block_mask) -> torch.Tensor:
    from torch.nn.attention import flex_attention as fa

    fn = _compiled_flex() if q.device.type == "cuda" else fa.flex_attention
    return fn(q, k, v, block_mask=block_mask, enable_gqa=k.shape[1] != q.shape[1])


# -------------------------------------------------------------------------------------- dispatch
class DocumentMask:
    """What one forward pass shares across layers: the chosen implementation and its mask
    (document runs, a BlockMask, or the dense reference mask), built once."""

    def __init__(self, segment_ids: torch.Tensor, impl: str | None = None):
        self.segment_ids = segment_ids
        self.impl = resolve_self_impl(impl, segment_ids.device)
        self.runs = self.block_mask = self.dense = None
        if self.impl == "segments":
            self.runs = document_runs(segment_ids)
            if self.runs is None:
                self.impl = "dense"
        elif self.impl == "flex":
            self.block_mask = flex_block_mask(segment_ids)
        if self.impl == "dense":
            self.dense = dense_mask(segment_ids)

    def __call__(self, q, k, v) -> torch.Tensor:
        if self.impl == "segments" and self.runs is not None:  # (runs is None only for "dense")
            return segment_attention(q, k, v, self.runs)
        if self.impl == "flex":
            return flex_attention(q, k, v, self.block_mask)
        return dense_attention(q, k, v, self.segment_ids, self.dense)


def document_attention(q, k, v, segment_ids: torch.Tensor | None, impl: str | None = None) -> torch.Tensor:
    """Causal self-attention within documents (one call; layers share a `DocumentMask` instead)."""
    if segment_ids is None:
        return dense_attention(q, k, v, None)
    return DocumentMask(segment_ids, impl)(q, k, v)
