"""The loader's specification: everything that defines the global order (`LoaderSpec`), which
lanes a rank serves, the topology checks, the saved form of a lane's state and the default epoch
length. Plain data and arithmetic, no torch: the stream and loader built on it are
jamdata/loader/stream.py and jamdata/loader/jamloader.py."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass

from jamdata.loader import order
from jamdata.loader.cm3 import CM3Spec
from jamdata.loader.sources import DatasetSource, LoaderError


@dataclass(frozen=True)
class LoaderSpec:
    """Everything that defines the global order (and nothing that does not)."""

    names: tuple[str, ...]
    roots: tuple[str, ...]
    weights: tuple[float, ...]
    seq_len: int = 4096
    global_batch_size: int = 8
    step_lanes: int = 2
    slot_lanes: int = 8
    shuffle_block: int = 1024
    text_run_rows: int = 8
    seed: int = 0
    mixture_period: int = 10000
    steps_per_epoch: int = 0  # 0: one pass over the mixture's tokens
    oversize: str = "truncate"
    on_corrupt: str = "skip"
    verify: str = "sha256"
    token_dtype: str = "int32"
    cache_dir: str = ""  # local copies of remote shards ("" = $JAM_CACHE_DIR or ~/.cache/jam/shards)
    cm3: CM3Spec | None = None  # loader.cm3: CM3 at batch time (changes lengths, so the packing)

    @property
    def n_lanes(self) -> int:
        return self.step_lanes * self.slot_lanes

    @property
    def rows_per_lane(self) -> int:
        return self.global_batch_size // self.slot_lanes

    def quotas(self) -> tuple[int, ...]:
        return _quotas(self.weights, self.mixture_period)

    def order_fingerprint(self, sources: list[DatasetSource]) -> str:
        d = asdict(self)
        for k in ("roots", "on_corrupt", "verify", "token_dtype", "cache_dir"):
            d.pop(k)
        if d["cm3"] is None:  # orders without CM3 keep the fingerprint they had before it existed
            d.pop("cm3")
        d["shards"] = [[s.name, [(r.rel, r.records, [f[2] for f in r.files]) for r in s.shards]] for s in sources]
        return "ord1-" + hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:20]

    def lane_of(self, step: int, row: int) -> tuple[int, int]:
        """(lane, lane row index) of global row `row` of step `step`."""
        per = self.rows_per_lane
        return ((step % self.step_lanes) * self.slot_lanes + row // per, (step // self.step_lanes) * per + row % per)

    def dataset_of(self, lane: int, lane_row: int) -> int:
        sched = order.mixture_schedule(self.quotas())
        return int(sched[(lane_row * self.n_lanes + lane) % len(sched)])


@functools.lru_cache(maxsize=16)
def _quotas(weights: tuple[float, ...], period: int) -> tuple[int, ...]:
    return tuple(order.mixture_quotas(list(weights), period))


def check_topology(spec: LoaderSpec, world_size: int, num_workers: int) -> None:
    G = spec.global_batch_size
    if G % spec.slot_lanes:
        raise LoaderError(f"loader.slot_lanes ({spec.slot_lanes}) must divide loader.global_batch_size ({G})")
    if spec.slot_lanes % world_size:
        raise LoaderError(
            f"world size {world_size} must divide loader.slot_lanes ({spec.slot_lanes}); "
            "choose slot_lanes as a multiple of every world size you will run with"
        )
    if num_workers > 1 and spec.step_lanes % num_workers:
        raise LoaderError(f"num_workers {num_workers} must divide loader.step_lanes ({spec.step_lanes})")


def expand(spec: LoaderSpec, compact: tuple | dict) -> dict:
    if isinstance(compact, dict):
        return compact
    row, cursors = compact
    return {"row": row, "ds": {name: list(c) for name, c in zip(spec.names, cursors)}}


def rank_lanes(spec: LoaderSpec, rank: int, world_size: int) -> list[int]:
    per = spec.slot_lanes // world_size
    return [p * spec.slot_lanes + q for p in range(spec.step_lanes) for q in range(rank * per, (rank + 1) * per)]


def default_steps_per_epoch(spec: LoaderSpec, sources: list[DatasetSource]) -> int:
    """Steps for one pass over the mixture: the dataset that runs out first at its weight, or the
    token total when token counts are missing."""
    rows_needed = []
    total = sum(spec.weights)
    for src, w in zip(sources, spec.weights):
        if w <= 0:
            continue
        tokens = src.tokens if src.tokens is not None else src.n_samples * spec.seq_len
        rows_needed.append(tokens / spec.seq_len / (w / total))
    return max(1, int(max(rows_needed) // spec.global_batch_size))
