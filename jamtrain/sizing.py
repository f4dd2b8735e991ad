"""Sizing a run before it starts: FLOPs per token, the per-GPU memory estimate and `--dry-run`."""
from __future__ import annotations

import logging
import os
from typing import Callable

import torch

from jamdata.config import Config
from jamtrain.building import count_params, dataset_vocab, default_model_factory
from jamtrain.settings import Settings


def _model_dims(model_cfg: dict, vocab_size: int) -> tuple[int | None, int | None]:
    """(layers, width) summed over the model's decoder stacks, for activation and FLOP estimates."""
    try:
        from jamtrain.models import backbone_config

        arch = backbone_config(Config(dict(model_cfg), "train.model"), vocab_size)
    except Exception:  # a model section this estimate does not understand: no activation term
        return None, None
    fusion = model_cfg.get("fusion", "none")
    if fusion == "cross":
        return 2 * arch.n_layers, arch.d_model
    return arch.n_layers, arch.d_model * (2 if fusion == "width" else 1)


def flops_per_token(n_params: int, model_cfg: dict, vocab_size: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N plus attention scores 12 x layers x width x seq_len (PaLM, App. B)."""
    layers, width = _model_dims(model_cfg, vocab_size)
    return 6.0 * n_params + (12.0 * layers * width * seq_len if layers and width else 0.0)


def memory_estimate(n_params: int, zero_stage: int, world: int, micro_batch: int, seq_len: int,
                    n_layers: int | None, d_model: int | None, bf16: bool = True) -> dict[str, float]:
    """Bytes per GPU for model states under ZeRO (Rajbhandari et al. 2020: 2 + 2 + 12 bytes per
    parameter with mixed-precision Adam) plus activations with checkpointing per layer."""
    p = float(n_params)
    w, g, o = (2 * p, 2 * p, 12 * p) if bf16 else (4 * p, 4 * p, 8 * p)
    if zero_stage >= 1:
        o /= world
    if zero_stage >= 2:
        g /= world
    if zero_stage >= 3:
        w /= world
    act = 0.0
    if n_layers and d_model:
        # checkpointed layer inputs (2 bytes x s x b x h per layer) + one layer recomputed in full
        # (~34 s b h bytes without the attention matrix, as flash attention never stores it)
        act = n_layers * 2.0 * seq_len * micro_batch * d_model + 34.0 * seq_len * micro_batch * d_model
    return {"weights": w, "grads": g, "optimizer": o, "activations": act, "total": w + g + o + act}


def dry_run(s: Settings, model_factory: Callable | None = None, echo: Callable[[str], None] = print) -> dict:
    """Size the configured run without data or GPUs: parameters (model built on the meta device),
    memory per GPU for the ZeRO stage, tokens per step, total steps and tokens."""
    vocab_size = _vocab_size_for_dry_run(s)
    model_cfg = {k: v for k, v in s.model.items() if k not in ("checkpoint", "text_checkpoint", "image_checkpoint")}
    quiet = logging.getLogger("jamtrain.models")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "fusing random parents" is expected when only sizing
    try:
        with torch.device("meta"):
            model = (model_factory or default_model_factory)(model_cfg, vocab_size)
    finally:
        quiet.setLevel(level)
    n_params = count_params(model)
    world = int(os.environ.get("WORLD_SIZE", s.num_gpus))
    n_layers, d_model = _model_dims(model_cfg, vocab_size)
    bf16 = s.precision in ("auto", "bf16", "fp16")
    mem = memory_estimate(n_params, s.zero_stage, world, s.micro_batch, s.seq_len, n_layers, d_model, bf16)
    tokens_per_step = s.micro_batch * s.seq_len * s.grad_accum * world
    gib = 1024 ** 3
    lines = [
        f"parameters: {n_params:,} ({n_params / 1e9:.2f} B); vocabulary {vocab_size:,}",
        f"ranks: {world}; ZeRO stage {s.zero_stage}; precision {'bf16' if bf16 else 'fp32'} "
        f"(DeepSpeed config {s.deepspeed_path})",
        f"memory per GPU: weights {mem['weights'] / gib:.1f} GiB + grads {mem['grads'] / gib:.1f} GiB + optimizer "
        f"{mem['optimizer'] / gib:.1f} GiB + activations ~{mem['activations'] / gib:.1f} GiB = {mem['total'] / gib:.1f} GiB",
        f"tokens per step: {s.micro_batch} x {s.seq_len} x {s.grad_accum} (accumulation) x {world} = {tokens_per_step:,}",
        f"steps: {s.steps:,} (warm-up {s.warmup_steps}, {s.decay} decay to {s.min_lr_ratio:g} x lr {s.lr:g}); "
        f"total tokens {tokens_per_step * s.steps / 1e9:.2f} B",
    ]
    for line in lines:
        echo(line)
    return {"params": n_params, "world_size": world, "memory_bytes": mem, "tokens_per_step": tokens_per_step,
            "steps": s.steps, "total_tokens": tokens_per_step * s.steps}


def _vocab_size_for_dry_run(s: Settings) -> int:
    try:
        return dataset_vocab(s.datasets).size
    except Exception:
        return 32000 + 22 + 8192  # LLaMA text pieces + specials + image codes


# -- main-job stage ----------------------------------------------------------------------------
