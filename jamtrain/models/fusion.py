"""The three JAM fusions of a text decoder and an image-text decoder of the same architecture.

- `fuse_uniform`: one model, parameters w * text + (1 - w) * image.
- `fuse_width`: one model of twice the width. Block-diagonal copies: hidden = [text half | image
  half], heads 0..H-1 from the text model and H..2H-1 from the image model (with grouped-query
  attention likewise key/value heads 0..G-1 and G..2G-1, so every query head keeps its parent's
  key/value head), FFN units side by side, every cross block zero, norms (LayerNorm or RMSNorm)
  normalising each half separately (norm_groups=2). At
  initialisation the text half of every hidden state equals the text parent's and the image half
  the image parent's. The head is [a * W_text | (1 - a) * W_image], so the logits are
  a * text_logits + (1 - a) * image_logits (a = 1, 0, 0.5 for width_head text/image/average).
- `JamCross`: both backbones kept; after every k-th layer a gated bidirectional causal
  cross-attention block (see `CrossBlock`); tanh gates start at 0, so at initialisation each stream
  equals its parent. As in the paper, a new linear layer `proj` maps [h_text | h_image] (2d) to d
  and the shared output embedding maps that to the vocabulary: rows [0, text_rows) from the text
  parent's output table, the rest from the image parent's (the input table itself when the
  parents are tied). `proj` starts as [a * I | (1 - a) * I] (cross_head), so with a = 1 the
  text rows' logits are exactly the text parent's.

Every fusion builds its result without initialising it and writes it one tensor at a time
(materialize.py): on one device, or partitioned over the ranks under DeepSpeed ZeRO-3 (`zero`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from jamdata.errors import ModelError
from jamtrain.kernels.cross_attention import bidirectional_cross_attention
from jamtrain.models.backbone import Backbone, GroupedLayerNorm
from jamtrain.models.config import BackboneConfig, CrossConfig, HEAD_INITS
from jamtrain.models.materialize import empty_model, targets


class FusionError(ModelError):
    """The two parents cannot be fused (different architectures, bad weights)."""


def _source(parent):
    """A parent as tensors by key: a built Backbone is viewed in place; a `ParentWeights`
    (parents.py, read lazily from a file) is used as it is."""
    if isinstance(parent, Backbone):
        from jamtrain.models.parents import as_parent

        return as_parent(parent)
    return parent


def _check_parents(text, image) -> BackboneConfig:
    if text.cfg != image.cfg:
        diff = {k: (v, image.cfg.to_dict()[k]) for k, v in text.cfg.to_dict().items() if image.cfg.to_dict()[k] != v}
        raise FusionError(f"parents differ in architecture (text, image): {diff}")
    if text.cfg.norm_groups != 1:
        raise FusionError("parents must be plain backbones (norm_groups=1), not width-fused models")
    return text.cfg


def _device_of(parent) -> torch.device:
    if isinstance(parent, Backbone) and parent.tok_emb is not None:
        return parent.tok_emb.weight.device
    return torch.device("cpu")


def head_mix(head: str) -> float:
    if head not in HEAD_INITS:
        raise FusionError(f"head init must be one of {HEAD_INITS}, got {head!r}")
    return {"text": 1.0, "image": 0.0, "average": 0.5}[head]


# --------------------------------------------------------------------------------------- uniform
@torch.no_grad()
def fuse_uniform(text, image, weight: float = 0.5, device=None, dtype=None, zero: dict | None = None) -> Backbone:
    """w * text + (1 - w) * image, parameter by parameter (in fp32, then stored in `dtype`).
    Parents are Backbones or `ParentWeights`; the result lives on `device` (default: the text
    parent's), or partitioned under ZeRO-3 with `zero` (the DeepSpeed config), and is filled one
    tensor at a time."""
    cfg = _check_parents(text, image)
    if not 0.0 <= weight <= 1.0:
        raise FusionError(f"uniform weight must be in [0, 1], got {weight}")
    out = empty_model(lambda: Backbone(cfg), device or _device_of(text), dtype, zero)
    ti, im = _source(text), _source(image)
    for key, target in targets(out):
        target.copy_(weight * ti.tensor(key).float() + (1.0 - weight) * im.tensor(key).float())
    return out


# ----------------------------------------------------------------------------------------- width
def width_config(cfg: BackboneConfig) -> BackboneConfig:
    d = cfg.to_dict()
    d.update(
        d_model=2 * cfg.d_model,
        n_heads=2 * cfg.n_heads,
        n_kv_heads=2 * cfg.n_kv_heads,
        d_ff=2 * cfg.d_ff,
        norm_groups=2,
        tie_embeddings=False,
    )
    return BackboneConfig.from_dict(d)


WIDTH_SIDE_BY_SIDE = ("head.weight", "tok_emb.weight", "pos_emb.weight")  # [rows, width] tables


@torch.no_grad()
def fuse_width(text, image, head: str = "average", device=None, dtype=None, zero: dict | None = None) -> Backbone:
    """Twice the width; each half computes its parent exactly at initialisation (module docstring).
    Parents, `device`, `dtype` and `zero` as for `fuse_uniform`."""
    cfg = _check_parents(text, image)
    a = head_mix(head)
    out = empty_model(lambda: Backbone(width_config(cfg)), device or _device_of(text), dtype, zero)
    ti, im = _source(text), _source(image)
    for key, target in targets(out):
        if key == "head.weight":
            left, right = a * ti.head_weight().float(), (1 - a) * im.head_weight().float()
        else:
            left, right = ti.tensor(key), im.tensor(key)
        side = target.dim() == 1 or key in WIDTH_SIDE_BY_SIDE
        want: tuple[int, ...]
        l_slice: slice | tuple[slice, slice]
        r_slice: slice | tuple[slice, slice]
        if target.dim() == 1:  # norm weights/biases: halves side by side
            want, l_slice, r_slice = (len(left) + len(right),), slice(0, len(left)), slice(len(left), None)
        elif side:  # the width halves of each row
            n = left.shape[1]
            want, l_slice, r_slice = (
                (left.shape[0], n + right.shape[1]),
                (slice(None), slice(0, n)),
                (slice(None), slice(n, None)),
            )
        else:  # every projection: block-diagonal, cross blocks zero
            r, c = left.shape
            want, l_slice, r_slice = (
                (r + right.shape[0], c + right.shape[1]),
                (slice(0, r), slice(0, c)),
                (slice(r, None), slice(c, None)),
            )
            target.zero_()
        if tuple(want) != tuple(target.shape):
            raise FusionError(f"{key}: built {tuple(want)}, expected {tuple(target.shape)}")
        target[l_slice].copy_(left)
        target[r_slice].copy_(right)
    return out


# ----------------------------------------------------------------------------------------- cross
class CrossBlock(nn.Module):
    """Gated bidirectional causal cross-attention between the two streams at one depth.

    x_t <- x_t + tanh(g_t) * Wo_t attn(q = Wq_t LN(x_t), k/v = Wk_t/Wv_t LN'(x_i))
    x_i <- x_i + tanh(g_i) * Wo_i attn(q = Wq_i LN(x_i), k/v = Wk_i/Wv_i LN'(x_t))
    Parameters suffixed _t belong to the text stream's reading (queries from text, keys/values
    projected from image states), _i to the image stream's. Both directions read the inputs of this
    block (not each other's update) and run in one fused kernel call. Causal: position p of one stream sees positions <= p of the other, within the same
    document when segment ids are given."""

    # set by name below, one of each per stream
    q_norm_t: GroupedLayerNorm
    q_norm_i: GroupedLayerNorm
    kv_norm_t: GroupedLayerNorm
    kv_norm_i: GroupedLayerNorm
    q_t: nn.Linear
    k_t: nn.Linear
    v_t: nn.Linear
    o_t: nn.Linear
    q_i: nn.Linear
    k_i: nn.Linear
    v_i: nn.Linear
    o_i: nn.Linear
    gate_t: nn.Parameter
    gate_i: nn.Parameter

    def __init__(self, d_model: int, n_heads: int, eps: float = 1e-5, bias: bool = False, norm: str = "layernorm"):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by cross_heads {n_heads}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        for s in ("t", "i"):
            setattr(self, f"q_norm_{s}", GroupedLayerNorm(d_model, 1, eps, bias, norm))
            setattr(self, f"kv_norm_{s}", GroupedLayerNorm(d_model, 1, eps, bias, norm))
            for p in ("q", "k", "v", "o"):
                setattr(self, f"{p}_{s}", nn.Linear(d_model, d_model, bias=False))
            setattr(self, f"gate_{s}", nn.Parameter(torch.zeros(1)))  # 1-d: ZeRO-friendly

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x_t, x_i, seg=None, impl: str | None = None):
        kv_t, kv_i = self.kv_norm_t(x_i), self.kv_norm_i(x_t)  # what each stream reads
        q_t, q_i = self.q_norm_t(x_t), self.q_norm_i(x_i)
        o_t, o_i = bidirectional_cross_attention(
            self._heads(self.q_t(q_t)),
            self._heads(self.k_i(kv_i)),
            self._heads(self.v_i(kv_i)),
            self._heads(self.q_i(q_i)),
            self._heads(self.k_t(kv_t)),
            self._heads(self.v_t(kv_t)),
            seg,
            seg,
            causal=True,
            impl=impl,
        )
        B, L, _ = x_t.shape
        o_t = self.o_t(o_t.transpose(1, 2).reshape(B, L, -1))
        o_i = self.o_i(o_i.transpose(1, 2).reshape(B, L, -1))
        return x_t + torch.tanh(self.gate_t) * o_t, x_i + torch.tanh(self.gate_i) * o_i


class JamCross(nn.Module):
    """JAM-Cross. forward(tokens, segment_ids=None) -> logits [B, L, V].

    The backbones keep their layers, positions and final norms; their own output heads are dropped
    and, with a shared embedding, so are their token tables. Output: `proj` (2d -> d, the paper's
    new linear layer over the concatenated final hidden states), then the shared output embedding:
    the input table itself when the embedding is shared and the parents tie theirs
    (`tied_output`), else its own [V, d] table `head`, one for both streams."""

    def __init__(self, cfg: CrossConfig, activation_checkpointing: bool = False):
        super().__init__()
        b = cfg.backbone
        if cfg.cross_every < 1 or b.n_layers % cfg.cross_every:
            raise ValueError(f"cross_every {cfg.cross_every} must divide n_layers {b.n_layers}")
        if not 0 <= cfg.text_rows <= b.vocab_size:
            raise ValueError(f"text_rows {cfg.text_rows} outside [0, vocab_size {b.vocab_size}]")
        self.cfg = cfg
        self.text = Backbone(b, activation_checkpointing)
        self.image = Backbone(b, activation_checkpointing)
        self.cross = nn.ModuleList(
            CrossBlock(b.d_model, cfg.heads, b.norm_eps, b.norm_bias, b.norm) for _ in range(cfg.n_cross)
        )
        # the shared input embedding; with embedding="separate" each backbone keeps its own table
        self.embedding = nn.Embedding(b.vocab_size, b.d_model) if cfg.embedding == "shared" else None
        self.proj = nn.Linear(2 * b.d_model, b.d_model, bias=False)
        self.head = None if self.tied_output else nn.Linear(b.d_model, b.vocab_size, bias=False)
        for blk in self.cross:
            for name, p in blk.named_parameters():
                if p.dim() == 2:
                    nn.init.normal_(p, 0.0, b.init_std)
        for mod in (self.embedding, self.proj, self.head):
            if mod is not None:
                nn.init.normal_(mod.weight, 0.0, b.init_std)
        for m in (self.text, self.image):
            m.head = None
            if self.embedding is not None:
                m.tok_emb = None
        self.kernel = cfg.kernel

    @property
    def tied_output(self) -> bool:
        """The output embedding is the shared input table (shared embedding, tied parents)."""
        return self.cfg.embedding == "shared" and self.cfg.backbone.tie_embeddings

    def output_weight(self) -> torch.Tensor:
        """The shared output embedding [V, d]."""
        if self.head is not None:
            return self.head.weight
        assert self.embedding is not None  # no head: the output is the shared input table
        return self.embedding.weight

    def streams(self, tokens: torch.Tensor, segment_ids: torch.Tensor | None = None):
        """Final normalised hidden states of the text and image streams, each [B, L, d]."""
        ctx_t = self.text.context(tokens, segment_ids)
        ctx_i = self.image.context(tokens, segment_ids)
        table = None if self.embedding is None else self.embedding.weight
        x_t = self.text.embed(tokens, ctx_t, table)
        x_i = self.image.embed(tokens, ctx_i, table)
        k = self.cfg.cross_every
        for layer in range(self.cfg.backbone.n_layers):
            x_t = self.text.layer(layer, x_t, ctx_t)
            x_i = self.image.layer(layer, x_i, ctx_i)
            if (layer + 1) % k == 0:
                x_t, x_i = self._cross(layer // k, x_t, x_i, segment_ids)
        return self.text.norm(x_t), self.image.norm(x_i)

    def _cross(self, i: int, x_t: torch.Tensor, x_i: torch.Tensor, seg: torch.Tensor | None):
        """Cross block i; recomputed in the backward pass when the backbones checkpoint their layers
        (each block keeps ~16 [B, L, d] activations otherwise: projections, norms, attention output)."""
        if self.text.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self.cross[i], x_t, x_i, seg, self.kernel, use_reentrant=False)
        return self.cross[i](x_t, x_i, seg, self.kernel)

    def forward(self, tokens: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        h_t, h_i = self.streams(tokens, segment_ids)
        return F.linear(self.proj(torch.cat([h_t, h_i], dim=-1)), self.output_weight())


def _init_cross_param(name: str, p: torch.Tensor, std: float) -> None:
    """A new parameter of a cross block: projections N(0, init_std), drawn in fp32 from the global
    generator whatever the storage dtype (so fp32 and bf16 builds agree after rounding, and a
    ZeRO-3 build draws what an unpartitioned one does); norm weights 1, biases and tanh gates 0
    (the blocks start switched off)."""
    if p.dim() == 2:
        p.copy_(torch.empty(p.shape, dtype=torch.float32).normal_(0.0, std))
    elif name.endswith("weight"):
        p.fill_(1.0)
    else:
        p.zero_()


def _split_rows(target: torch.Tensor, text: torch.Tensor, image: torch.Tensor, text_rows: int) -> None:
    """Rows [0, text_rows) from the text parent's table, the rest from the image parent's."""
    target[:text_rows].copy_(text[:text_rows])
    target[text_rows:].copy_(image[text_rows:])


@torch.no_grad()
def fuse_cross(
    text,
    image,
    text_rows: int,
    cross_every: int = 1,
    cross_heads: int = 0,
    embedding: str = "shared",
    head: str = "average",
    kernel: str = "auto",
    device=None,
    dtype=None,
    zero: dict | None = None,
) -> JamCross:
    """JAM-Cross from two parents: backbones copied, cross blocks gated off, input and output
    embedding rows [0, text_rows) from the text model and the rest from the image model, `proj`
    = [a * I | (1 - a) * I] (see the module docstring). Parents are Backbones or `ParentWeights`
    (read one tensor at a time); the model is built without initialisation and filled tensor by
    tensor on `device` in `dtype`, or partitioned over the ranks under ZeRO-3 (`zero`), so only
    the fused model itself (or this rank's part of it) is ever held whole."""
    cfg = _check_parents(text, image)
    a = head_mix(head)
    ccfg = CrossConfig(cfg, cross_every, cross_heads, text_rows, embedding, head, kernel)
    model = empty_model(lambda: JamCross(ccfg), device or _device_of(text), dtype, zero)
    ti, im = _source(text), _source(image)
    d = cfg.d_model
    for key, target in targets(model):
        part, _, rest = key.partition(".")
        if part in ("text", "image"):
            target.copy_((ti if part == "text" else im).tensor(rest))
        elif part == "cross":
            _init_cross_param(key, target, cfg.init_std)
        elif key == "embedding.weight":
            _split_rows(target, ti.tensor("tok_emb.weight"), im.tensor("tok_emb.weight"), text_rows)
        elif key == "head.weight":
            _split_rows(target, ti.head_weight(), im.head_weight(), text_rows)
        elif key == "proj.weight":
            eye = torch.eye(d, dtype=torch.float32)
            target.copy_(torch.cat([a * eye, (1 - a) * eye], dim=1))
        else:
            raise FusionError(f"JAM-Cross parameter {key!r} has no fusion rule")
    return model
