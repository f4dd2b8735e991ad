"""Sizing a run before it starts: FLOPs per token, the per-GPU memory estimate and `--dry-run`."""

from __future__ import annotations

import logging
import os
from typing import Callable

import torch

from dataclasses import fields

from jamtrain.building import count_params, dataset_vocab, default_model_factory, model_for_vocab
from jamtrain.models.config import BackboneConfig
from jamtrain.models.settings import KEYS, PARENT_KEYS, ModelSettings, backbone_config, model_settings
from jamtrain.settings import Settings

# what a parent's config fixes (initialisation and position resets stay the model section's)
PARENT_ARCH_KEYS = tuple(
    f.name for f in fields(BackboneConfig) if f.name in KEYS and f.name not in ("init_std", "reset_positions")
)


def _model_dims(ms: ModelSettings, vocab_size: int) -> tuple[int | None, int | None]:
    """(attention layers, width) summed over the model's decoder stacks, for activation and FLOP
    estimates: JAM-Cross counts both streams' self-attention layers and both directions of every
    cross block (each attends over the other stream's positions, as a self-attention layer does)."""
    try:
        arch = backbone_config(ms, vocab_size)
    except Exception:  # a model section this estimate does not understand: no activation term
        return None, None
    if ms.fusion == "cross":
        return 2 * arch.n_layers + 2 * (arch.n_layers // ms.cross_every), arch.d_model
    return arch.n_layers, arch.d_model * (2 if ms.fusion == "width" else 1)


def flops_per_token(
    n_params: int,
    model_cfg: ModelSettings | dict,
    vocab_size: int,
    seq_len: int,
    echo: Callable[[str], None] | None = None,
) -> float:
    """Training FLOPs per token: 6N plus attention scores 12 x layers x width x seq_len (PaLM, App. B).
    N is the built model's parameter count; layers and width come from the parents' (or the
    saved model's) architecture when the section names them (`with_parent_arch`), else from its
    own keys, which for imported parents are only the preset's."""
    ms = model_settings(model_cfg)
    if any(getattr(ms, k) for k in PARENT_KEYS):
        ms = with_parent_arch(ms, echo or (lambda _m: None))
    layers, width = _model_dims(ms, vocab_size)
    return 6.0 * n_params + (12.0 * layers * width * seq_len if layers and width else 0.0)


def check_lengths(s: Settings, vocab_size: int) -> None:
    """The loader's rows must fit the model's positions (the parents' `max_seq_len` when the
    section names readable parents, else its own keys)."""
    from jamdata.config import ConfigError

    try:
        limit = backbone_config(with_parent_arch(s.model, lambda _m: None), vocab_size).max_seq_len
    except Exception:  # checkpoint-based or foreign model sections: the model checks for itself
        return
    if s.seq_len - 1 > limit:
        raise ConfigError(
            "loader.seq_len",
            f"{s.seq_len} rows give inputs of {s.seq_len - 1} tokens, more than "
            f"train.model.max_seq_len {limit}; lower one or raise the other",
        )


def memory_estimate(
    n_params: int,
    zero_stage: int,
    world: int,
    micro_batch: int,
    seq_len: int,
    n_layers: int | None,
    d_model: int | None,
    bf16: bool = True,
) -> dict[str, float]:
    """Bytes per GPU for model states under ZeRO (Rajbhandari et al. 2020: 2 + 2 + 12 bytes per
    parameter with mixed-precision Adam) plus activations with checkpointing per layer."""
    from jamtrain.memory import model_states

    states = model_states(n_params, zero_stage, world, 2 if bf16 else 4)
    w, g, o = states["weights"], states["grads"], states["optimizer"]
    act = 0.0
    if n_layers and d_model:
        # checkpointed layer inputs (2 bytes x s x b x h per layer) + one layer recomputed in full
        # (~34 s b h bytes without the attention matrix, as flash attention never stores it)
        act = n_layers * 2.0 * seq_len * micro_batch * d_model + 34.0 * seq_len * micro_batch * d_model
    return {"weights": w, "grads": g, "optimizer": o, "activations": act, "total": w + g + o + act}


def with_parent_arch(model_cfg: ModelSettings | dict, echo: Callable[[str], None]) -> ModelSettings:
    """The model section with the architecture of its parents (`text_checkpoint`, read from the
    safetensors header or a Hugging Face directory's config.json) in place of its own keys; a
    parent that cannot be read leaves the keys as they are, and says so."""
    from jamtrain.models.parents import parent_config

    cfg = model_settings(model_cfg)
    if cfg.checkpoint:
        try:
            from jamtrain.models.checkpoint import read_description

            meta = read_description(cfg.checkpoint) or {}
            b = meta.get("config", {}).get("backbone", meta.get("config", {}))
            if meta.get("kind") == "cross":
                cfg = cfg.updated(
                    fusion="cross",
                    cross_every=meta["config"]["cross_every"],
                    cross_heads=meta["config"]["cross_heads"],
                    text_rows=meta["config"]["text_rows"],
                )
            cfg = cfg.updated(**{k: b[k] for k in PARENT_ARCH_KEYS if k in b and b[k] is not None})
            cfg = cfg.cleared("preset")
            echo(f"architecture from {cfg.checkpoint}")
        except Exception as e:
            echo(f"note: {cfg.checkpoint} not readable ({type(e).__name__}: {e}); sized from the config keys")
        return cfg
    for key in ("text_checkpoint", "image_checkpoint"):
        path = getattr(cfg, key)
        if not path:
            continue
        try:
            arch = parent_config(str(path)).to_dict()
        except Exception as e:
            echo(f"note: parent {path} not readable ({type(e).__name__}: {str(e)[:120]}); sized from the config keys")
            continue
        cfg = cfg.updated(**{k: arch[k] for k in PARENT_ARCH_KEYS}).cleared("preset")
        echo(
            f"architecture from parent {path}: {arch['n_layers']} layers x {arch['d_model']}, "
            f"{arch['n_heads']} heads ({arch['n_kv_heads'] or arch['n_heads']} key/value), {arch['norm']}, "
            f"{arch['activation']}, {arch['positions']} positions"
        )
        break
    return cfg


def model_arch(model_cfg: ModelSettings | dict, vocab_size: int):
    """The `memory.Arch` of a model section, or None for a section this estimate does not parse."""
    from jamtrain.memory import Arch
    from jamtrain.models.fusion import width_config

    try:
        ms = model_settings(model_cfg)
        b = backbone_config(ms, vocab_size)
    except Exception:
        return None
    fusion = ms.fusion
    if fusion == "width":
        b = width_config(b)
    cross = fusion == "cross"
    return Arch(
        n_layers=b.n_layers,
        d_model=b.d_model,
        d_ff=b.d_ff,
        kv_dim=b.kv_heads * b.head_dim,
        vocab=vocab_size,
        streams=2 if cross else 1,
        n_cross=b.n_layers // ms.cross_every if cross else 0,
        swiglu=b.activation == "swiglu",
        rmsnorm=b.norm == "rmsnorm",
        rotary=b.positions == "rotary",
        gqa=b.kv_heads != b.n_heads,
    )


def dry_run(
    s: Settings, model_factory: Callable | None = None, echo: Callable[[str], None] = print, cpu: bool = False
) -> dict:
    """Size the configured run without data or GPUs: parameters (model built on the meta device,
    architecture from the parents when they can be read), memory per GPU term by term for the
    ZeRO stage with and without activation checkpointing, memory per host, tokens per step, total
    steps and tokens. `cpu`: size a CPU run (precision "auto" is then fp32)."""
    from jamtrain.building import run_precision
    from jamtrain.memory import GIB, build_device_bytes, gpu_memory, host_memory

    vocab_size = _vocab_size_for_dry_run(s)
    notes: list[str] = []
    model_cfg = with_parent_arch(model_for_vocab_size(s.model, vocab_size, s.datasets), notes.append)
    model_cfg = model_cfg.cleared(*PARENT_KEYS)
    quiet = logging.getLogger("jamtrain.models")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "fusing random parents" is expected when only sizing
    try:
        with torch.device("meta"):
            model = (model_factory or default_model_factory)(model_cfg, vocab_size)
    finally:
        quiet.setLevel(level)
    n_params = count_params(model)
    largest = max((p.numel() for p in model.parameters()), default=0)
    world = int(os.environ.get("WORLD_SIZE", s.num_gpus))
    precision = run_precision(s, cpu)
    elt = 4 if precision == "fp32" else 2
    arch = model_arch(model_cfg, vocab_size)
    ckpt_on = model_cfg.activation_checkpointing
    mem = gpu_memory(n_params, arch, s.zero_stage, world, s.micro_batch, s.seq_len, elt, ckpt_on, s.deepspeed, cpu)
    other = gpu_memory(
        n_params, arch, s.zero_stage, world, s.micro_batch, s.seq_len, elt, not ckpt_on, s.deepspeed, cpu
    )
    per_host = min(s.gpus_per_host, world)
    host = host_memory(largest, n_params, s.zero_stage, world, per_host)
    eager = host_memory(largest, n_params, s.zero_stage, world, per_host, lazy=False)
    build_dev = build_device_bytes(n_params, largest, s.zero_stage, world, elt)
    tokens_per_step = s.micro_batch * s.seq_len * s.grad_accum * world
    g = lambda x: f"{x / GIB:.1f}"  # noqa: E731
    lines = [
        f"parameters: {n_params:,} ({n_params / 1e9:.2f} B); vocabulary {vocab_size:,}",
        *notes,
        f"ranks: {world} ({per_host} per host); ZeRO stage {s.zero_stage}; precision {precision} "
        f"(DeepSpeed config {s.deepspeed_path})",
        f"memory per GPU: weights {g(mem['weights'])} GiB + grads {g(mem['grads'])} GiB + optimizer "
        f"{g(mem['optimizer'])} GiB + optimizer step {g(mem['step'])} GiB + buffers {g(mem['buffers'])} GiB "
        f"+ activations {g(mem['activations'])} GiB + logits {g(mem['logits'])} GiB = {g(mem['total'])} GiB "
        f"(activation checkpointing {'on' if ckpt_on else 'off'})",
        f"  with activation checkpointing {'off' if ckpt_on else 'on'}: activations {g(other['activations'])} GiB, "
        f"total {g(other['total'])} GiB",
        f"building per rank on the device: {g(build_dev)} GiB ("
        + (
            "partitioned as it is built, deepspeed.zero.Init, one tensor gathered at a time)"
            if s.zero_stage >= 3
            else "the whole model in the training dtype)"
        ),
        f"memory per host ({per_host} ranks): building {g(host['build_per_rank'])} GiB per rank (parents read "
        f"tensor by tensor; {g(eager['build_per_rank'])} GiB with whole parents), checkpoint save "
        f"{g(host['save_per_rank'])} GiB per rank and {g(host['save_rank0'])} GiB on rank 0; peak "
        f"{g(host['per_host'])} GiB per host beyond the runtime of each process",
        f"tokens per step: {s.micro_batch} x {s.seq_len} x {s.grad_accum} (accumulation) x {world} = {tokens_per_step:,}",
        f"steps: {s.steps:,} (warm-up {s.warmup_steps}, {s.decay} decay to {s.min_lr_ratio:g} x lr {s.lr:g}); "
        f"total tokens {tokens_per_step * s.steps / 1e9:.2f} B",
    ]
    for line in lines:
        echo(line)
    return {
        "params": n_params,
        "world_size": world,
        "memory_bytes": mem,
        "memory_other_checkpointing": other,
        "host_bytes": host,
        "build_device_bytes": build_dev,
        "tokens_per_step": tokens_per_step,
        "steps": s.steps,
        "total_tokens": tokens_per_step * s.steps,
    }


def model_for_vocab_size(
    model_cfg: ModelSettings | dict, vocab_size: int, datasets: dict[str, str] | None = None
) -> ModelSettings:
    """JAM-Cross's text rows default to the rows below the image codes (as `model_for_vocab`,
    from the data's joint vocabulary when it can be read)."""
    ms = model_settings(model_cfg)
    if ms.fusion == "cross" and ms.text_rows is None:
        try:
            return model_for_vocab(ms, dataset_vocab(datasets or {}))
        except Exception:
            pass
        if ms.n_image_codes < vocab_size:
            return ms.updated(text_rows=vocab_size - ms.n_image_codes)
    return ms


def _vocab_size_for_dry_run(s: Settings) -> int:
    try:
        return dataset_vocab(s.datasets).size
    except Exception:
        return 32000 + 22 + 8192  # LLaMA text pieces + specials + image codes


# -- main-job stage ----------------------------------------------------------------------------
