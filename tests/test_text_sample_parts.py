"""Token shards as streamed parts: the part ranges cut from the token histogram keep every part
near `part_tokens` whatever the shard size, and a shard's parts follow its key order."""

import math

import numpy as np
import pytest

from jamdata.text import sampling
from pipelines.token_parts import cell_tokens, part_name, part_of, part_starts, shard_number


def simulate(n_docs: int, epochs: float, shard_tokens: int, part_tokens: int, seed: int = 0):
    """Tokens per (shard, part) for a source of `n_docs` documents sampled to `epochs`; shards
    drawn as the stage draws them (a seeded hash of the copy's key: uniform)."""
    rng = np.random.default_rng(seed)
    ranks = rng.integers(0, 2**63, n_docs, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    tokens = np.minimum(rng.lognormal(6, 1, n_docs).astype(np.int64) + 1, 50_000)
    buckets = (ranks >> np.uint64(64 - sampling.HIST_BITS)).astype(np.int64)
    hist = np.bincount(buckets, weights=tokens, minlength=sampling.N_BUCKETS).astype(np.int64)
    target = int(hist.sum() * epochs)
    d = sampling.decide("web", target, hist, math.ceil(epochs))
    n_shards = max(1, math.ceil(target / shard_tokens))
    starts = np.asarray(part_starts(cell_tokens(d, hist), n_shards, part_tokens), dtype=np.int64)
    sizes: dict[tuple[int, int], int] = {}
    for epoch in range(d.full_epochs + (d.boundary_bucket >= 0)):
        take = np.ones(n_docs, bool) if epoch < d.full_epochs else buckets <= d.boundary_bucket
        cells = epoch * sampling.N_BUCKETS + buckets[take]
        parts = np.searchsorted(starts, cells, side="right")
        shards = rng.integers(0, n_shards, int(take.sum()))
        for (s, p), n in zip(zip(shards.tolist(), parts.tolist()), tokens[take].tolist()):
            sizes[(s, p)] = sizes.get((s, p), 0) + n
    return sizes, n_shards, int(tokens.max())


@pytest.mark.parametrize("shard_tokens", [2_000_000, 20_000_000])
def test_parts_stay_near_part_tokens_whatever_the_shard_size(shard_tokens):
    part_tokens = 500_000
    sizes, n_shards, longest = simulate(40_000, 2.4, shard_tokens, part_tokens)
    parts_per_shard = len(sizes) / n_shards
    assert parts_per_shard >= 0.9 * min(shard_tokens, sum(sizes.values()) / n_shards) / part_tokens
    assert max(sizes.values()) <= 1.25 * part_tokens + longest


def test_one_part_when_part_tokens_exceed_the_shard():
    sizes, n_shards, _ = simulate(5_000, 1.5, 10**9, 10**9)
    assert n_shards == 1 and set(sizes) == {(0, 0)}


def test_part_order_follows_the_key_order():
    rng = np.random.default_rng(1)
    hist = rng.integers(0, 1000, sampling.N_BUCKETS)
    d = sampling.decide("web", int(hist.sum() * 2.5), hist, 3)
    starts = part_starts(cell_tokens(d, hist), 1, int(hist.sum()) // 10)
    assert len(starts) >= 20 and starts == sorted(starts)
    keys = sorted((e, int(r)) for e in range(3) for r in rng.integers(0, 2**63, 500))
    parts = [part_of(starts, e, r) for e, r in keys]
    assert parts == sorted(parts) and parts[0] == 0 and parts[-1] == len(starts)  # contiguous runs


def test_partial_epoch_cells_stop_at_the_boundary():
    hist = np.full(sampling.N_BUCKETS, 10, dtype=np.int64)
    d = sampling.decide("web", int(hist.sum()) + 105, hist, 2)
    cells = cell_tokens(d, hist)
    assert cells.size == 2 * sampling.N_BUCKETS and cells.sum() == d.target
    assert d.boundary_bucket == 10 and cells[sampling.N_BUCKETS + 11 :].sum() == 0


def test_part_names_sort_by_shard_then_part():
    names = [part_name("c4", s, p) for s in (0, 1, 12) for p in (0, 2, 10)]
    assert names == sorted(names) and names[0] == "c4/part-00000-00000"
    assert [shard_number(n + ".idx") for n in names] == [0, 0, 0, 1, 1, 1, 12, 12, 12]
    assert shard_number("c4/part-00007.idx") == 7  # a shard written whole (an older dataset)
