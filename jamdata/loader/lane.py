"""A lane: one independent packed stream. The global stream interleaves many lanes; a lane is
owned by exactly one (rank, worker), so it is read once, with no coordination, and its whole
position is three integers per dataset (epoch, position in its span, offset in the document).
`Cursor` is that position and reads the lane's samples; rows are filled from it by
`jamdata.loader.packing` (text blocks, webdataset samples)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from jamdata.loader import order
from jamdata.loader.packing import TextBlock
from jamdata.loader.sources import DatasetSource, LoaderError, MegatronShard, Sample, ShardPool


class Cursor:
    """The lane's position in one dataset: (epoch, pos, offset). Epoch e reads the lane's span of
    the shards concatenated in `order.shard_order(seed, name, e)`, in blocks of `block` samples,
    each block in `order.block_permutation(...)` order (text blocks: runs of documents in
    `order.run_order(...)` order); the last epoch is followed by the next."""

    def __init__(
        self,
        src: DatasetSource,
        lane: int,
        n_lanes: int,
        seed: int,
        block: int,
        pool: ShardPool,
        state: list[int] | None = None,
        run_tokens: int = 0,
    ):
        self.src, self.lane, self.n_lanes, self.seed, self.block = src, lane, n_lanes, seed, block
        self.run_tokens = run_tokens  # Megatron blocks are shuffled in runs of this many tokens
        self.pool = pool
        self.stream: Any = None  # a text cursor's current block (textfill.Block): it holds pos and offset
        self.epoch, self.pos, self.offset = state or (0, 0, 0)
        self._epoch_cache: tuple[int, list[int], list[int], tuple[int, int]] | None = None
        self._block_cache: tuple | None = None
        self._last: tuple[int, Sample | None] | None = None
        self._shards: dict[int, object] = {}  # shard readers this cursor uses (False: unusable)
        self._m = 0
        self.splittable = src.fmt == "megatron"
        self._text: TextBlock | None = None

    @property
    def pos(self) -> int:
        return self._pos if self.stream is None else self.stream.pos

    @pos.setter
    def pos(self, v: int) -> None:
        if self.stream is None:
            self._pos = v
        else:
            self.stream.pos = v

    @property
    def offset(self) -> int:
        return self._offset if self.stream is None else self.stream.offset

    @offset.setter
    def offset(self, v: int) -> None:
        if self.stream is None:
            self._offset = v
        else:
            self.stream.offset = v

    def state(self) -> list[int]:
        return [self.epoch, self.pos, self.offset]

    def _epoch(self):
        if self._epoch_cache is None or self._epoch_cache[0] != self.epoch:
            perm = order.shard_order(self.seed, self.src.name, self.epoch, len(self.src.shards))
            counts = np.array([self.src.shards[i].records for i in perm], dtype=np.int64)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            n = self.src.n_samples
            if n >= self.n_lanes:
                span = order.lane_span(n, self.lane, self.n_lanes)
            else:  # fewer samples than lanes: each lane takes one sample (documented duplicates)
                j = (self.lane + self.epoch * self.n_lanes) % n
                span = (j, j + 1)
            self._epoch_cache = (self.epoch, np.asarray(perm, dtype=np.int64), starts, span)
            self._m = span[1] - span[0]
            self._block_cache = None
        return self._epoch_cache

    def _span_len(self) -> int:
        self._epoch()
        return self._m

    def _enter_block(self, b: int) -> None:
        """Resolve every position of block b to (shard, index in shard) at once."""
        _, perm, starts, span = self._epoch()
        size = min(self.block, self._m - b * self.block)
        self._last = None
        if self.splittable:  # text rows are cut by pack_text from the block's TextBlock
            self._text_block(b, size, span[0] + b * self.block, perm, starts)
            return
        seq = (
            span[0] + b * self.block + order.block_permutation(self.seed, self.src.name, self.epoch, self.lane, b, size)
        )
        k = np.searchsorted(starts, seq, side="right") - 1  # last shard starting at or before (skips empty ones)
        shard_ids, local = perm[k], seq - starts[k]
        self._block_cache = (self.epoch, b, b * self.block, shard_ids.tolist(), local.tolist())

    def _text_block(self, b: int, size: int, first_seq: int, perm: np.ndarray, starts: np.ndarray):
        """Shuffle block b of a Megatron dataset (sequence positions first_seq .. +size, in
        shard order) in runs (`order.text_runs`: back-to-back documents of one shard, about
        `run_tokens` tokens each), emitted in an order drawn from (seed, dataset, epoch, lane,
        block). A row then takes one or two slice copies however short its documents are."""
        k0, k1 = (np.searchsorted(starts, [first_seq, first_seq + size - 1], side="right") - 1).tolist()
        ids, locs, starts_, lens = [], [], [], []
        usable: dict[int, MegatronShard | Literal[False]] = {}
        for k in range(k0, k1 + 1):  # the shards the block covers (empty ones add nothing)
            u = int(perm[k])
            l0 = max(first_seq - int(starts[k]), 0)
            l1 = min(first_seq + size - int(starts[k]), self.src.shards[u].records)
            if l1 <= l0:
                continue
            shard = usable[u] = self._shard(u)
            ids.append(np.full(l1 - l0, u, dtype=np.int64))
            locs.append(np.arange(l0, l1, dtype=np.int64))
            if shard:
                starts_.append(shard.start_arr[l0:l1])
                lens.append(shard.len_arr[l0:l1])
            else:  # an unusable shard's documents have length 0 and are skipped
                starts_.append(np.zeros(l1 - l0, dtype=np.int64))
                lens.append(starts_[-1])
        if len(ids) == 1:
            shard_ids, local, start, length = ids[0], locs[0], starts_[0], lens[0]
        else:
            shard_ids, local, start, length = map(np.concatenate, (ids, locs, starts_, lens))
        first = order.text_runs(shard_ids, start, length, self.run_tokens)
        idx, run_at = order.run_order(
            order.rng(self.seed, "runs", self.src.name, self.epoch, self.lane, b), first, size
        )
        head = idx[run_at]  # each run's first position, in emitted order
        pos, offset = self.pos, self.offset
        self._text = TextBlock(
            self.epoch,
            b * self.block,
            size,
            length[idx],
            run_at,
            shard_ids[head],
            local[head],
            start[head],
            {u: sh and sh.tokens for u, sh in usable.items()},
            {u: sh.keys if sh else None for u, sh in usable.items()},
        )
        self.stream = self._text.stream  # the block holds the position from here on
        self.stream.pos, self.stream.offset = pos, offset

    def _shard(self, shard_i: int):
        """The open reader of one shard (False: unusable, already logged and counted)."""
        shard = self._shards.get(shard_i)
        if shard is None:
            shard = self._shards[shard_i] = self.pool.get(self.src, shard_i) or False
            if len(self._shards) > 8:
                self._shards.pop(next(iter(self._shards)))
        return shard

    def _sample_at(self, pos: int) -> Sample | None:
        """Sample at position `pos` of this lane's shuffled span (None: unreadable, skipped)."""
        bc = self._block_cache
        if bc is None or bc[0] != self.epoch or not 0 <= pos - bc[2] < self.block:
            self._enter_block(pos // self.block)
            bc = self._block_cache
            assert bc is not None  # set by _enter_block for a cursor that reads samples
        last = self._last
        if last is not None and last[0] == pos:
            return last[1]
        i = pos - bc[2]
        shard_i, local = bc[3][i], bc[4][i]
        shard = self._shard(shard_i)
        s = None
        if shard:
            try:
                s = shard.get(local)
            except Exception as e:  # a damaged member: counted, logged, skipped (or raised: fail)
                self.pool.fail_or_log(
                    f"{self.src.root}/{self.src.shards[shard_i].rel}: sample {local}: {e}", "corrupt_samples"
                )
        self._last = (pos, s)
        return s

    def current(self) -> Sample:
        """The sample at the cursor, skipping unreadable ones (never loops forever)."""
        if self._epoch_cache is not None and self._epoch_cache[0] == self.epoch and self.pos < self._m:
            s = self._sample_at(self.pos)  # the common case
            if s is not None and len(s.tokens):
                return s
        skipped = 0
        while True:
            if self.pos >= self._span_len():
                self.epoch, self.pos, self.offset = self.epoch + 1, 0, 0
                continue
            s = self._sample_at(self.pos)
            if s is not None and len(s.tokens) > 0:
                return s
            self.pos += 1
            self.offset = 0
            skipped += 1
            self._check_readable(skipped)

    def _check_readable(self, skipped: int) -> None:
        """Raise once `skipped` unreadable positions in a row exceed a whole epoch of the lane
        (all its shards damaged), instead of looping forever."""
        if skipped > 2 * self.src.n_samples + 2:
            raise LoaderError(
                f"dataset {self.src.name!r} ({self.src.root}): no readable sample in "
                f"lane {self.lane}'s part of a whole epoch (all shards damaged?)"
            )

    def advance(self) -> None:
        self.pos += 1
        self.offset = 0

    def pack_text(self, tokens: np.ndarray, seg: np.ndarray, a: int, e: int) -> list[str]:
        """Fill tokens[a:e] with this lane's next e - a tokens (documents run on across rows) and
        seg[a:e] with each token's index in the returned list of the keys of the documents (or
        pieces of them) it holds. Skips unreadable and empty documents, and raises when a whole
        epoch of the lane has none. One `textfill` call per shuffle block touched, however many
        documents. (A whole batch's rows that fit in their lanes' current blocks are filled at
        once by `textfill.fill_rows`; this is the general case.)"""
        keys: list[str] = []  # one key per document touched, in stream order
        done, empty = a, 0
        while done < e:
            tb = self._text
            if tb is None or tb.epoch != self.epoch or not 0 <= self.pos - tb.b0 < tb.size:
                if self.pos >= self._span_len():
                    self.epoch, self.pos, self.offset = self.epoch + 1, 0, 0
                    continue
                self._enter_block(self.pos // self.block)
                tb = self._text
                assert tb is not None  # set by _enter_block for a splittable (text) cursor
            take, d0, d1 = tb.stream.fill(tokens, seg, done, e, len(keys))
            if not take:  # nothing readable in the rest of the block
                empty += tb.size
                self._check_readable(empty)
                continue
            empty = 0
            done += take
            keys += tb.keys[d0:d1]
        return keys

    def pack_text_rows(self, tokens: np.ndarray, seg: np.ndarray, b: int, e: int) -> list[list[str]]:
        """`pack_text` for rows b .. e-1 of a batch (2-D arrays) as one stretch of this lane;
        returns each row's keys."""
        L = tokens.shape[1]
        keys = self.pack_text(tokens.reshape(-1), seg.reshape(-1), b * L, e * L)  # seg: indices into keys
        rows = seg[b:e]
        firsts = rows[:, 0].copy()
        lasts = rows[:, -1].tolist()
        np.subtract(rows, firsts[:, None], out=rows)
        return [keys[i : j + 1] for i, j in zip(firsts.tolist(), lasts)]
