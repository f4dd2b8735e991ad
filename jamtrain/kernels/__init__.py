"""Attention kernels: the fused bidirectional cross-attention (Triton) and its PyTorch reference;
document-masked causal self-attention without a dense mask (self_attention.py)."""

from jamtrain.kernels.cross_attention import (  # noqa: F401
    bidirectional_cross_attention,
    reference_bidirectional_cross_attention,
    reference_cross_attention,
    reference_lse,
    resolve_impl,
)
