"""Splitting one big input file into parts that several workers read, each record in exactly one.

- Uncompressed JSON lines (`c4`, `pile`, `arxiv_jsonl`): byte ranges. A line belongs to the range
  its first byte lies in; a reader starts at the first line that begins at or after its range's
  start and reads every line that begins before its end (the usual newline-aligned split). A record
  without a native id is named by its line number, so each range is told the number of lines that
  begin before it (`count_line_starts` per range, summed by `number_splits`).
- Wikipedia `…-multistream.xml.bz2` with its `…-multistream-index.txt.bz2` beside it: ranges of
  whole bz2 streams (each an independent bz2 stream of 100 pages), cut at the stream offsets the
  index lists. Pages are read stream by stream, whole or split alike.
- gzip and zstd files are not split: a gzip member or a zstd frame cannot be found without
  decompressing everything before it (The Pile and C4 are one gzip/zstd stream per file), so such
  a file is read by one worker; its records are spread before the costly steps (filters, dedup).
"""

from __future__ import annotations

import bz2
from dataclasses import dataclass, replace
from typing import Iterable, Iterator

from jamdata.io import InputError, fs_and_path, open_url, sniff_compression

LINE_FORMATS = ("c4", "pile", "arxiv_jsonl")
SPLIT_BYTES = 128 << 20  # default raw bytes per part of a big file (text.clean.split_bytes)
_MULTISTREAM = "-multistream.xml.bz2"
_INDEX = "-multistream-index.txt.bz2"


@dataclass(frozen=True)
class Split:
    """Part `part` of `parts` of a file: the lines (kind "lines") or bz2 streams (kind "bz2_streams")
    that begin in raw bytes [start, end). `first_line`: the number of lines that begin before
    `start` (the line number of the part's first line)."""

    start: int
    end: int
    kind: str = "lines"
    part: int = 0
    parts: int = 1
    first_line: int = 0

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def index_of(path: str) -> str | None:
    """The multistream index that belongs to a `…-multistream.xml.bz2` dump, by Wikimedia's naming."""
    return path[: -len(_MULTISTREAM)] + _INDEX if path.endswith(_MULTISTREAM) else None


def is_multistream_index(path: str) -> bool:
    return path.endswith(_INDEX)


def _exists(path: str) -> bool:
    fs, p = fs_and_path(path)
    return bool(fs.exists(p))


def plan_splits(path: str, fmt: str, split_bytes: int) -> list[Split]:
    """The parts of one input file; [] means "read it whole as ever" (small, compressed, or a
    format that is not split)."""
    fs, p = fs_and_path(path)
    size = int(fs.size(p))
    if fmt in LINE_FORMATS and size > split_bytes:
        with open_url(path, "rb") as f:
            if sniff_compression(f.read(8)) is None:
                return _numbered([Split(s, min(s + split_bytes, size)) for s in range(0, size, split_bytes)])
        return []
    index = index_of(path) if fmt == "wiki_xml" else None
    if index and _exists(index):
        return _numbered(list(stream_splits(path, _stream_offsets(index), size, split_bytes)))
    return []


def _numbered(splits: list[Split]) -> list[Split]:
    return [replace(s, part=i, parts=len(splits)) for i, s in enumerate(splits)]


def _stream_offsets(index: str) -> Iterator[int]:
    """The distinct stream offsets of a multistream index (`offset:page id:title` per line), in
    file order; a line that does not start with a number is a mistake named with its line."""
    from jamdata.io import open_input

    last = -1
    with open_input(index) as f:
        for n, line in enumerate(f, 1):
            head = line.split(b":", 1)[0]
            if not head.strip().isdigit():
                raise InputError(index, f"line {n} is not `offset:page id:title` ({line[:60]!r})")
            off = int(head)
            if off < last:
                raise InputError(index, f"line {n}: stream offset {off} is before the previous one ({last})")
            if off != last:
                yield off
                last = off


def stream_splits(path: str, offsets: Iterable[int], size: int, split_bytes: int) -> Iterator[Split]:
    """Ranges of whole bz2 streams, each at least `split_bytes` long (the last may be shorter), cut
    at the given stream offsets. The first range starts at 0 (the dump's siteinfo stream), the last
    ends at the end of the file (the closing `</mediawiki>` stream)."""
    start = 0
    for off in offsets:
        if off > size:
            raise InputError(path, f"the multistream index names offset {off}, past the end of the file ({size} bytes)")
        if off - start >= split_bytes:
            yield Split(start, off, "bz2_streams")
            start = off
    yield Split(start, size, "bz2_streams")


def count_line_starts(path: str, split: Split) -> int:
    """The newline bytes at offsets [start - 1, end - 1): summed over the parts before one, plus the
    line at offset 0, that is the number of lines that begin before that part."""
    lo, hi = max(split.start - 1, 0), split.end - 1
    n = 0
    with open_url(path, "rb") as f:
        f.seek(lo)
        left = hi - lo
        while left > 0:
            block = f.read(min(left, 1 << 22))
            if not block:
                break
            n += block.count(b"\n")
            left -= len(block)
    return n


def number_splits(counted: Iterable[tuple[Split, int]]) -> list[Split]:
    """Each part with `first_line` set from the line counts of the parts before it."""
    out, before = [], 0
    for split, n in sorted(counted, key=lambda sc: sc[0].start):
        out.append(replace(split, first_line=0 if split.start == 0 else 1 + before))
        before += n
    return out


# -- reading bz2 streams ---------------------------------------------------------------------------
class Bz2Stream:
    """One bz2 stream of a multistream file, decompressed as it is read (bounded memory); `next_raw`
    is the compressed data read past its end and `size` its compressed length, once it has ended."""

    def __init__(self, raw, pending: bytes = b""):
        self.raw, self.d, self.pending, self.fed = raw, bz2.BZ2Decompressor(), pending, 0
        self.next_raw = b""
        self.size: int | None = None

    def read(self, n: int = 1 << 16) -> bytes:
        while not self.d.eof:
            data = b""
            if self.d.needs_input:
                data, self.pending = self.pending or self.raw.read(1 << 16), b""
                if not data:
                    raise EOFError("bz2 stream ended before its end (truncated file)")
                self.fed += len(data)
            out = self.d.decompress(data, n)
            if out:
                return out
        if self.size is None:
            self.next_raw = self.d.unused_data
            self.size = self.fed - len(self.next_raw)
        return b""

    def read1(self, n: int = 1 << 16) -> bytes:
        return self.read(n)
