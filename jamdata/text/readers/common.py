"""What every reader shares: options, the record constructors (DOCUMENT, REJECT), the guarded
input stream that turns damage into an offset, line splitting and a look-ahead byte scanner."""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import dataclass, field
from typing import IO, Any, Iterator, Protocol

from jamdata.io import open_input, stable_hash
from schemas import records


@dataclass(frozen=True)
class ReadOptions:
    max_record_bytes: int = 16 << 20  # longer records (a 50 MB line, a huge page) are rejected
    pile_set_names: tuple[str, ...] = ("Books3",)
    snippet_chars: int = 200
    max_input_depth: int = 8  # arXiv: \input nesting deeper than this is an expansion bomb
    max_archive_factor: int = 64  # arXiv: a tar may unpack to this many times max_record_bytes
    extract_timeout_s: float = 0.0  # WARC: seconds one page's HTML extraction may take (0: no limit)

    @property
    def max_archive_bytes(self) -> int:
        """Decompressed bytes one arXiv tar may hold (figures included): past this it is a bomb."""
        return self.max_archive_factor * self.max_record_bytes


@dataclass
class _Cursor:
    """Where the reader is, so a failure can be reported at the right offset; `id_path` is the
    file's name as it enters document ids (stable wherever the inputs live); `stream` is the
    guarded input stream (see `_open`), which knows whether and where the file is damaged."""

    offset: int = 0
    records: int = 0
    id_path: str = ""
    stream: "_Guarded | None" = None
    passed_over: dict[str, int] = field(default_factory=dict)  # records that are no documents, by kind
    split: Any = None  # a part of the file (readers/splits.py), or None for the whole file


_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub_surrogates(text: str) -> str:
    """`text` with lone surrogates (not encodable as UTF-8) replaced by U+FFFD."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def doc_id(source: str, path: str, native: Any) -> str:
    return f"{source}/{stable_hash(scrub_surrogates(str(path)), scrub_surrogates(str(native))):016x}"


def order_key(doc: dict) -> str:
    """The total order of documents (shards, line dedup): the id, then the text's hash, so the order
    stays total even if a source repeats a native id, and shard bytes never depend on arrival order."""
    return f"{doc['id']}|{stable_hash(doc['text']):016x}"


def make_doc(source: str, path: str, native: Any, text: str, url: Any = None, meta: dict | None = None) -> dict:
    """A DOCUMENT record. A `url` that is not a non-empty string (a number, an object) is dropped;
    lone surrogates are replaced (see the module doc). `metadata` is a plain JSON dict: what the
    column's text (`schemas.records.metadata_json`) holds, parsed back, so that later steps add
    fields to it and the writer's dump of it is exactly that text."""
    url = url if isinstance(url, str) and url else None
    dumped = records.metadata_json(meta or {})
    clean = [scrub_surrogates(x) for x in (text, url or "", dumped)]
    if clean != [text, url or "", dumped]:
        text, url = clean[0], clean[1] or None
        metadata = {**json.loads(clean[2]), "lone_surrogates_replaced": True}
    else:
        metadata = json.loads(dumped)
    return {
        "id": doc_id(source, path, native),
        "source": source,
        "text": text,
        "url": url,
        "metadata": metadata,
        "language": None,
        "language_score": None,
        "quality_score": None,
    }


def reject_id(source: str, stage: str, reason: str, file: str | None, place: int | str | None) -> str:
    """The id of a REJECT: its file, its place in the file (an offset, or e.g. `stream+page`) and
    why."""
    return f"{source}/{stable_hash(str(file), str(place), stage, reason):016x}"


def make_reject(
    source: str,
    stage: str,
    reason: str,
    snippet: str | bytes | None = None,
    file: str | None = None,
    offset: int | None = None,
    id: str | None = None,
    snippet_chars: int = 200,
) -> dict:
    if isinstance(snippet, bytes):
        snippet = snippet[: snippet_chars * 4].decode("utf-8", "replace")
    reason, snippet = scrub_surrogates(reason), scrub_surrogates(snippet) if snippet else snippet
    rid = id or reject_id(source, stage, reason, file, offset)
    return records.reject(rid, source, stage, reason, snippet[:snippet_chars] if snippet else None, file, offset)


def is_reject(record: dict) -> bool:
    return "stage" in record


def _bad_utf8(data: bytes, base: int) -> tuple[str, int] | None:
    try:
        data.decode("utf-8")
        return None
    except UnicodeDecodeError as e:
        return f"invalid UTF-8 (byte 0x{data[e.start]:02x}){_utf16_hint(data)}", base + e.start


def _utf16_hint(data: bytes) -> str:
    """Why bytes that are not UTF-8 may be UTF-16 (a byte-order mark, or every other byte NUL),
    with the fix: the readers take UTF-8 only."""
    head = data[:4096]
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(head) >= 8 and head.count(0) * 3 > len(head)):
        return ": the file looks like UTF-16; convert it to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)"
    return ""


# -- input streams -------------------------------------------------------------------------------
class _Damaged(Exception):
    """The decompressed stream of a file broke at `offset` (truncated or corrupt compressed data,
    an I/O error); everything before it has been read."""

    def __init__(self, offset: int, cause: Exception):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.offset, self.cause = offset, cause


class _Reader(Protocol):
    def read(self, n: int = ..., /) -> bytes: ...


class _Guarded(io.RawIOBase):
    """A file's decompressed stream, read one decoder chunk at a time, that ends where the data
    breaks instead of raising, and remembers the failure and its offset.

    Reading one chunk at a time matters: a buffered read that spans the damage would lose the
    intact bytes decoded in the same call, and with them the last good records."""

    def __init__(self, f: _Reader):
        self.f, self.pos = f, 0
        self.error: Exception | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.error is not None:
            return 0
        try:
            data = self.f.read1(len(b)) if hasattr(self.f, "read1") else self.f.read(len(b))
        except Exception as e:  # any decoder or I/O failure is damage at this offset
            self.error = e
            return 0
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


