"""The packed, mixed stream of one rank (its specification: jamdata/loader/spec.py; the loader
around it: jamdata/loader/jamloader.py).

Global row r of step N (G rows per step, all ranks together) is row `j = r` of that step; it comes
from lane `(N % P) * Q + j // (G/Q)`, as that lane's row `(N // P) * (G/Q) + j % (G/Q)`; lane row i
of lane l is taken from dataset `schedule[(i * P * Q + l) % period]`. Rank k serves rows
[k*G/W, (k+1)*G/W) of every step; dataloader worker w serves steps start+w, start+w+nw, ... (nw
divides P, W divides Q), so every lane lives in exactly one process and nothing depends on W or nw.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from jamdata.loader import order
from jamdata.loader.cm3 import SampleCM3
from jamdata.loader.lane import Cursor
from jamdata.loader.packing import Packer
from jamdata.loader.sources import DatasetSource, LoaderError, ShardPool
from jamdata.loader.spec import LoaderSpec, check_topology, default_steps_per_epoch, rank_lanes
from jamdata.loader.textfill import fill_rows


class LaneSet:
    """The lanes one process owns, with their cursors and readers (rebuilt from state on demand)."""

    def __init__(self, spec: LoaderSpec, sources: list[DatasetSource], states: dict[int, dict]):
        self.spec, self.sources = spec, sources
        self.pool = ShardPool(spec.verify, spec.on_corrupt, cache_dir=spec.cache_dir)
        self.states = states
        self.cursors: dict[int, list[Cursor]] = {}
        self.rows: dict[int, int] = {}
        self.schedule = [int(x) for x in order.mixture_schedule(spec.quotas())]
        vocab = next((s.vocab for s in sources if s.vocab is not None), None)
        cm3 = SampleCM3(spec.cm3, vocab, spec.seed, self.pool.counters) if spec.cm3 and vocab else None
        self.packer = Packer(
            spec.seq_len,
            vocab.pad_id if vocab else 0,
            spec.oversize,
            vocab.boi_id if vocab else None,
            vocab.eoi_id if vocab else None,
            vocab.eos_id if vocab else None,
            self.pool.counters,
            cm3,
        )

    def _lane(self, lane: int) -> list[Cursor]:
        if lane not in self.cursors:
            st = self.states.get(lane, {})
            ds_state = st.get("ds", {})
            self.cursors[lane] = [
                Cursor(
                    src,
                    lane,
                    self.spec.n_lanes,
                    self.spec.seed,
                    self.spec.shuffle_block,
                    self.pool,
                    ds_state.get(src.name),
                    self.spec.seq_len * self.spec.text_run_rows,
                )
                for src in self.sources
            ]
            self.rows[lane] = int(st.get("row", 0))
        return self.cursors[lane]

    def state(self, lane: int) -> dict:
        cursors = self._lane(lane)
        return {"row": self.rows[lane], "ds": {c.src.name: c.state() for c in cursors}}

    def compact(self, lane: int) -> tuple:
        """The lane's state as sent with every batch (cheap; `expand` makes the saved form)."""
        return (self.rows[lane], tuple([(c.epoch, c.pos, c.offset) for c in self.cursors[lane]]))

    def take_counters(self) -> dict[str, int]:
        out = dict(self.pool.counters)
        self.pool.counters.clear()
        return out


