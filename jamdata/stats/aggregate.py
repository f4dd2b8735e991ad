"""Mergeable statistics: each shard yields partial aggregates that combine associatively, so the
same code runs in one process or as a Beam combiner over a 30B-token run.

An aggregate is a small JSON-able dict with a `type`:
- `dist`: a numeric distribution: count/sum/min/max, a log-binned histogram (BINS_PER_DECADE bins per
  decade, below 1 as well as above: a quality score in [0, 1] spreads over its own bins) and, while
  there are at most EXACT_CAP values, the exact values (exact percentiles). Values <= 0 share the
  bin ZERO_BIN. A score in [0, 1] (quality, language confidence) is better seen on a linear axis:
  `dist(values, unit=True)` bins it in UNIT_BINS equal bins instead (`"scale": "unit"`).
- `count`: category -> count.
- `codes`: a bincount over a fixed range (codebook usage).
- `examples`: up to K examples, chosen by smallest stable hash (same picks for any shard order).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, overload

import numpy as np

from jamdata.io import stable_hash

BINS_PER_DECADE = 20
EXACT_CAP = 200_000
EXAMPLES_K = 3
# The bin of values <= 0. Negative bin numbers are real bins (values below 1), so the zero bin
# is a number no positive float64 reaches (log10 of the smallest subnormal is about -324).
ZERO_BIN = -1_000_000


def _bin(v: float) -> int:
    """Bin index of a value (ZERO_BIN holds zeros and negatives)."""
    return ZERO_BIN if v <= 0 else int(math.floor(math.log10(v) * BINS_PER_DECADE))


UNIT_BINS = 100  # linear bins of a `unit` distribution: [0, 0.01), [0.01, 0.02) ... [0.99, 1]


def bin_edges(b: int, scale: str = "log") -> tuple[float, float]:
    if scale == "unit":
        return b / UNIT_BINS, (b + 1) / UNIT_BINS
    if b == ZERO_BIN:
        return 0.0, 0.0
    return 10 ** (b / BINS_PER_DECADE), 10 ** ((b + 1) / BINS_PER_DECADE)


def dist(values: Iterable[float] | np.ndarray, unit: bool = False) -> dict:
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
    scale = {"scale": "unit"} if unit else {}
    if arr.size == 0:
        return {"type": "dist", "n": 0, "sum": 0.0, "min": None, "max": None, "hist": {}, "values": [], **scale}
    if unit:
        bins = np.clip(np.floor(arr * UNIT_BINS), 0, UNIT_BINS - 1).astype(np.int64)
    else:
        bins = np.where(arr > 0, np.floor(np.log10(np.where(arr > 0, arr, 1)) * BINS_PER_DECADE), ZERO_BIN).astype(
            np.int64
        )
    ub, cnt = np.unique(bins, return_counts=True)
    return {
        **scale,
        "type": "dist",
        "n": int(arr.size),
        "sum": float(arr.sum()),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "hist": {str(int(b)): int(c) for b, c in zip(ub, cnt)},
        "values": sorted(arr.tolist()) if arr.size <= EXACT_CAP else None,
    }


def counter(items: Iterable[Any]) -> dict:
    counts: dict[str, int] = {}
    for item in items:
        key = str(item)
        counts[key] = counts.get(key, 0) + 1
    return {"type": "count", "counts": counts}


def codes(arr: np.ndarray, size: int) -> dict:
    return {
        "type": "codes",
        "counts": np.bincount(np.asarray(arr, dtype=np.int64).ravel(), minlength=size)[:size].tolist(),
    }


def examples(items: Iterable[tuple[str, str]], k: int = EXAMPLES_K) -> dict:
    """items: (id, text) pairs; keeps the k with the smallest stable hash of the id."""
    scored = sorted((stable_hash(i), i, t) for i, t in items)[:k]
    return {"type": "examples", "k": k, "items": [[h, i, t] for h, i, t in scored]}


@overload
def merge(a: dict | None, b: dict) -> dict: ...
@overload
def merge(a: dict | None, b: dict | None) -> dict | None: ...
def merge(a: dict | None, b: dict | None) -> dict | None:
    if a is None:
        return b
    if b is None:
        return a
    if a["type"] != b["type"]:
        raise ValueError(f"cannot merge {a['type']} with {b['type']}")
    t = a["type"]
    if t == "dist":
        if a["n"] == 0:
            return b
        if b["n"] == 0:
            return a
        hist = dict(a["hist"])
        for k, v in b["hist"].items():
            hist[k] = hist.get(k, 0) + v
        values = None
        if a["values"] is not None and b["values"] is not None and a["n"] + b["n"] <= EXACT_CAP:
            values = sorted(a["values"] + b["values"])
        if a.get("scale", "log") != b.get("scale", "log"):
            raise ValueError(f"cannot merge a {a.get('scale', 'log')} distribution with a {b.get('scale', 'log')} one")
        scale = {"scale": a["scale"]} if "scale" in a else {}
        return {
            **scale,
            "type": "dist",
            "n": a["n"] + b["n"],
            "sum": a["sum"] + b["sum"],
            "min": min(a["min"], b["min"]),
            "max": max(a["max"], b["max"]),
            "hist": hist,
            "values": values,
        }
    if t == "count":
        counts = dict(a["counts"])
        for k, v in b["counts"].items():
            counts[k] = counts.get(k, 0) + v
        return {"type": "count", "counts": counts}
    if t == "codes":
        return {"type": "codes", "counts": (np.asarray(a["counts"]) + np.asarray(b["counts"])).tolist()}
    if t == "examples":
        k = max(a["k"], b["k"])
        return {"type": "examples", "k": k, "items": sorted(a["items"] + b["items"])[:k]}
    raise ValueError(f"unknown aggregate type {t}")


def merge_maps(a: dict[str, dict], b: dict[str, dict]) -> dict[str, dict]:
    out = dict(a)
    for key, agg in b.items():
        out[key] = merge(out.get(key), agg)
    return out


def percentiles(d: dict, qs: Iterable[float] = (1, 10, 50, 90, 99)) -> dict[str, float | None]:
    """Exact while the exact values are kept; otherwise the geometric centre of the histogram bin."""
    qs = list(qs)
    if d["n"] == 0:
        return {f"p{q:g}": None for q in qs}
    if d.get("values") is not None:
        vals = np.asarray(d["values"])
        return {f"p{q:g}": float(np.percentile(vals, q, method="inverted_cdf")) for q in qs}
    items = sorted((int(k), v) for k, v in d["hist"].items())
    cum = np.cumsum([v for _, v in items])
    out: dict[str, float | None] = {}
    for q in qs:
        idx = int(np.searchsorted(cum, q / 100 * d["n"], side="left"))
        b = items[min(idx, len(items) - 1)][0]
        if d.get("scale") == "unit":
            lo, hi = bin_edges(b, "unit")
            out[f"p{q:g}"] = (lo + hi) / 2
            continue
        lo, hi = bin_edges(b)
        out[f"p{q:g}"] = float(math.sqrt(lo * hi)) if b != ZERO_BIN else 0.0
    return out


def summarize_dist(d: dict) -> dict:
    return {
        "count": d["n"],
        "sum": d["sum"],
        "min": d["min"],
        "max": d["max"],
        "mean": d["sum"] / d["n"] if d["n"] else None,
        **percentiles(d),
        "percentiles_exact": d.get("values") is not None,
    }


def code_usage(counts: list[int]) -> dict:
    """Codebook health: used/dead share and the perplexity exp(H) of the code distribution."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total == 0:
        return {"codebook_size": int(c.size), "tokens": 0, "used": 0, "dead_share": 1.0, "perplexity": 0.0}
    p = c[c > 0] / total
    return {
        "codebook_size": int(c.size),
        "tokens": int(total),
        "used": int((c > 0).sum()),
        "dead_share": float((c == 0).mean()),
        "perplexity": float(np.exp(-(p * np.log(p)).sum())),
    }
