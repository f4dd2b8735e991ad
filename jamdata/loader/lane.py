"""A lane: one independent packed stream. The global stream interleaves many lanes; a lane is
owned by exactly one (rank, worker), so it is read once, with no coordination, and its whole
position is three integers per dataset (epoch, position in its span, offset in the document)."""
from __future__ import annotations

import numpy as np

from jamdata.loader import order
from jamdata.loader.sources import DatasetSource, LoaderError, Sample, ShardPool


def image_spans(tokens: np.ndarray, boi: int, eoi: int) -> list[tuple[int, int]]:
    """[start, stop) of every `<boi> ... <eoi>` run (an image must never be cut)."""
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
    each block in `order.block_permutation(...)` order; the last epoch is followed by the next."""

    def __init__(self, src: DatasetSource, lane: int, n_lanes: int, seed: int, block: int,
                 pool: ShardPool, state: list[int] | None = None):
        self.src, self.lane, self.n_lanes, self.seed, self.block = src, lane, n_lanes, seed, block
        self.pool = pool
        self.epoch, self.pos, self.offset = state or (0, 0, 0)
        self._epoch_cache: tuple[int, list[int], list[int], tuple[int, int]] | None = None
        self._block_cache: tuple | None = None
        self._last: tuple[int, Sample | None] | None = None
        self._shards: dict[int, object] = {}  # shard readers this cursor uses (False: unusable)
        self._m = 0
        self.splittable = src.fmt == "megatron"
        self._text: tuple | None = None  # (epoch, first position, size, arrays, starts, lengths, shards, locals)
        self._rels = [r.rel for r in src.shards]

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
        bp = order.block_permutation(self.seed, self.src.name, self.epoch, self.lane, b, size)
        seq = span[0] + b * self.block + bp
        k = np.searchsorted(starts, seq, side="right") - 1  # last shard starting at or before (skips empty ones)
        shard_ids, local = perm[k], seq - starts[k]
        self._block_cache = (self.epoch, b, b * self.block, shard_ids.tolist(), local.tolist())
        self._last = None
        if self.splittable:
            self._text_block(b * self.block, size, shard_ids, local)

    def _text_block(self, b0: int, size: int, shard_ids: np.ndarray, local: np.ndarray) -> None:
        """Token spans of the block's documents, looked up once per block so that packing a row
        costs one slice copy per document; an unusable shard's documents get length 0 (skipped)."""
        start = np.zeros(size, dtype=np.int64)
        length = np.zeros(size, dtype=np.int64)
        arrays: list = [None] * size
        for u in np.unique(shard_ids).tolist():
            sel = np.flatnonzero(shard_ids == u)
            shard = self._shard(u)
            if shard:
                start[sel] = shard.start_arr[local[sel]]
                length[sel] = shard.len_arr[local[sel]]
                for i in sel.tolist():
                    arrays[i] = shard.tokens
        self._text = (self.epoch, b0, size, arrays, start.tolist(), length.tolist(), shard_ids.tolist(), local.tolist())

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
                self.pool.fail_or_log(f"{self.src.root}/{self.src.shards[shard_i].rel}: sample {local}: {e}",
                                      "corrupt_samples")
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
            if skipped > 2 * self.src.n_samples + 2:
                raise LoaderError(f"dataset {self.src.name!r} ({self.src.root}): no readable sample in "
                                  f"lane {self.lane}'s part of a whole epoch (all shards damaged?)")

    def advance(self) -> None:
        self.pos += 1
        self.offset = 0

    def pack_text(self, tokens: np.ndarray, seg: np.ndarray) -> list[str]:
        """Fill `tokens` with the next len(tokens) tokens of this lane's document stream
        (documents run on across rows) and `seg` with the document index in the row; `seg` must
        arrive zeroed (only documents after the first are written). Returns the keys of the
        documents (or pieces of them) in the row. Skips unreadable and empty documents the way
        `current` does, and raises when a whole epoch of the lane has none."""
        L = len(tokens)
        keys: list[str] = []
        fill = segment = skipped = 0
        rels = self._rels
        while True:
            tb = self._text
            if tb is None or tb[0] != self.epoch or not 0 <= self.pos - tb[1] < tb[2]:
                if self.pos >= self._span_len():
                    self.epoch, self.pos, self.offset = self.epoch + 1, 0, 0
                    continue
                self._enter_block(self.pos // self.block)
                tb = self._text
            _, b0, size, arrays, starts, lengths, shards, locs = tb
            i, off = self.pos - b0, self.offset
            while i < size:
                n = lengths[i] - off
                if n <= 0:  # unreadable or empty document
                    i, off = i + 1, 0
                    skipped += 1
                    continue
                skipped = 0
                take = n if n < L - fill else L - fill
                st = starts[i] + off
                end = fill + take
                tokens[fill:end] = arrays[i][st:st + take]
                if segment:
                    seg[fill:end] = segment
                keys.append(f"{rels[shards[i]]}:{locs[i]}")
                segment += 1
                fill = end
                if take == n:
                    i, off = i + 1, 0
                else:
                    off += take
                if fill == L:
                    break
            self.pos, self.offset = b0 + i, off
            if fill == L:
                return keys
            if skipped > 2 * self.src.n_samples + 2:
                raise LoaderError(f"dataset {self.src.name!r} ({self.src.root}): no readable sample in "
                                  f"lane {self.lane}'s part of a whole epoch (all shards damaged?)")


class Packer:
    """Fills rows of `seq_len` from one cursor. Text documents (Megatron) run on across rows;
    webdataset samples are atomic: one that does not fit starts the next row, one longer than a
    row is truncated before an image (`oversize=truncate`) or skipped (`skip`), and counted."""

    def __init__(self, seq_len: int, pad_id: int, oversize: str, boi: int | None, eoi: int | None,
                 eos: int | None, counters: dict[str, int]):
        self.L, self.pad, self.oversize = seq_len, pad_id, oversize
        self.boi, self.eoi, self.eos = boi, eoi, eos
        self.counters = counters

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def row(self, cur: Cursor, tokens: np.ndarray, mask: np.ndarray, seg: np.ndarray) -> list[str]:
        """Pack one row of `seq_len` into the given (uninitialised) arrays; returns its keys."""
        if cur.splittable:  # text: documents run on across rows, no padding
            mask[:] = True
            seg[:] = 0
            return cur.pack_text(tokens, seg)
        L = self.L
        keys: list[str] = []
        fill = 0
        segment = 0
        skipped = 0
        while fill < L:
            s = cur.current()
            toks, m = s.tokens, s.loss_mask
            if self.eos is not None and toks[-1] != self.eos:
                toks = np.append(toks, self.eos)
                m = None if m is None else np.append(m, 1)
            n = len(toks)
            if n > L:
                cut = truncation_point(toks, L, self.boi, self.eoi) if self.oversize == "truncate" else 0
                if cut <= 0:
                    self._count("skipped_oversize")
                    cur.advance()
                    skipped += 1
                    if skipped > 2 * cur.src.n_samples + 2:
                        raise LoaderError(f"dataset {cur.src.name!r}: no sample of lane {cur.lane}'s part fits in "
                                          f"seq_len {L} (oversize=skip); raise seq_len or use oversize=truncate")
                    continue
                if fill and cut > L - fill:
                    break
                toks, m, n = toks[:cut], (None if m is None else m[:cut]), cut
                self._count("truncated")
            elif n > L - fill:
                break
            tokens[fill:fill + n] = toks
            mask[fill:fill + n] = True if m is None else m
            seg[fill:fill + n] = segment
            keys.append(s.key)
            fill += n
            segment += 1
            cur.advance()
        tokens[fill:] = self.pad
        mask[fill:] = False
        seg[fill:] = -1
        return keys
