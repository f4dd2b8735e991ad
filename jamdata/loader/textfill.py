"""The text packer's inner loop: copy a lane's next tokens out of a shuffle block into rows.
Compiled when the extension was built (`pip install -e .` builds `_textfill.c`), in Python
otherwise; both give the same bytes (tests/test_loader_textfill.py). The compiled one is what
keeps rows of short documents cheap: one call fills a whole batch of rows, however many
documents they hold."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Sequence

import numpy as np

_INDEX = np.arange(1 << 16, dtype=np.int32)  # segment values, sliced instead of built per piece


class BlockPy:
    """A shuffle block of a Megatron dataset as a token stream: `cum` (int64) the token offset
    of each readable document with the total last, `nz` their positions in the block, and the
    windows of documents lying back to back in one shard: first document `wstart` (with the
    document count last), shard offset of stream position 0 `wtok`, shard `wshard` (an index
    into `shards`); `keys` the readable documents' keys. `b0` is the block's first position in
    the lane's span and `size` its length; (`pos`, `offset`) is the reading lane's position."""

    def __init__(
        self,
        cum: np.ndarray,
        nz: np.ndarray,
        wstart: np.ndarray,
        wtok: np.ndarray,
        wshard: np.ndarray,
        shards: Sequence[np.ndarray],
        b0: int,
        size: int,
        keys: list[str],
    ):
        if len(keys) != len(nz) or len(cum) != len(nz) + 1:
            raise ValueError("Block: array lengths disagree")
        self.cum, self.lens, self.nz = cum.tolist(), np.diff(cum).tolist(), nz.tolist()
        self.wstart, self.wtok, self.wshard = wstart.tolist(), wtok.tolist(), wshard.tolist()
        self.shards, self.b0, self.size, self.keys = tuple(shards), b0, size, keys
        self.pos, self.offset = b0, 0

    def fill(
        self, tokens: np.ndarray, seg: np.ndarray, done: int, n: int, c0: int, whole: bool = False
    ) -> tuple[int, int, int]:
        """From (pos, offset) (an unreadable position means the next readable document), copy
        up to n - done tokens into tokens[done:], stopping at the block's end, and write
        c0 + (document - d0) into seg[done:]; advance (pos, offset). Returns (copied, d0, d1):
        documents d0 .. d1-1 were touched. With `whole`, copies nothing and returns copied -2
        when the block holds fewer than n - done tokens from the position on."""
        cum, ws, nd = self.cum, self.wstart, len(self.nz)
        d = d0 = bisect_left(self.nz, self.pos - self.b0)
        if d == nd:
            if whole and n > done:
                return -2, nd, nd
            self.pos, self.offset = self.b0 + self.size, 0
            return 0, nd, nd
        if not 0 <= self.offset < cum[d + 1] - cum[d]:
            raise ValueError("fill: offset outside its document")
        t = cum[d] + self.offset
        if whole and cum[-1] - t < n - done:
            return -2, d, d
        w = bisect_right(ws, d) - 1
        filled = done
        while filled < n and t < cum[-1]:
            take = min(n - filled, cum[ws[w + 1]] - t)
            s = self.wtok[w] + t
            tokens[filled : filled + take] = self.shards[self.wshard[w]][s : s + take]
            last = bisect_right(cum, t + take - 1)  # documents d .. last-1 are in the piece
            c = c0 + d - d0
            if last - d == 1:
                seg[filled : filled + take] = c
            else:
                idx = (
                    _INDEX[c : c + last - d]
                    if c + last - d <= len(_INDEX)
                    else np.arange(c, c + last - d, dtype=np.int32)
                )
                seg[filled : filled + take] = idx.repeat(
                    [cum[d + 1] - t] + self.lens[d + 1 : last - 1] + [t + take - cum[last - 1]]
                )
            filled += take
            t += take
            d = bisect_right(cum, t) - 1 if t < cum[-1] else nd
            w += 1
        if d == nd:
            self.pos, self.offset = self.b0 + self.size, 0
            return filled - done, d0, nd
        self.pos, self.offset = self.b0 + self.nz[d], t - cum[d]
        return filled - done, d0, d + 1 if t > cum[d] else d


def fill_rows_py(tokens: np.ndarray, seg: np.ndarray, L: int, blocks: list) -> list:
    """For each b whose blocks[b] is a block holding at least L more tokens, fill row b (items
    b*L .. b*L+L-1 of the flat arrays) from it and put the list of its keys at b (the row's
    segment ids index into it); None elsewhere, leaving the row untouched."""
    out: list = []
    for b, blk in enumerate(blocks):
        r = blk.fill(tokens, seg, b * L, b * L + L, 0, True) if isinstance(blk, BlockPy) else (-2, 0, 0)
        out.append(blk.keys[r[1] : r[2]] if r[0] >= 0 else None)
    return out


try:
    from jamdata.loader._textfill import Block, fill_rows

    COMPILED = True
except ImportError:  # built without a C compiler: the same results, slower on short documents
    Block, fill_rows = BlockPy, fill_rows_py  # type: ignore[misc,assignment]
    COMPILED = False
