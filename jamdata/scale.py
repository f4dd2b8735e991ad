"""Compute estimates for the text stages, from measured per-core throughput.

The throughput figures are the one place the project's sizing numbers come from: they are copied
from benchmarks/results/bench_scale.json (benchmarks/bench_scale.py, the largest size with two
workers, on a mix of every source in its raw format: Common Crawl WET and WARC, C4, Wikipedia XML,
books, arXiv LaTeX; text-clean with the reference filters and dedup, text-sample with a 32k
LLaMA-style tokenizer), as MB of raw text per CPU-second. `jamdata text plan` prints `estimate_lines` for
its plan, and docs/ARCHITECTURE.md ("Scale") sizes the reference run with the same figures.
"""

from __future__ import annotations

import math

# -- measured (benchmarks/results/bench_scale.json; update both together) -------------------------
# 16x (267 MB of text read), two workers, all processes' CPU seconds (driver and runner included)
CLEAN_MB_PER_CORE_S = 0.82  # text-clean: text MB read per CPU-second (read, clean, filters, dedup); measured 0.816
SAMPLE_MB_PER_CORE_S = 2.65  # text-sample: clean text MB tokenized and written per CPU-second; measured 2.655
WORKER_RSS_MB = 2100  # peak RSS of one Beam worker process, rounded up (measured 2,058 MB, local runner)
BYTES_PER_TOKEN = 4.2  # clean English web text, LLaMA-style 32k BPE (text plan measures it)
MEASURED_ON = "benchmarks/results/bench_scale.json"

# -- the Dataflow machine the estimate prices (on-demand list price, us-central1, late 2024) -------
MACHINE = "n2-standard-4"
MACHINE_VCPUS = 4
MACHINE_MEMORY_GB = 16
MACHINE_USD_PER_HOUR = 0.194
EFFICIENCY = 0.7  # share of a worker's vCPU time that is useful work (shuffle, startup)


def core_hours(mb: float, mb_per_core_s: float) -> float:
    return mb / mb_per_core_s / 3600 / EFFICIENCY


def estimate(read_mb: float, sample_mb: float) -> dict:
    """Core-hours, worker-hours (`MACHINE`) and list-price cost of text-clean reading `read_mb` MB
    of text and text-sample tokenizing `sample_mb` MB of clean text."""
    clean_h = core_hours(read_mb, CLEAN_MB_PER_CORE_S)
    sample_h = core_hours(sample_mb, SAMPLE_MB_PER_CORE_S)
    workers_h = (clean_h + sample_h) / MACHINE_VCPUS
    per_core_gb = MACHINE_MEMORY_GB / MACHINE_VCPUS
    return {
        "clean_core_hours": clean_h,
        "sample_core_hours": sample_h,
        "worker_hours": workers_h,
        "usd": workers_h * MACHINE_USD_PER_HOUR,
        "memory_ok": WORKER_RSS_MB / 1024 <= per_core_gb,
    }


def estimate_lines(read_mb: float, sample_mb: float, workers: int = 64) -> list[str]:
    """What `jamdata text plan` prints: the figures of `estimate` and the wall time on `workers`."""
    e = estimate(read_mb, sample_mb)
    wall_h = e["worker_hours"] / max(1, workers)
    return [
        f"compute estimate (measured {CLEAN_MB_PER_CORE_S} MB/s per core clean, {SAMPLE_MB_PER_CORE_S} "
        f"MB/s per core sample; {MEASURED_ON}):",
        f"  text-clean  {read_mb / 1e6:,.3f} TB read   -> {e['clean_core_hours']:,.1f} core-hours",
        f"  text-sample {sample_mb / 1e6:,.3f} TB to tokenize -> {e['sample_core_hours']:,.1f} core-hours",
        f"  Dataflow {MACHINE} ({MACHINE_VCPUS} vCPU, {MACHINE_MEMORY_GB} GB; {WORKER_RSS_MB} MB per worker "
        f"process measured): {e['worker_hours']:,.1f} worker-hours, about ${e['usd']:,.0f} at "
        f"${MACHINE_USD_PER_HOUR}/hour, {math.ceil(wall_h * 10) / 10:g} h on {workers} workers",
    ]
