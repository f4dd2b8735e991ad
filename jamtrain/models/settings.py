"""The `train.model` section as typed settings: a size preset, explicit overrides, the fusion and
its parents (docs/models.md).

    ms = model_settings({"preset": "small", "d_model": 512})      # d_ff: 4 x 512 = 2048
    arch = backbone_config(ms, vocab_size)

The size keys default to None, "from the preset"; `d_ff` follows a given `d_model` (4x) unless it
is given too. `given` records which keys the config set, so a run's metadata keeps the section as
written (`to_dict`) while every reader gets the full, checked settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from jamdata.config import Config, ConfigError
from jamdata.settings import load_settings, setting
from jamtrain.models.config import (
    ACTIVATIONS,
    CROSS_EMBEDDINGS,
    FUSIONS,
    HEAD_INITS,
    KERNELS,
    NORMS,
    POSITIONS,
    PRESETS,
    BackboneConfig,
)
from jamtrain.models.resize import NOISE

SIZE_KEYS = ("n_layers", "d_model", "n_heads", "d_ff", "max_seq_len")  # None: the preset's value
PARENT_KEYS = ("checkpoint", "text_checkpoint", "image_checkpoint")


@dataclass(frozen=True)
class ModelSettings:
    """The `train.model` section (docs/models.md)."""

    preset: str = setting("tiny", "named size the size keys start from", choices=tuple(PRESETS))
    n_layers: int | None = setting(None, "decoder layers (default: the preset's)", lo=1)
    d_model: int | None = setting(None, "model width (default: the preset's)", lo=1)
    n_heads: int | None = setting(None, "attention heads; must divide d_model (default: the preset's)", lo=1)
    n_kv_heads: int = setting(0, "key/value heads for grouped-query attention; must divide n_heads (0: n_heads)", lo=0)
    d_ff: int | None = setting(
        None, "feed-forward width (default: 4 x d_model when d_model is set, else the preset's)", lo=1
    )
    max_seq_len: int | None = setting(None, "positions the model has (default: the preset's)", lo=1)
    positions: str = setting("learned", "position encoding", choices=POSITIONS)
    activation: str = setting("gelu", "feed-forward activation (swiglu: LLaMA)", choices=ACTIVATIONS)
    norm: str = setting("layernorm", "normalisation (rmsnorm: LLaMA)", choices=NORMS)
    tie_embeddings: bool = setting(False, "the output head shares the token embedding")
    norm_eps: float = setting(1e-5, "normalisation epsilon", lo=0)
    norm_bias: bool = setting(False, "LayerNorm with a bias (layernorm only)")
    rope_theta: float = setting(10000.0, "rotary base frequency", lo=1)
    init_std: float = setting(0.02, "standard deviation of the initial weights", lo=0)
    reset_positions: bool = setting(True, "positions restart at each packed document")
    fusion: str = setting(
        "none", "none: one backbone; uniform / width / cross: JAM fusion of two parents", choices=FUSIONS
    )
    checkpoint: str | None = setting(None, "a saved model (backbone or fusion) loaded as it is")
    text_checkpoint: str | None = setting(None, "the text parent (with image_checkpoint; none: random parents)")
    image_checkpoint: str | None = setting(None, "the image parent (with text_checkpoint)")
    uniform_weight: float = setting(0.5, "JAM-Uniform: the text parent's share of each weight", lo=0, hi=1)
    width_head: str = setting("average", "JAM-Width: what the new head reproduces", choices=HEAD_INITS)
    cross_every: int = setting(1, "JAM-Cross: a cross block after every k-th layer; must divide n_layers", lo=1)
    cross_heads: int = setting(0, "JAM-Cross: cross-attention heads; must divide d_model (0: n_heads)", lo=0)
    cross_embedding: str = setting("shared", "JAM-Cross: one embedding or one per stream", choices=CROSS_EMBEDDINGS)
    cross_head: str = setting("average", "JAM-Cross: what the new head reproduces at gate 0", choices=HEAD_INITS)
    text_rows: int | None = setting(
        None, "JAM-Cross: embedding rows from the text parent (default: below the image codes)", lo=0
    )
    n_image_codes: int = setting(8192, "image codes at the end of the vocabulary, when text_rows is inferred", lo=0)
    cross_kernel: str = setting("auto", "JAM-Cross: cross-attention implementation", choices=KERNELS)
    activation_checkpointing: bool = setting(False, "recompute each layer in the backward pass")
    extend_vocab: bool = setting(False, "grow a smaller loaded vocabulary to the data's")
    extend_vocab_seed: int = setting(0, "seed of the added rows (+1 for the image parent)", lo=0)
    extend_vocab_noise: float = setting(NOISE, "scale of the noise on the added rows", lo=0)
    given: tuple[str, ...] = dataclasses.field(default=(), metadata={"internal": True}, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The keys the config set, as plain values: the section as written (run metadata)."""
        return {k: getattr(self, k) for k in self.given}

    def updated(self, **values: Any) -> "ModelSettings":
        """These keys set (and recorded as given)."""
        given = self.given + tuple(k for k in values if k not in self.given)
        return dataclasses.replace(self, given=given, **values)

    def cleared(self, *keys: str) -> "ModelSettings":
        """These keys back to their defaults (and no longer given)."""
        defaults: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(self) if f.name in keys}
        return dataclasses.replace(self, given=tuple(k for k in self.given if k not in keys), **defaults)


KEYS = tuple(f.name for f in dataclasses.fields(ModelSettings) if not f.metadata.get("internal"))


def model_settings(section: ModelSettings | Config | dict | None, where: str = "train.model") -> ModelSettings:
    """`section` read into ModelSettings (a saved run's plain dict, a config view, or settings as
    they are): an unknown key, a wrong type or a value out of range ends in one line naming it."""
    if isinstance(section, ModelSettings):
        return section
    if isinstance(section, Config):
        data, ms = section.data, load_settings(ModelSettings, section)
    else:
        data, ms = section or {}, load_settings(ModelSettings, section, where)
    return dataclasses.replace(ms, given=tuple(data))


def backbone_config(
    model: ModelSettings | Config | dict, vocab_size: int, where: str = "train.model"
) -> BackboneConfig:
    """The backbone a model section describes: its preset overridden by the keys it sets."""
    if isinstance(model, Config):
        where = model.prefix or where
    ms = model_settings(model, where)
    values = dict(PRESETS[ms.preset])
    values.update({k: getattr(ms, k) for k in SIZE_KEYS if getattr(ms, k) is not None})
    if ms.d_model is not None and ms.d_ff is None:
        values["d_ff"] = 4 * ms.d_model
    try:
        return BackboneConfig(
            vocab_size=int(vocab_size),
            n_kv_heads=ms.n_kv_heads,
            positions=ms.positions,
            activation=ms.activation,
            norm=ms.norm,
            tie_embeddings=ms.tie_embeddings,
            norm_eps=ms.norm_eps,
            norm_bias=ms.norm_bias,
            rope_theta=ms.rope_theta,
            init_std=ms.init_std,
            reset_positions=ms.reset_positions,
            **values,
        )
    except ValueError as e:  # a cross-key check: named by the key its message starts with
        first = str(e).split()[0]
        raise ConfigError(f"{where}.{first}" if first in KEYS else where, str(e)) from None
