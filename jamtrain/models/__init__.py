"""JAM models: the decoder backbone and its Uniform / Width / Cross fusions.

    model = build_model(model_settings(cfg["train"]["model"]), vocab.size)
    logits = model(tokens, segment_ids)          # [B, L] -> [B, L, V]

See docs/models.md for the keys of the model section (`ModelSettings`, settings.py).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from jamdata.config import Config, ConfigError
from jamtrain.models.backbone import Backbone, count_parameters  # noqa: F401
from jamtrain.models.checkpoint import (  # noqa: F401
    CheckpointError,
    load_backbone,
    load_model,
    read_checkpoint,
    save_model,
)
from jamtrain.models.config import (  # noqa: F401
    CROSS_EMBEDDINGS,
    FUSIONS,
    HEAD_INITS,
    KERNELS,
    PRESETS,
    BackboneConfig,
    CrossConfig,
)
from jamtrain.models.fusion import FusionError, JamCross, fuse_cross, fuse_uniform, fuse_width  # noqa: F401
from jamtrain.models.parents import ParentWeights, open_parent, parent_config  # noqa: F401
from jamtrain.models.resize import NOISE, extend_vocab  # noqa: F401
from jamtrain.models.settings import PARENT_KEYS, ModelSettings, backbone_config, model_settings  # noqa: F401

log = logging.getLogger(__name__)


def _parents(ms: ModelSettings, arch: BackboneConfig, where: str) -> tuple[Any, Any]:
    """The two parents from `text_checkpoint` / `image_checkpoint` (opened for tensor-by-tensor
    reads, parents.py), or fresh backbones from the config."""
    have = [ms.text_checkpoint is not None, ms.image_checkpoint is not None]
    if any(have) and not all(have):
        missing = "image_checkpoint" if have[0] else "text_checkpoint"
        raise ConfigError(f"{where}.{missing}", "fusing from checkpoints needs both parents")
    if not any(have):
        log.warning("no parent checkpoints given: fusing two randomly initialised %d-layer backbones", arch.n_layers)
        return Backbone(arch), Backbone(arch)
    parents = []
    for n, key in enumerate(("text_checkpoint", "image_checkpoint")):
        model = _fit_vocab(ms, key, open_parent(getattr(ms, key), arch), arch.vocab_size, where, n)
        parents.append(model)
    return parents[0], parents[1]


def _fit_vocab(ms: ModelSettings, key: str, model, vocab_size: int, where: str, offset: int = 0):
    """A loaded model whose vocabulary matches the data's: with `extend_vocab: true` a smaller
    backbone (e.g. an imported LLaMA, text pieces only) gets the missing rows (resize.py; seed
    `extend_vocab_seed` + 0 for the text parent, + 1 for the image parent)."""
    vs = model.cfg.backbone.vocab_size if isinstance(model, JamCross) else model.cfg.vocab_size
    growable = isinstance(model, (Backbone, ParentWeights))
    if vs < vocab_size and growable and ms.extend_vocab:
        seed, noise = ms.extend_vocab_seed, ms.extend_vocab_noise
        log.info("%s: extending the vocabulary from %d to %d rows", getattr(ms, key), vs, vocab_size)
        if isinstance(model, ParentWeights):
            return model.extended(vocab_size, seed + offset, noise)
        return extend_vocab(model, vocab_size, seed + offset, noise)
    if vs != vocab_size:
        hint = " (set extend_vocab: true to add the missing rows)" if vs < vocab_size else ""
        raise ConfigError(f"{where}.{key}", f"checkpoint vocabulary {vs} != data vocabulary {vocab_size}{hint}")
    return model


def default_text_rows(ms: ModelSettings, vocab_size: int, where: str = "train.model") -> int:
    """Rows taken from the text model: text pieces + specials, i.e. everything below the image codes."""
    if ms.text_rows is not None:
        if ms.text_rows > vocab_size:
            raise ConfigError(f"{where}.text_rows", f"must be a number in [0, {vocab_size}], got {ms.text_rows}")
        return ms.text_rows
    if ms.n_image_codes >= vocab_size:
        raise ConfigError(
            f"{where}.text_rows",
            f"cannot infer it: n_image_codes {ms.n_image_codes} >= vocab_size "
            f"{vocab_size}; set text_rows (the joint vocabulary's image_offset)",
        )
    return vocab_size - ms.n_image_codes


def build_model(
    model_cfg: ModelSettings | dict | Config | None,
    vocab_size: int,
    prefix: str = "train.model",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    zero: dict | None = None,
) -> nn.Module:
    """The model a config section describes (settings, or a plain dict as a saved run records it);
    forward(tokens [B, L], segment_ids=None) -> logits [B, L, V].

    `fusion: none` is a single backbone; uniform / width / cross fuse two parents (checkpoints or,
    for tests and the demo, random initialisations). `checkpoint:` loads a saved model as is.
    Fused from checkpoints, the model is built on the meta device and its storage made on `device`
    in `dtype` (default: CPU, fp32), filled one parent tensor at a time; other models are built
    on the CPU in fp32 and then moved. `zero` (a DeepSpeed config with ZeRO stage 3) builds a
    fused model inside `deepspeed.zero.Init`, partitioned over the ranks as it is built and filled
    one gathered parameter at a time (models/materialize.py); it is then left where it is."""
    where = model_cfg.prefix if isinstance(model_cfg, Config) else prefix
    ms = model_settings(model_cfg, where)
    ac = ms.activation_checkpointing
    if ms.checkpoint is not None:
        model: nn.Module = _fit_vocab(ms, "checkpoint", load_model(ms.checkpoint), vocab_size, where)
        _set_checkpointing(model, ac)
        return _place(model, device, dtype)
    arch = backbone_config(ms, vocab_size, where)
    if ms.fusion == "none":
        model = Backbone(arch, ac)
    elif ms.fusion == "uniform":
        model = fuse_uniform(
            *_parents(ms, arch, where), weight=ms.uniform_weight, device=device, dtype=dtype, zero=zero
        )
    elif ms.fusion == "width":
        model = fuse_width(*_parents(ms, arch, where), head=ms.width_head, device=device, dtype=dtype, zero=zero)
    else:
        if arch.n_layers % ms.cross_every:
            raise ConfigError(f"{where}.cross_every", f"{ms.cross_every} must divide n_layers {arch.n_layers}")
        if ms.cross_heads and arch.d_model % ms.cross_heads:
            raise ConfigError(f"{where}.cross_heads", f"{ms.cross_heads} must divide d_model {arch.d_model}")
        model = fuse_cross(
            *_parents(ms, arch, where),
            text_rows=default_text_rows(ms, vocab_size, where),
            cross_every=ms.cross_every,
            cross_heads=ms.cross_heads,
            embedding=ms.cross_embedding,
            head=ms.cross_head,
            kernel=ms.cross_kernel,
            device=device,
            dtype=dtype,
            zero=zero,
        )
    _set_checkpointing(model, ac)
    if zero is not None and ms.fusion != "none":  # partitioned by zero.Init: DeepSpeed places it
        return model
    return _place(model, device, dtype)


def _place(model: nn.Module, device, dtype) -> nn.Module:
    if device is not None:
        model = model.to(device)
    return model.to(dtype) if dtype is not None else model


def _set_checkpointing(model: nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, Backbone):
            m.activation_checkpointing = on


def parameter_count(model_cfg: ModelSettings | dict, vocab_size: int) -> int:
    """Parameters of the configured model without allocating them (meta device)."""
    with torch.device("meta"):
        return count_parameters(build_model(model_settings(model_cfg).cleared(*PARENT_KEYS), vocab_size))
