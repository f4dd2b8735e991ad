"""Filling rows from a lane's cursor (`jamdata.loader.lane.Cursor`): `TextBlock` is one shuffle
block of a Megatron dataset as a token stream that text rows are copied out of (`textfill`),
`Packer` places whole webdataset samples, cutting an over-long one only outside its images."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from jamdata.loader.sources import LoaderError
from jamdata.loader.textfill import Block

if TYPE_CHECKING:
    from jamdata.loader.lane import Cursor


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
