"""Making a model's storage without initialising it, then writing it one tensor at a time.

The fusions (fusion.py) fill every tensor of the fused model from the parents, so drawing a
random initialisation first would only cost time and memory. Two ways to get storage:
- one device (`zero=None`): the model is built on the meta device and given uninitialised storage
  on `device` in `dtype`; each rank holds the whole fused model once;
- DeepSpeed ZeRO-3 (`zero` = the run's DeepSpeed config): the model is built inside
  `deepspeed.zero.Init`, so every parameter is partitioned over the ranks as soon as its module
  is constructed and no rank ever holds the whole model. `targets` then gathers one parameter at a
  time (`GatheredParameters`, modifier rank 0), lets the caller write it, and re-partitions rank
  0's value. All ranks must walk the same keys in the same order (they do: the walk is the
  module's own state-dict order).
"""

from __future__ import annotations

from typing import Callable, Iterator, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def empty_model(build: Callable[[], M], device=None, dtype: torch.dtype | None = None, zero: dict | None = None) -> M:
    """`build()` with storage that the caller is about to overwrite (module docstring)."""
    if zero is not None:
        import deepspeed

        # zero.Init constructs each module for real (random init included) before partitioning
        # it: fork the generators so the draws that follow (cross blocks, ...) are the same as
        # without ZeRO-3, and the same on every rank
        # the storage dtype goes in through the config's bf16/fp16 switches: zero.Init reads its
        # `dtype` argument only where the accelerator supports fp16 (on CPU it would pick bf16)
        cfg = {
            **zero,
            "bf16": {**zero.get("bf16", {}), "enabled": dtype == torch.bfloat16},
            "fp16": {**zero.get("fp16", {}), "enabled": dtype == torch.float16},
        }
        cuda = list(range(torch.cuda.device_count()))
        with torch.random.fork_rng(devices=cuda), deepspeed.zero.Init(config_dict_or_path=cfg):
            return build()
    with torch.device("meta"):
        model = build()
    if dtype is not None:
        model = model.to(dtype)
    return model.to_empty(device=device or "cpu")


def is_partitioned(t: torch.Tensor) -> bool:
    """A ZeRO-3 parameter (its full shape is `ds_shape`; `t` itself holds no data here)."""
    return hasattr(t, "ds_id")


def targets(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(state-dict key, full-size tensor to write) for every entry of `model`, in state-dict
    order. A partitioned parameter is gathered for the write and re-partitioned from rank 0's
    value afterwards; every rank must consume the whole walk."""
    for key, t in model.state_dict(keep_vars=True).items():
        if is_partitioned(t):
            from deepspeed import zero

            with zero.GatheredParameters([t], modifier_rank=0):
                yield key, t.data
        else:
            yield key, t.data
