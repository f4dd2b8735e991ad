"""JAM models: the decoder backbone and its Uniform / Width / Cross fusions.

    model = build_model(cfg["train"]["model"], vocab.size)
    logits = model(tokens, segment_ids)          # [B, L] -> [B, L, V]

See docs/models.md for the keys of the model section.
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
    MODEL_KEYS,
    PRESETS,
    BackboneConfig,
    CrossConfig,
    backbone_config,
)
from jamtrain.models.fusion import FusionError, JamCross, fuse_cross, fuse_uniform, fuse_width  # noqa: F401
from jamtrain.models.parents import ParentWeights, open_parent, parent_config  # noqa: F401
from jamtrain.models.resize import NOISE, extend_vocab  # noqa: F401

log = logging.getLogger(__name__)


def _parents(cfg: Config, arch: BackboneConfig) -> tuple[Any, Any]:
    """The two parents from `text_checkpoint` / `image_checkpoint` (opened for tensor-by-tensor
    reads, parents.py), or fresh backbones from the config."""
    have = [cfg.has("text_checkpoint"), cfg.has("image_checkpoint")]
    if any(have) and not all(have):
        missing = "image_checkpoint" if have[0] else "text_checkpoint"
        raise ConfigError(f"{cfg.prefix}.{missing}", "fusing from checkpoints needs both parents", source=cfg.source)
    if not any(have):
        log.warning("no parent checkpoints given: fusing two randomly initialised %d-layer backbones", arch.n_layers)
        return Backbone(arch), Backbone(arch)
    parents = []
    for n, key in enumerate(("text_checkpoint", "image_checkpoint")):
        model = _fit_vocab(cfg, key, open_parent(cfg.get(key, str), arch), arch.vocab_size, n)
        parents.append(model)
    return parents[0], parents[1]


def _fit_vocab(cfg: Config, key: str, model, vocab_size: int, offset: int = 0):
    """A loaded model whose vocabulary matches the data's: with `extend_vocab: true` a smaller
    backbone (e.g. an imported LLaMA, text pieces only) gets the missing rows (resize.py; seed
    `extend_vocab_seed` + 0 for the text parent, + 1 for the image parent)."""
    vs = model.cfg.backbone.vocab_size if isinstance(model, JamCross) else model.cfg.vocab_size
    growable = isinstance(model, (Backbone, ParentWeights))
    if vs < vocab_size and growable and cfg.get("extend_vocab", bool, default=False):
        seed = int(cfg.number("extend_vocab_seed", default=0, lo=0))
        noise = float(cfg.number("extend_vocab_noise", default=NOISE, lo=0))
        log.info("%s: extending the vocabulary from %d to %d rows", cfg.get(key, str), vs, vocab_size)
        if isinstance(model, ParentWeights):
            return model.extended(vocab_size, seed + offset, noise)
        return extend_vocab(model, vocab_size, seed + offset, noise)
    if vs != vocab_size:
        hint = " (set extend_vocab: true to add the missing rows)" if vs < vocab_size else ""
        raise ConfigError(
            f"{cfg.prefix}.{key}",
            f"checkpoint vocabulary {vs} != data vocabulary {vocab_size}{hint}",
            source=cfg.source,
        )
    return model


def default_text_rows(cfg: Config, vocab_size: int) -> int:
    """Rows taken from the text model: text pieces + specials, i.e. everything below the image codes."""
    if cfg.has("text_rows"):
        return int(cfg.number("text_rows", lo=0, hi=vocab_size))
    codes = int(cfg.number("n_image_codes", default=8192, lo=0))
    if codes >= vocab_size:
        raise ConfigError(
            f"{cfg.prefix}.text_rows",
            f"cannot infer it: n_image_codes {codes} >= vocab_size "
            f"{vocab_size}; set text_rows (the joint vocabulary's image_offset)",
            source=cfg.source,
        )
    return vocab_size - codes


def build_model(
    model_cfg: dict | Config,
    vocab_size: int,
    prefix: str = "train.model",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    zero: dict | None = None,
) -> nn.Module:
    """The model a config section describes; forward(tokens [B, L], segment_ids=None) -> logits [B, L, V].

    `fusion: none` is a single backbone; uniform / width / cross fuse two parents (checkpoints or,
    for tests and the demo, random initialisations). `checkpoint:` loads a saved model as is.
    Fused from checkpoints, the model is built on the meta device and its storage made on `device`
    in `dtype` (default: CPU, fp32), filled one parent tensor at a time; other models are built
    on the CPU in fp32 and then moved. `zero` (a DeepSpeed config with ZeRO stage 3) builds a
    fused model inside `deepspeed.zero.Init`, partitioned over the ranks as it is built and filled
    one gathered parameter at a time (models/materialize.py); it is then left where it is."""
    cfg = model_cfg if isinstance(model_cfg, Config) else Config(dict(model_cfg or {}), prefix)
    cfg.check_keys(MODEL_KEYS)
    ac = cfg.get("activation_checkpointing", bool, default=False)
    if cfg.has("checkpoint"):
        model: nn.Module = _fit_vocab(cfg, "checkpoint", load_model(cfg.get("checkpoint", str)), vocab_size)
        _set_checkpointing(model, ac)
        return _place(model, device, dtype)
    arch = backbone_config(cfg, vocab_size)
    fusion = cfg.choice("fusion", FUSIONS, default="none")
    if fusion == "none":
        model = Backbone(arch, ac)
    elif fusion == "uniform":
        model = fuse_uniform(
            *_parents(cfg, arch),
            weight=float(cfg.number("uniform_weight", default=0.5, lo=0, hi=1)),
            device=device,
            dtype=dtype,
            zero=zero,
        )
    elif fusion == "width":
        model = fuse_width(
            *_parents(cfg, arch),
            head=cfg.choice("width_head", HEAD_INITS, default="average"),
            device=device,
            dtype=dtype,
            zero=zero,
        )
    else:
        every = int(cfg.number("cross_every", default=1, lo=1))
        if arch.n_layers % every:
            raise ConfigError(
                f"{cfg.prefix}.cross_every", f"{every} must divide n_layers {arch.n_layers}", source=cfg.source
            )
        heads = int(cfg.number("cross_heads", default=0, lo=0))
        if heads and arch.d_model % heads:
            raise ConfigError(
                f"{cfg.prefix}.cross_heads", f"{heads} must divide d_model {arch.d_model}", source=cfg.source
            )
        model = fuse_cross(
            *_parents(cfg, arch),
            text_rows=default_text_rows(cfg, vocab_size),
            cross_every=every,
            cross_heads=heads,
            embedding=cfg.choice("cross_embedding", CROSS_EMBEDDINGS, default="shared"),
            head=cfg.choice("cross_head", HEAD_INITS, default="average"),
            kernel=cfg.choice("cross_kernel", KERNELS, default="auto"),
            device=device,
            dtype=dtype,
            zero=zero,
        )
    _set_checkpointing(model, ac)
    if zero is not None and fusion != "none":  # partitioned by zero.Init: DeepSpeed places it
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


def parameter_count(model_cfg: dict, vocab_size: int) -> int:
    """Parameters of the configured model without allocating them (meta device)."""
    with torch.device("meta"):
        cfg = dict(model_cfg)
        for key in ("checkpoint", "text_checkpoint", "image_checkpoint"):
            cfg.pop(key, None)
        return count_parameters(build_model(cfg, vocab_size))
