"""`JamLoader`: the loader around this rank's packed stream (`jamdata.loader.stream`): worker
processes, exact resume from `state_dict()` for any number of workers or ranks, and one global
state merged from every rank's (`merge_state_dicts`)."""

from __future__ import annotations

import copy
from typing import Any, Iterator

import torch

from jamdata.loader.sources import DatasetSource, LoaderError
from jamdata.loader.spec import LoaderSpec, check_topology, default_steps_per_epoch, expand, rank_lanes
from jamdata.loader.stream import TENSORS, PackedStream, as_tensors

STATE_VERSION = 1


def _as_is(batch):
    """collate_fn of the loader's DataLoader: batches are already built (and stay numpy)."""
    return batch


def merge_state_dicts(states: list[dict]) -> dict:
    """One global state from every rank's `state_dict()` (all taken at the same step)."""
    steps = {s["step"] for s in states}
    fps = {s["fingerprint"] for s in states}
    if len(steps) != 1 or len(fps) != 1:
        raise LoaderError(f"rank states disagree (steps {sorted(steps)}, order fingerprints {sorted(fps)})")
    out = copy.deepcopy(states[0])
    out["rank"] = None
    out["covered"] = sorted({l for s in states for l in s["covered"]})
    out["lanes"] = {str(l): v for s in states for l, v in s["lanes"].items()}
    out["counters"] = {}
    for s in states:
        for k, v in s.get("counters", {}).items():
            out["counters"][k] = out["counters"].get(k, 0) + v
    return out


class JamLoader:
    """Iterate for one epoch of `len(loader)` steps; `state_dict()` after any step and
    `load_state_dict()` continue exactly there, for any number of workers or ranks."""

    def __init__(
        self,
        spec: LoaderSpec,
        sources: list[DatasetSource],
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        persistent_workers: bool = False,
        prefetch_factor: int = 2,
        pin_memory: bool = False,
    ):
        check_topology(spec, world_size, num_workers)
        self.spec, self.sources = spec, sources
        self.rank, self.world_size = rank, world_size
        self.num_workers, self.persistent_workers = num_workers, persistent_workers and num_workers > 0
        self.prefetch_factor, self.pin_memory = prefetch_factor, pin_memory
        self.dataset_names = list(spec.names)
        self.fingerprint = spec.order_fingerprint(sources)
        self.steps_per_epoch = spec.steps_per_epoch or default_steps_per_epoch(spec, sources)
        self.step = 0
        self.lanes: dict[int, dict | tuple] = {}  # saved form, or the compact one workers send
        self._counts: dict[str, int] = {}
        self._dl = None
        self._dl_start: int | None = None
        self._clean = False
        self._local: PackedStream | None = None  # the in-process stream (num_workers=0)

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def counters(self) -> dict[str, int]:
        """Skipped shards, damaged samples, duplicate keys, truncated and skipped over-long samples."""
        self._sync()
        return self._counts

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def _stream(self) -> PackedStream:
        mine = set(rank_lanes(self.spec, self.rank, self.world_size))
        return PackedStream(
            self.spec,
            self.sources,
            self.rank,
            self.world_size,
            self.step,
            {l: expand(self.spec, s) for l, s in self.lanes.items() if l in mine},
            self.steps_per_epoch,
        )

    def _sync(self) -> None:
        """Take lane states and counters from the in-process stream (workers send theirs with
        every batch instead)."""
        st = self._local
        if st is not None and st._set is not None:
            ls = st._set
            self.lanes.update({l: ls.compact(l) for l in ls.cursors})
            for k, v in ls.take_counters().items():
                self._counts[k] = self._counts.get(k, 0) + v

    def _iterable(self):
        self._sync()
        self._local = None
        if self.num_workers == 0:
            self._local = self._stream()
            return self._local
        reuse = (
            self.persistent_workers
            and self._dl is not None
            and self._clean
            and (self.step - self._dl_start) % self.num_workers == 0
        )
        if not reuse:
            self._dl = torch.utils.data.DataLoader(
                self._stream(),
                batch_size=None,
                num_workers=self.num_workers,
                collate_fn=_as_is,
                persistent_workers=self.persistent_workers,
                prefetch_factor=self.prefetch_factor,
            )
            self._dl_start = self.step
        return self._dl

    def __iter__(self) -> Iterator[dict]:
        source = self._iterable()
        self._clean = False
        end = (self.epoch + 1) * self.steps_per_epoch
        for batch in source:
            n = batch.pop("_step")
            if n != self.step:
                raise LoaderError(f"rank {self.rank}: got step {n}, expected {self.step} (worker order broken)")
            self.lanes.update(batch.pop("_lanes", ()))
            for k, v in batch.pop("_counters", {}).items():
                self._counts[k] = self._counts.get(k, 0) + v
            self.step += 1
            batch = as_tensors(batch)
            if self.pin_memory:
                for k in TENSORS:
                    batch[k] = batch[k].pin_memory()
            yield batch
        self._sync()
        if self.step != end:
            raise LoaderError(f"rank {self.rank}: epoch ended at step {self.step}, expected {end}")
        self._clean = True

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self, gather: bool | None = None) -> dict:
        """Position after the last batch handed out. With torch.distributed initialised (or
        gather=True) every rank's lanes are gathered, so any rank's state resumes any world size."""
        self._sync()
        mine = rank_lanes(self.spec, self.rank, self.world_size)
        state = {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "step": self.step,
            "rank": self.rank,
            "world_size": self.world_size,
            "covered": mine,
            "lanes": {str(l): expand(self.spec, self.lanes[l]) for l in mine if l in self.lanes},
            "counters": dict(self._counts),
            "dataset_names": self.dataset_names,
        }
        dist = torch.distributed
        if gather is None:
            gather = self.world_size > 1 and dist.is_available() and dist.is_initialized()
        if gather:
            states: list[Any] = [None] * self.world_size
            dist.all_gather_object(states, state)
            state = merge_state_dicts(states)
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise LoaderError(f"loader state version {state.get('version')} is not {STATE_VERSION}")
        if state["fingerprint"] != self.fingerprint:
            raise LoaderError(
                f"loader state was saved for a different data order ({state['fingerprint']}, "
                f"this loader has {self.fingerprint}): datasets, weights, seed, seq_len, "
                "global_batch_size, lanes or shuffle_block changed"
            )
        need = set(rank_lanes(self.spec, self.rank, self.world_size))
        missing = need - set(state["covered"])
        if missing:
            raise LoaderError(
                f"loader state covers lanes {sorted(state['covered'])} only; rank {self.rank} of "
                f"{self.world_size} needs {sorted(need)}: pass the state of all ranks "
                "(merge_state_dicts, or state_dict() with torch.distributed initialised)"
            )
        self.step = int(state["step"])
        self.lanes = {int(k): copy.deepcopy(v) for k, v in state["lanes"].items()}
        self._counts = dict(state.get("counters", {}))
        self._clean = False
        self._local = None

    def dataset_epochs(self) -> dict[str, tuple[int, int]]:
        """(lowest, highest) epoch that this rank's lanes have reached in each dataset: how often
        each dataset has repeated at its weight so far."""
        self._sync()
        out: dict[str, tuple[int, int]] = {}
        for name in self.dataset_names:
            eps = [expand(self.spec, st)["ds"][name][0] for st in self.lanes.values()] or [0]
            out[name] = (min(eps), max(eps))
        return out

    def close(self) -> None:
        self._dl = None
