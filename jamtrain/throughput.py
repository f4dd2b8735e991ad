"""Throughput accounting: the tokens a step really trains on and the device peak behind MFU.

Packed rows end in padding (segment id -1, loss mask false); an image-caption row of 4096 tokens
is ~23% padding, so counting `micro_batch x seq_len` would overstate tokens/s and MFU by that
much. Only input positions with a segment id >= 0 count. The peak comes from the device the run
sees, not from a constant: `train.peak_tflops` overrides it, and without a known device (CPU, an
unlisted GPU, fp32 training) MFU is reported as not available rather than guessed."""

from __future__ import annotations

import torch

# Dense (no sparsity) tensor-core peak per GPU in TFLOP/s, bf16/fp16, from the vendors' data
# sheets. Matched against torch.cuda.get_device_name() in order: the first substring that occurs
# wins, so the more specific names come first.
PEAK_TFLOPS_BF16: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),  # H200 SXM (H100 SXM compute, more HBM)
    ("H100 PCIE", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # H100 SXM5 (80GB HBM3)
    ("A100", 312.0),  # SXM4 and PCIe alike
)


def device_peak_tflops(device_name: str, precision: str) -> float | None:
    """bf16/fp16 dense peak for a CUDA device name, or None (unlisted device, fp32 training)."""
    if precision not in ("bf16", "fp16"):
        return None
    name = device_name.upper()
    for key, peak in PEAK_TFLOPS_BF16:
        if key in name:
            return peak
    return None


def run_peak(override: float | None, cpu: bool, precision: str) -> tuple[float | None, str]:
    """(peak TFLOP/s per device or None, what it is) for the MFU figure of this process's device."""
    if override is not None:
        return float(override), f"peak {override:g} TFLOP/s per device (train.peak_tflops)"
    if cpu or not torch.cuda.is_available():
        return None, "MFU n/a on CPU (set train.peak_tflops to give a peak)"
    name = torch.cuda.get_device_name()
    peak = device_peak_tflops(name, precision)
    if peak is None:
        return None, f"MFU n/a: no {precision} peak known for {name} (set train.peak_tflops)"
    return peak, f"peak {peak:g} TFLOP/s per device ({name}, {precision} dense)"


def real_tokens(batch: dict) -> int:
    """Input positions of a batch that hold document tokens (the model reads tokens[:, :-1]);
    padding has segment id -1. A batch without segment ids has no padding to leave out."""
    tokens = batch["tokens"]
    seg = batch.get("segment_ids")
    if seg is None:
        return int(tokens[:, :-1].numel())
    return int((torch.as_tensor(seg)[:, :-1] >= 0).sum())


def mfu(tokens_per_s: float | None, flops_per_token: float, peak_tflops: float | None, world: int) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the peak of all `world` devices."""
    if not peak_tflops or not tokens_per_s:
        return None
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12 * world)
