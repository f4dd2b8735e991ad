"""scripts/gpu_check.py's CPU-checkable parts at tiny sizes: the comparisons catch a wrong result,
the DeepSpeed step and VQ-VAE encode run, the table marks failures and the exit code follows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # its dataclasses look their module up
spec.loader.exec_module(gpu_check)


def test_compare_passes_the_reference_and_catches_a_perturbed_result():
    from jamtrain.kernels.self_attention import dense_attention, document_attention

    torch.manual_seed(0)
    xs = [torch.randn(2, 4, 64, 16) for _ in range(3)]
    seg = gpu_check.segments(2, 64, "cpu")
    assert (seg == -1).any() and len(torch.unique(seg[1])) >= 3
    good = gpu_check.compare(
        "segments",
        lambda q, k, v: document_attention(q, k, v, seg, "segments"),
        lambda q, k, v: dense_attention(q, k, v, seg),
        xs,
        torch.float32,
    )
    assert good.ok, good.value
    bad = gpu_check.compare(
        "off by a little",
        lambda q, k, v: dense_attention(q, k, v, seg) * 1.01,
        lambda q, k, v: dense_attention(q, k, v, seg),
        xs,
        torch.float32,
    )
    assert bad.ok is False
    assert "FAIL" in gpu_check.table([good, bad])


def test_cpu_run_of_every_part(capsys):
    rows = gpu_check.run_checks(torch.device("cpu"), small=True)
    by = {r.check.split(" (")[0]: r for r in rows}
    assert all(r.ok is not False for r in rows), gpu_check.table(rows)
    assert any(r.check.startswith("DeepSpeed ZeRO-2 fp32 JAM-Cross step") and r.ok for r in rows)
    assert any(r.check.startswith("VQ-VAE encode 64px -> 16x16") and "images/s" in r.value for r in rows)
    assert any("skipped (no CUDA)" in r.value for r in rows) and by
