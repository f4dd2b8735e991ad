"""The global data order as pure functions of (seed, dataset name, epoch, lane).

Nothing here reads data or depends on the world size or the number of dataloader workers, so the
exact order can be reconstructed from the config and the manifests alone (see docs/loader.md).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from jamdata.io import stable_hash


def rng(seed: int, *parts: object) -> np.random.Generator:
    """A generator seeded by a stable hash of the parts (same on every machine and process)."""
    return np.random.default_rng(stable_hash(*(str(p) for p in parts), seed=int(seed) & (2**63 - 1)))


@lru_cache(maxsize=64)
def shard_order(seed: int, name: str, epoch: int, n_shards: int) -> tuple[int, ...]:
    """Order in which a dataset's shards (manifest order) are concatenated in `epoch`."""
    return tuple(int(i) for i in rng(seed, "shards", name, epoch).permutation(n_shards))


def lane_span(n_samples: int, lane: int, n_lanes: int) -> tuple[int, int]:
    """Contiguous [start, stop) of the epoch's sample sequence that `lane` reads. Spans differ in
    length by at most one sample, so no shard count has to divide anything."""
    return lane * n_samples // n_lanes, (lane + 1) * n_samples // n_lanes


def block_permutation(seed: int, name: str, epoch: int, lane: int, block: int, size: int) -> np.ndarray:
    """The bounded shuffle buffer: block `block` (`size` consecutive samples of the lane's span)
    is emitted in this order."""
    return rng(seed, "block", name, epoch, lane, block).permutation(size)


def text_runs(shard_ids: np.ndarray, start: np.ndarray, length: np.ndarray, run_tokens: int) -> np.ndarray:
    """First position of each run of a text block (positions in shard order). A stretch is
    consecutive documents of one shard lying back to back in its .bin; a document starts a new
    run when it starts a stretch or when its first token falls in a later `run_tokens`-token
    window of its stretch than the previous document's. Documents of an unreadable shard
    (length 0) form stretches of their own, so they never move the other runs."""
    n = len(shard_ids)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    brk = np.ones(n, dtype=bool)
    brk[1:] = (
        (shard_ids[1:] != shard_ids[:-1])
        | (start[1:] != start[:-1] + length[:-1])
        | ((length[1:] == 0) != (length[:-1] == 0))
    )
    before = np.cumsum(length) - length  # tokens before each document in the block
    stretch_at = np.maximum.accumulate(np.where(brk, before, 0))
    window = (before - stretch_at) // max(run_tokens, 1)
    brk[1:] |= window[1:] != window[:-1]
    return np.flatnonzero(brk)


def run_order(gen: np.random.Generator, firsts: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of a block in emitted order, and the emitted positions where runs begin: runs
    sorted by a random key drawn for their first position (keys are drawn for every position, so
    a run's place does not depend on how the other positions are grouped)."""
    key = gen.random(size)[firsts]
    ends = np.append(firsts[1:], size)
    runs = np.argsort(key, kind="stable")
    lens = (ends - firsts)[runs]
    out_start = np.cumsum(lens) - lens
    return np.repeat(firsts[runs] - out_start, lens) + np.arange(size), out_start


def mixture_quotas(weights: list[float], period: int) -> list[int]:
    """Rows per dataset in one mixture period: weights rounded by largest remainder, sum = period."""
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("mixture weights must be >= 0 and not all zero")
    exact = w / w.sum() * period
    quotas = np.floor(exact).astype(np.int64)
    rest = period - int(quotas.sum())
    order = sorted(range(len(w)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in order[:rest]:
        quotas[i] += 1
    return [int(q) for q in quotas]


@lru_cache(maxsize=16)
def mixture_schedule(quotas: tuple[int, ...]) -> np.ndarray:
    """Dataset index of each position in one period, by largest deficit (Megatron's blended
    dataset): position t goes to the dataset furthest behind its target share; ties go to the
    lower index. The schedule repeats every period, so position t is `schedule[t % period]`."""
    period = sum(quotas)
    q = np.asarray(quotas, dtype=np.float64) / period
    counts = np.zeros(len(quotas), dtype=np.float64)
    out = np.empty(period, dtype=np.int16)
    for t in range(period):
        d = int(np.argmax(q * (t + 1) - counts))
        out[t] = d
        counts[d] += 1
    return out