class PackedStream(torch.utils.data.IterableDataset):
    """This rank's batches, one per step (use `batch_size=None` in a DataLoader). Implements the
    `Stateful` protocol (`state_dict` / `load_state_dict`) of torchdata's StatefulDataLoader."""

    def __init__(
        self,
        spec: LoaderSpec,
        sources: list[DatasetSource],
        rank: int = 0,
        world_size: int = 1,
        step: int = 0,
        lanes: dict[int, dict] | None = None,
        steps_per_epoch: int | None = None,
    ):
        self.spec, self.sources, self.rank, self.world_size = spec, sources, rank, world_size
        self.step = step
        self.lanes = dict(lanes or {})
        self.steps_per_epoch = steps_per_epoch or spec.steps_per_epoch or default_steps_per_epoch(spec, sources)
        self.stride: int | None = None  # set when restored from a per-worker state
        self._set: LaneSet | None = None
        self.ship_state = False  # send lane states and counters with every batch (set in workers)

    def __getstate__(self):
        d = self.__dict__.copy()
        d["_set"] = None
        return d

    # -- Stateful protocol ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        info = torch.utils.data.get_worker_info()
        lanes = {
            l: (self._set.state(l) if self._set and l in self._set.cursors else self.lanes.get(l))
            for l in rank_lanes(self.spec, self.rank, self.world_size)
        }
        return {
            "step": self.step,
            "lanes": {l: s for l, s in lanes.items() if s is not None},
            "stride": info.num_workers if info else self.stride,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.lanes = {int(k): v for k, v in state["lanes"].items()}
        self.stride = state.get("stride")
        self._set = None

    # -- iteration ----------------------------------------------------------------------------------
    def steps(self) -> range:
        info = torch.utils.data.get_worker_info()
        nw, w = (info.num_workers, info.id) if info else (1, 0)
        check_topology(self.spec, self.world_size, nw)
        end = (self.step // self.steps_per_epoch + 1) * self.steps_per_epoch
        if self.stride:  # restored per-worker state: this worker's own next step
            return range(self.step, end, self.stride)
        return range(self.step + w, end, nw)

    def __iter__(self) -> Iterator[dict]:
        if self._set is None:
            self._set = LaneSet(self.spec, self.sources, self.lanes)
        self.ship_state = torch.utils.data.get_worker_info() is not None
        steps = self.steps()
        for n in steps:
            batch = self.batch(n)
            self.step = n + steps.step
            yield batch
        self.step, self.stride = steps.stop, None  # the next epoch starts at the same step everywhere

    def batch(self, n: int) -> dict[str, Any]:
        if self._set is None:
            self._set = LaneSet(self.spec, self.sources, self.lanes)
        spec, ls = self.spec, self._set
        B, L = spec.global_batch_size // self.world_size, spec.seq_len
        # numpy allocates in a fraction of torch.empty's time; the tensors share the arrays' memory
        t = np.empty((B, L), dtype=spec.token_dtype)
        m = np.empty((B, L), dtype=bool)
        m.fill(True)  # text rows keep these; packed samples overwrite theirs
        sg = np.empty((B, L), dtype=np.int32)  # every row writes all of its segment ids
        keys: list[list[str]] = []
        ds: list[int] = []
        sched, period, cursors, rows, packer = ls.schedule, len(ls.schedule), ls.cursors, ls.rows, ls.packer
        per, P, Q, C = spec.rows_per_lane, spec.step_lanes, spec.slot_lanes, spec.n_lanes
        j0 = self.rank * B
        if per == 1:  # one row per lane and step (slot_lanes = global_batch_size, the default)
            lane_row, first = n // P, (n % P) * Q + j0  # = spec.lane_of(n, j0 + b): lane first + b
            at = lane_row * C
            lanes: Any = range(first, first + B)
            ds = [sched[(at + lane) % period] for lane in lanes]  # = spec.dataset_of(lane, lane_row)
            curs = [(cursors.get(lane) or ls._lane(lane))[d] for lane, d in zip(lanes, ds)]
            if any(rows[lane] != lane_row for lane in lanes):
                lane = next(lane for lane in lanes if rows[lane] != lane_row)
                raise LoaderError(
                    f"lane {lane} is at row {rows[lane]} but row {lane_row} was asked for (state and step disagree)"
                )
            tf, sf = t.reshape(-1), sg.reshape(-1)
            keys = fill_rows(tf, sf, L, [c.stream for c in curs])  # text rows inside their lanes' blocks
            if None in keys:
                for b, cur in enumerate(curs):
                    if keys[b] is None:
                        keys[b] = (
                            cur.pack_text(tf, sf, b * L, b * L + L)
                            if cur.splittable
                            else packer.row(cur, t[b], m[b], sg[b])
                        )
            rows.update(dict.fromkeys(lanes, lane_row + 1))
        else:
            lanes = []
            b = 0
            while b < B:
                j = j0 + b
                lane, lane_row = (n % P) * Q + j // per, (n // P) * per + j % per  # = spec.lane_of(n, j)
                d = sched[(lane_row * C + lane) % period]  # = spec.dataset_of(lane, lane_row)
                cur = (cursors.get(lane) or ls._lane(lane))[d]
                if rows[lane] != lane_row:
                    raise LoaderError(
                        f"lane {lane} is at row {rows[lane]} but row {lane_row} was asked for (state and step disagree)"
                    )
                e = b + 1
                if not cur.splittable:
                    keys.append(packer.row(cur, t[b], m[b], sg[b]))
                else:  # the lane's next rows of the same text dataset are packed as one stretch
                    lane_end = min(B, b + per - j % per)
                    while e < lane_end and sched[((lane_row + e - b) * C + lane) % period] == d:
                        e += 1
                    keys += cur.pack_text_rows(t, sg, b, e)
                rows[lane] = lane_row + e - b
                ds += [d] * (e - b)
                lanes.append(lane)
                b = e
        out = {
            "tokens": t,
            "loss_mask": m,
            "segment_ids": sg,
            "dataset_index": np.array(ds, dtype=np.int64),
            "keys": keys,
            "_step": n,
        }
        if self.ship_state:  # a worker process: the main process keeps the lanes' state
            out["_lanes"] = {l: ls.compact(l) for l in dict.fromkeys(lanes)}
            out["_counters"] = ls.take_counters()
            return out  # numpy: pickled through the worker's pipe (see as_tensors)
        return as_tensors(out)


TENSORS = ("tokens", "loss_mask", "segment_ids", "dataset_index")


def as_tensors(batch: dict) -> dict:
    """The batch with its arrays as tensors sharing their memory. Worker processes send numpy
    arrays and the main process wraps them: torch sends a tensor through a new shared-memory
    segment per tensor, which costs milliseconds per batch, against about 0.2 ms for pickling
    the arrays through the pipe (2-core machine, 8 x 4096-token batches)."""
    for k in TENSORS:
        if isinstance(batch.get(k), np.ndarray):
            batch[k] = torch.from_numpy(batch[k])
    return batch
