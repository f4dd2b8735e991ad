"""The decoder backbone: pre-norm, bias-free linear layers, document-aware causal attention.

Two families share one implementation: CM3leon/OPT-like (LayerNorm, GELU, learned positions) and
LLaMA-like (RMSNorm, SwiGLU, rotary positions in the Hugging Face rotate-half layout, grouped-query
attention); tied or untied output head in both. The config keys pick the pieces (config.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from jamtrain.kernels.self_attention import DocumentMask, dense_mask
from jamtrain.models.config import BackboneConfig


class GroupedLayerNorm(nn.Module):
    """LayerNorm or RMSNorm over `groups` equal slices of the hidden dim (groups=1: the plain norm).

    JAM-Width uses groups=2 so that each half of the doubled width is normalised exactly as its
    parent normalised it. RMSNorm follows LLaMA / Hugging Face `LlamaRMSNorm`: statistics in fp32,
    `weight * (x / rms(x))` cast back to the input dtype, no bias."""

    def __init__(self, dim: int, groups: int = 1, eps: float = 1e-5, bias: bool = False, kind: str = "layernorm"):
        super().__init__()
        if kind == "rmsnorm" and bias:
            raise ValueError("RMSNorm has no bias")
        self.dim, self.groups, self.eps, self.kind = dim, groups, eps, kind
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rmsnorm":
            h = x.float().unflatten(-1, (self.groups, self.dim // self.groups))
            h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
            return self.weight * h.to(x.dtype)
        if self.groups == 1:
            return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)
        g = x.unflatten(-1, (self.groups, self.dim // self.groups))
        y = F.layer_norm(g, (self.dim // self.groups,), None, None, self.eps).flatten(-2)
        y = y * self.weight
        return y + self.bias if self.bias is not None else y


def make_norm(cfg: BackboneConfig) -> GroupedLayerNorm:
    return GroupedLayerNorm(cfg.d_model, cfg.norm_groups, cfg.norm_eps, cfg.norm_bias, cfg.norm)


def rotary_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, 1, L, head_dim/2] for integer positions [B, L]."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    ang = positions.float()[..., None] * inv
    return ang.cos()[:, None], ang.sin()[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel i with channel i + head_dim/2 (the "rotate-half" layout of Hugging Face
    LLaMA checkpoints, whose q/k projections are permuted to it; Meta's original interleaved
    layout would pair channels 2i and 2i+1)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


def segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """Position of each token within its document: restarts wherever the segment id changes."""
    B, L = segment_ids.shape
    idx = torch.arange(L, device=segment_ids.device).expand(B, L)
    change = torch.ones_like(segment_ids, dtype=torch.bool)
    change[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    start = torch.where(change, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start


def self_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask [B, 1, L, L] of the reference implementation (kernels/self_attention.py)."""
    return dense_mask(segment_ids)


class AttnContext:
    """What every layer of one forward pass shares: positions, rotary tables, the document mask."""

    def __init__(self, cfg: BackboneConfig, tokens: torch.Tensor, segment_ids: torch.Tensor | None):
        B, L = tokens.shape
        if L > cfg.max_seq_len:
            raise ValueError(f"sequence length {L} exceeds max_seq_len {cfg.max_seq_len}")
        self.segment_ids = segment_ids
        if segment_ids is not None and cfg.reset_positions:
            self.positions = segment_positions(segment_ids)
        else:
            self.positions = torch.arange(L, device=tokens.device).expand(B, L)
        # built once per forward pass and shared by every layer; no dense [L, L] mask unless the
        # reference implementation is asked for (JAM_SELF_ATTN_IMPL=dense)
        self.mask = None if segment_ids is None else DocumentMask(segment_ids)
        self.rope = rotary_tables(self.positions, cfg.head_dim, cfg.rope_theta) if cfg.positions == "rotary" else None


class SelfAttention(nn.Module):
    """Causal self-attention; with n_kv_heads < n_heads, grouped-query attention: query head h
    reads key/value head h // (n_heads / n_kv_heads), as Hugging Face's `repeat_kv` does."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        d, kv = cfg.d_model, cfg.kv_heads * cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv, bias=False)
        self.v_proj = nn.Linear(d, kv, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if ctx.rope is not None:
            q, k = apply_rotary(q, *ctx.rope), apply_rotary(k, *ctx.rope)
        if ctx.mask is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads)
        else:
            o = ctx.mask(q, k, v)
        return self.o_proj(o.transpose(1, 2).reshape(B, L, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.swiglu = cfg.activation == "swiglu"
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        if self.swiglu:
            self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.gate(x)) * self.up(x) if self.swiglu else F.gelu(self.up(x))
        return self.down(h)


class Block(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = SelfAttention(cfg)
        self.ffn_norm = make_norm(cfg)
        self.ffn = FeedForward(cfg)

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), ctx)
        return x + self.ffn(self.ffn_norm(x))


class Backbone(nn.Module):
    """Decoder LM. forward(tokens [B, L], segment_ids [B, L] or None) -> logits [B, L, V].

    With segment_ids, attention is block-diagonal causal (a token sees only earlier tokens of its
    own document; padding, id -1, forms its own block) and positions restart per document."""

    def __init__(self, cfg: BackboneConfig, activation_checkpointing: bool = False):
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = activation_checkpointing
        # None inside JAM-Cross with a shared embedding (fusion.py): the caller passes the table
        self.tok_emb: nn.Embedding | None = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.positions == "learned" else None
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)  # GPT-2/OPT residual-projection scaling
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.zeros_(p) if name.endswith("bias") else nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down.weight")):
                nn.init.normal_(p, 0.0, out_std)
            else:
                nn.init.normal_(p, 0.0, std)

    # The pieces JAM-Cross drives layer by layer.
    def context(self, tokens: torch.Tensor, segment_ids: torch.Tensor | None) -> AttnContext:
        return AttnContext(self.cfg, tokens, segment_ids)

    def embed(self, tokens: torch.Tensor, ctx: AttnContext, table: torch.Tensor | None = None) -> torch.Tensor:
        x = F.embedding(tokens, self._tok_table() if table is None else table)
        if self.pos_emb is not None:
            x = x + self.pos_emb(ctx.positions)
        return x

    def layer(self, i: int, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self.layers[i], x, ctx, use_reentrant=False)
        return self.layers[i](x, ctx)

    def _tok_table(self) -> torch.Tensor:
        if self.tok_emb is None:
            raise RuntimeError("this backbone's input embedding is shared (JAM-Cross): pass its table")
        return self.tok_emb.weight

    def head_weight(self) -> torch.Tensor:
        return self._tok_table() if self.head is None else self.head.weight

    def hidden_states(self, tokens: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final normalised hidden states [B, L, d_model] (the input of the output head)."""
        ctx = self.context(tokens, segment_ids)
        x = self.embed(tokens, ctx)
        for i in range(len(self.layers)):
            x = self.layer(i, x, ctx)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(self.hidden_states(tokens, segment_ids), self.head_weight())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