def _damaged(stream: IO[bytes]) -> bool:
    raw = getattr(stream, "raw", stream)
    return isinstance(raw, _Guarded) and raw.error is not None


@contextlib.contextmanager
def _open(path: str, cur: _Cursor) -> Iterator[IO[bytes]]:
    """The decompressed, guarded stream of `path`; raises `_Damaged` at the end of a reader's use
    if the stream broke, so records read before the damage are yielded first and nothing built
    from a cut stream (a half book) is."""
    with open_input(path) as f:
        guard = _Guarded(f)
        cur.stream = guard
        yield io.BufferedReader(guard, 1 << 16)
        if guard.error is not None:
            raise _Damaged(guard.pos, guard.error)


@contextlib.contextmanager
def _open_at(path: str, cur: _Cursor, start: int) -> Iterator[tuple[IO[bytes], int]]:
    """An uncompressed file's guarded stream at the first line that begins at or after `start`
    (a line that begins before it belongs to the part before), and that line's offset."""
    from jamdata.io import open_url

    with open_url(path, "rb") as raw:
        pos = 0
        if start > 0:
            raw.seek(start - 1)
            pos = start - 1
            while True:  # the rest of the line that begins before `start`, in bounded memory
                skipped = raw.readline(1 << 20)
                pos += len(skipped)
                if not skipped or skipped.endswith(b"\n"):
                    break
        guard = _Guarded(raw)
        guard.pos = cur.offset = pos
        cur.stream = guard
        yield io.BufferedReader(guard, 1 << 16), pos
        if guard.error is not None:
            raise _Damaged(guard.pos, guard.error)


# -- lines ---------------------------------------------------------------------------------------
def iter_lines(stream: IO[bytes], max_bytes: int, start: int = 0) -> Iterator[tuple[int, bytes | None]]:
    """(offset, line) pairs, offsets counted from `start` (where `stream` is in the file); a line
    longer than max_bytes is skipped in bounded memory and yielded as (offset, None). On a damaged
    stream the last, unfinished line is part of the damage and is not yielded."""
    off = start
    while True:
        line = stream.readline(max_bytes + 1)
        if not line or (not line.endswith(b"\n") and len(line) <= max_bytes and _damaged(stream)):
            return
        start = off
        off += len(line)
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while True:
                more = stream.readline(1 << 20)
                off += len(more)
                if not more or more.endswith(b"\n"):
                    break
            yield start, None
            continue
        yield start, line


def _read_bounded(f: IO[bytes], limit: int) -> bytes | None:
    data = f.read(limit + 1)
    return None if len(data) > limit else data


class _Lookahead:
    """A byte stream with look-ahead, push-back and scanning, counting the offset of the next byte
    (what the WARC and Wikipedia framers need to find record boundaries in a damaged stream)."""

    def __init__(self, f: IO[bytes], chunk: int = 1 << 16):
        self.f, self.chunk = f, chunk
        self.buf, self.i, self.offset, self.eof = b"", 0, 0, False

    def _fill(self, n: int) -> None:
        """At least n bytes buffered, unless the stream ends first."""
        if len(self.buf) - self.i >= n or self.eof:
            return
        parts, have = [self.buf[self.i :]], len(self.buf) - self.i
        while have < n:
            data = self.f.read(max(self.chunk, n - have))
            if not data:
                self.eof = True
                break
            parts.append(data)
            have += len(data)
        self.buf, self.i = b"".join(parts), 0

    def peek(self, n: int) -> bytes:
        self._fill(n)
        return self.buf[self.i : self.i + n]

    def read(self, n: int) -> bytes:
        self._fill(n)
        out = self.buf[self.i : self.i + n]
        self.i += len(out)
        self.offset += len(out)
        return out

    def readline(self, limit: int) -> bytes:
        """One line (with its b"\\n"), or at most `limit` bytes of it."""
        while True:
            end = self.buf.find(b"\n", self.i, self.i + limit)
            if end >= 0:
                return self.read(end + 1 - self.i)
            if len(self.buf) - self.i >= limit or self.eof:
                return self.read(limit)
            self._fill(len(self.buf) - self.i + self.chunk)

    def skip(self, n: int) -> int:
        """Drop n bytes without holding them; the number dropped (fewer at the end)."""
        done = 0
        while done < n:
            got = len(self.read(min(n - done, 1 << 20)))
            if not got:
                break
            done += got
        return done

    def unread(self, data: bytes) -> None:
        self.buf, self.i = data + self.buf[self.i :], 0
        self.offset -= len(data)

    def scan(self, pattern: re.Pattern, overlap: int, keep: int = 0) -> tuple[bytes, re.Match | None]:
        """Move to the next match of `pattern` (at most `overlap` bytes long); returns (the first
        `keep` bytes passed over, the match) or (..., None) at the end of the stream."""
        kept: list[bytes] = []
        need = keep
        while True:
            m = pattern.search(self.buf, self.i)
            if m is not None:
                passed = m.start() - self.i
            else:
                passed = max(0, len(self.buf) - self.i - (0 if self.eof else overlap))
            if need > 0:
                kept.append(self.buf[self.i : self.i + min(need, passed)])
                need -= len(kept[-1])
            self.i += passed
            self.offset += passed
            if m is not None:
                return b"".join(kept), pattern.match(self.buf, self.i)
            if self.eof:
                return b"".join(kept), None
            self._fill(len(self.buf) - self.i + self.chunk)
