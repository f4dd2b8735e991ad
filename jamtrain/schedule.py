"""Learning-rate schedule: linear warm-up, then cosine or linear decay to a floor.

A pure function of the optimizer step, so a resumed run gets exactly the same rates; the
LambdaLR wrapper's state (last step) travels in the DeepSpeed checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DECAYS = ("cosine", "linear", "constant")


@dataclass
class WarmupDecay:
    """Multiplier of the peak lr at optimizer step `step` (0-based: the rate used by update step+1)."""

    warmup_steps: int
    total_steps: int
    decay: str = "cosine"
    min_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise ValueError("warmup_steps must be >= 0 and total_steps >= 1")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.decay == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * shape


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, decay: str = "cosine", min_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupDecay(warmup_steps, total_steps, decay, min_ratio))
