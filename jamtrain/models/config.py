"""Backbone and fusion configuration and the named size presets (the `train.model` section: settings.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

POSITIONS = ("learned", "rotary")
ACTIVATIONS = ("gelu", "swiglu")
NORMS = ("layernorm", "rmsnorm")
FUSIONS = ("none", "uniform", "width", "cross")
HEAD_INITS = ("text", "image", "average")
CROSS_EMBEDDINGS = ("shared", "separate")
KERNELS = ("auto", "triton", "reference")


@dataclass(frozen=True)
class BackboneConfig:
    """A pre-norm decoder with bias-free linear layers.

    The defaults describe the CM3leon/OPT-like backbone (LayerNorm, GELU, learned positions, one
    key/value head per query head). `norm="rmsnorm"`, `activation="swiglu"`, `positions="rotary"`
    and `n_kv_heads < n_heads` (grouped-query attention) describe the LLaMA family, which is what
    `jamtrain model import` produces from a Hugging Face `LlamaForCausalLM` checkpoint."""

    vocab_size: int
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int = 0  # key/value heads (grouped-query attention); 0 = n_heads
    d_ff: int = 256
    max_seq_len: int = 512
    positions: str = "learned"
    activation: str = "gelu"
    tie_embeddings: bool = False
    norm: str = "layernorm"  # "layernorm" or "rmsnorm" (LLaMA)
    norm_eps: float = 1e-5
    norm_bias: bool = False
    norm_groups: int = 1  # >1 only in JAM-Width: each half normalised on its own
    rope_theta: float = 10000.0
    init_std: float = 0.02
    reset_positions: bool = True  # with segment_ids, positions restart at each document

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.d_model % self.norm_groups:
            raise ValueError(f"d_model {self.d_model} is not divisible by norm_groups {self.norm_groups}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.n_kv_heads < 0 or self.n_heads % self.kv_heads:
            raise ValueError(f"n_kv_heads {self.n_kv_heads} must divide n_heads {self.n_heads}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.norm == "rmsnorm" and self.norm_bias:
            raise ValueError("norm_bias is a LayerNorm option; rmsnorm has a weight only")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: `n_kv_heads`, or one per query head when it is 0."""
        return self.n_kv_heads or self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class CrossConfig:
    """JAM-Cross: two backbones joined by gated bidirectional causal cross-attention."""

    backbone: BackboneConfig
    cross_every: int = 1  # a cross block after every k-th layer
    cross_heads: int = 0  # 0 = backbone n_heads
    text_rows: int = 0  # embedding rows [0, text_rows) from the text model, the rest image
    embedding: str = "shared"  # "shared" (paper) or "separate" (each backbone keeps its own)
    head_init: str = "average"  # what the new head reproduces at gate 0
    kernel: str = "auto"  # cross-attention implementation

    @property
    def n_cross(self) -> int:
        return self.backbone.n_layers // self.cross_every

    @property
    def heads(self) -> int:
        return self.cross_heads or self.backbone.n_heads

    def to_dict(self) -> dict:
        d = asdict(self)
        d["backbone"] = self.backbone.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CrossConfig":
        d = dict(d)
        d["backbone"] = BackboneConfig.from_dict(d["backbone"])
        return cls(**d)


PRESETS: dict[str, dict] = {
    # tests and the CPU demo
    "tiny": dict(n_layers=2, d_model=64, n_heads=4, d_ff=256, max_seq_len=512),
    "small": dict(n_layers=12, d_model=768, n_heads=12, d_ff=3072, max_seq_len=2048),
    "1b": dict(n_layers=24, d_model=2048, n_heads=16, d_ff=8192, max_seq_len=4096),
    # the JAM parents (CM3leon-7B / LLM-7B): 32 layers, width 4096, 32 heads of 128
    "7b": dict(n_layers=32, d_model=4096, n_heads=32, d_ff=16384, max_seq_len=4096),
}
