"""The text packer's inner loop: copy a lane's next tokens out of a shuffle block into a row.
Compiled when the extension was built (`pip install -e .` builds `_textfill.c`), in Python
otherwise; both give the same bytes (tests/test_loader_textfill.py). The compiled one is what
keeps rows of short documents cheap: one call per row instead of several numpy operations per
document."""
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
    into `shards`). `b0` is the block's first position in the lane's span, `size` its length."""

    def __init__(self, cum: np.ndarray, nz: np.ndarray, wstart: np.ndarray, wtok: np.ndarray,
                 wshard: np.ndarray, shards: Sequence[np.ndarray], b0: int, size: int):
        self.cum_np, self.cum, self.nz = cum, cum.tolist(), nz.tolist()
        self.wstart, self.wtok, self.wshard = wstart.tolist(), wtok.tolist(), wshard.tolist()
        self.shards, self.b0, self.size = tuple(shards), b0, size

    def fill(self, tokens: np.ndarray, seg: np.ndarray, done: int, n: int, pos: int, offset: int,
             c0: int) -> tuple[int, int, int, int, int]:
        """From the lane's position (pos, offset; an unreadable position means the next readable
        document), copy up to n - done tokens into tokens[done:], stopping at the block's end,
        and write c0 + (document - d0) into seg[done:]. Returns (copied, d0, d1, pos, offset):
        documents d0 .. d1-1 were touched, and the position after the copy."""
        cum, ws, nd = self.cum, self.wstart, len(self.nz)
        d = d0 = bisect_left(self.nz, pos - self.b0)
        if d == nd:
            return 0, nd, nd, self.b0 + self.size, 0
        t = cum[d] + offset
        w = bisect_right(ws, d) - 1
        filled = done
        while filled < n and t < cum[-1]:
            take = min(n - filled, cum[ws[w + 1]] - t)
            s = self.wtok[w] + t
            tokens[filled:filled + take] = self.shards[self.wshard[w]][s:s + take]
            last = bisect_right(cum, t + take - 1)  # documents d .. last-1 are in the piece
            c = c0 + d - d0
            idx = _INDEX[c:c + last - d] if c + last - d <= len(_INDEX) else np.arange(c, c + last - d, dtype=np.int32)
            seg[filled:filled + take] = idx.repeat(np.diff(np.clip(self.cum_np[d:last + 1], t, t + take)))
            filled += take
            t += take
            d = bisect_right(cum, t) - 1 if t < cum[-1] else nd
            w += 1
        if d == nd:
            return filled - done, d0, nd, self.b0 + self.size, 0
        return filled - done, d0, d + 1 if t > cum[d] else d, self.b0 + self.nz[d], t - cum[d]


try:
    from jamdata.loader._textfill import Block
    COMPILED = True
except ImportError:  # built without a C compiler: the same results, slower on short documents
    Block = BlockPy  # type: ignore[misc,assignment]
    COMPILED = False
