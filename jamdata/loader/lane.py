"""A lane: one independent packed stream. The global stream interleaves many lanes; a lane is
owned by exactly one (rank, worker), so it is read once, with no coordination, and its whole
position is three integers per dataset (epoch, position in its span, offset in the document)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from jamdata.loader import order
from jamdata.loader.sources import DatasetSource, LoaderError, MegatronShard, Sample, ShardPool
from jamdata.loader.textfill import Block


def image_spans(tokens: np.ndarray, boi: int, eoi: int | None) -> list[tuple[int, int]]:
    """[start, stop) of every `<boi> ... <eoi>` run (an image must never be cut); without an
    `<eoi>` token an image runs to the end of `tokens`."""
    starts = np.flatnonzero(tokens == boi)
    ends = np.flatnonzero(tokens == eoi)
    spans = []
    for s in starts:
        j = np.searchsorted(ends, s)
        spans.append((int(s), int(ends[j]) + 1 if j < len(ends) else len(tokens)))
    return spans


def truncation_point(tokens: np.ndarray, limit: int, boi: int | None, eoi: int | None) -> int:
    """Largest cut <= limit that does not fall inside an image (0: no such cut)."""
    cut = limit
    if boi is not None:
        for s, e in image_spans(tokens, boi, eoi):
            if s < cut < e:
                cut = s
    return cut


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


class TextBlock:
    """One shuffle block of a Megatron dataset as a token stream: its readable documents in
    emitted order. Each run (`order.text_runs`) is documents lying back to back in one shard
    with consecutive indices, all readable or all not, so a readable run is one window of the
    stream: its tokens one slice of the shard and its keys one slice of the shard's keys.
    `stream` copies tokens out of it (`textfill.Block`)."""

    def __init__(
        self,
        epoch: int,
        b0: int,
        size: int,
        length: np.ndarray,
        run_at: np.ndarray,
        run_shard: np.ndarray,
        run_local: np.ndarray,
        run_start: np.ndarray,
        tokens: dict[int, Any],
        shard_keys: dict[int, Any],
    ):
        """`length`: document lengths in emitted order (0: unreadable); `run_at`: where each
        run starts in it; `run_shard`, `run_local`, `run_start`: shard, index in the shard and
        first token of each run's first document."""
        self.epoch, self.b0, self.size = epoch, b0, size
        readable = length > 0
        if readable.all():
            nz, ln, ws = np.arange(size, dtype=np.int64), length, run_at
        else:
            nz = np.flatnonzero(readable).astype(np.int64)
            ln = length[nz]
            keep = readable[run_at]
            run_shard, run_local, run_start = run_shard[keep], run_local[keep], run_start[keep]
            ws = np.searchsorted(nz, run_at[keep])  # the run's first document among the readable ones
        cum = np.zeros(len(nz) + 1, dtype=np.int64)
        np.cumsum(ln, out=cum[1:])
        wstart = np.append(ws, len(nz)).astype(np.int64)
        wsh = run_shard.tolist()
        index: dict[int, int] = {}
        wshard = np.array([index.setdefault(u, len(index)) for u in wsh], dtype=np.int64)
        self.keys: list[str] = []  # every readable document's key, one list slice per window
        for u, l0, m in zip(wsh, run_local.tolist(), np.diff(wstart).tolist()):
            self.keys += shard_keys[u][l0 : l0 + m]
        self.stream = Block(
            cum, nz, wstart, run_start - cum[ws], wshard, tuple(tokens[u] for u in index), b0, size, self.keys
        )


class Packer:
    """Fills rows of `seq_len` with webdataset samples from one cursor (text rows come from
    `Cursor.pack_text`). Samples are atomic: one that does not fit starts the next row, one
    longer than a row is truncated before an image (`oversize=truncate`) or skipped (`skip`),
    and counted. Samples of the datasets `loader.cm3` names are CM3-transformed before they are
    placed, with a raw budget of `seq_len - 2 * max_spans` (`jamdata/loader/cm3.py`)."""

    def __init__(
        self,
        seq_len: int,
        pad_id: int,
        oversize: str,
        boi: int | None,
        eoi: int | None,
        eos: int | None,
        counters: dict[str, int],
        cm3: Any = None,
    ):
        self.L, self.pad, self.oversize = seq_len, pad_id, oversize
        self.boi, self.eoi, self.eos = boi, eoi, eos
        self.counters = counters
        self.cm3 = cm3  # loader.cm3 (jamdata.loader.cm3.SampleCM3) or None

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def row(self, cur: Cursor, tokens: np.ndarray, mask: np.ndarray, seg: np.ndarray) -> list[str]:
        """Pack one row of `seq_len` into the given (uninitialised) arrays; returns its keys."""
        L = self.L
        keys: list[str] = []
        fill = 0
        segment = 0
        skipped = 0
        cm3 = self.cm3 if self.cm3 is not None and cur.src.name in self.cm3.datasets else None
        budget = L if cm3 is None else L - cm3.spec.reserve  # CM3 adds up to `reserve` tokens
        while fill < L:
            s = cur.current()
            toks, m = s.tokens, s.loss_mask
            if self.eos is not None and toks[-1] != self.eos:
                toks = np.append(toks, self.eos)
                m = None if m is None else np.append(m, 1)
            n = len(toks)
            cut = 0
            if n > budget:
                cut = truncation_point(toks, budget, self.boi, self.eoi) if self.oversize == "truncate" else 0
                if cut <= 0:
                    self._count("skipped_oversize")
                    cur.advance()
                    skipped += 1
                    if skipped > 2 * cur.src.n_samples + 2:
                        raise LoaderError(
                            f"dataset {cur.src.name!r}: no sample of lane {cur.lane}'s part fits in "
                            f"seq_len {L} (oversize=skip); raise seq_len or use oversize=truncate"
                        )
                    continue
                toks, m, n = toks[:cut], (None if m is None else m[:cut]), cut
            if cm3 is not None:
                toks, m = cm3(cur.lane, cur.epoch, cur.pos, s.key, toks, m)
                n = len(toks)
            if n > L - fill:
                break
            if cut:
                self._count("truncated")
            tokens[fill : fill + n] = toks
            mask[fill : fill + n] = True if m is None else m
            seg[fill : fill + n] = segment
            keys.append(s.key)
            fill += n
            segment += 1
            cur.advance()
        tokens[fill:] = self.pad
        mask[fill:] = False
        seg[fill:] = -1
        return keys
