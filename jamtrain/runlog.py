"""What a training run reports: the JSON log (`log.jsonl`, one record per step and per
evaluation), the step record itself, and the progress and validation lines printed on rank 0."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from jamtrain.throughput import mfu


class JsonLog:
    def __init__(self, path: Path | None):
        self.f = open(path, "a") if path else None

    def write(self, record: dict) -> None:
        if self.f:
            self.f.write(json.dumps(record, sort_keys=True) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.f:
            self.f.close()


def step_record(
    step: int,
    stats: torch.Tensor,
    names: list[str],
    engine,
    lr: float,
    dt: float,
    slots: int,
    flops_per_token: float,
    peak: float | None,
    world: int,
) -> dict:
    """One log record; `stats` ends with the step's real input tokens over all ranks, `slots` is
    the input positions the step had room for (their difference is padding)."""
    v = [float(x) for x in stats.cpu()]
    n = v[1] + v[3]
    rec: dict[str, Any] = {
        "step": step,
        "loss": (v[0] + v[2]) / n if n else 0.0,
        "loss_text": v[0] / v[1] if v[1] else None,
        "tokens_text": int(v[1]),
        "loss_image": v[2] / v[3] if v[3] else None,
        "tokens_image": int(v[3]),
        "lr": lr,
        "grad_norm": _float(engine.get_global_grad_norm()),
        "seconds": dt,
        "tokens": int(v[-1]),  # input tokens of all ranks and micro-batches, padding left out
        "padding": 1.0 - v[-1] / slots if slots else 0.0,
        "tokens_per_s": v[-1] / dt if dt > 0 else None,
    }
    rec["mfu"] = mfu(rec["tokens_per_s"], flops_per_token, peak, world)
    for i, name in enumerate(names):
        nd = v[5 + 2 * i]
        rec[f"loss/{name}"] = v[4 + 2 * i] / nd if nd else None
        rec[f"tokens/{name}"] = int(nd)
    return rec


def _float(x) -> float | None:
    if x is None:
        return None
    x = float(x.item() if torch.is_tensor(x) else x)
    return x if math.isfinite(x) else None


def progress_line(rec: dict, total: int) -> str:
    parts = [f"step {rec['step']}/{total}", f"loss {rec['loss']:.4f}"]
    for key, label in (("loss_text", "text"), ("loss_image", "image")):
        if rec[key] is not None:
            parts.append(f"{label} {rec[key]:.3f}")
    parts.append(f"lr {rec['lr']:.2e}")
    if rec["tokens_per_s"]:
        parts.append(f"{rec['tokens_per_s']:,.0f} tok/s")
    if rec["mfu"] is not None:
        parts.append(f"MFU {100 * rec['mfu']:.1f}%")
    return " | ".join(parts)


def eval_line(step: int, results: dict) -> str:
    parts = []
    for name, r in results.items():
        if r["ppl"] is None:
            parts.append(f"{name} (no held-out tokens)")
        else:
            parts.append(f"{name} ppl {r['ppl']:.2f} ({r['tokens']} tokens)")
    return f"validation at step {step}: " + ", ".join(parts)
