"""Streaming readers for the raw text formats; each yields DOCUMENT dicts and REJECT dicts.

`read_file(path, fmt, source)` is the entry point. Bad input never raises out of it: a broken record
becomes a REJECT (stage "read") with the file and the byte offset in the decompressed stream (WARC:
the record offset; Wikipedia: the page's offset; parquet: the row), and reading goes on with the next
record. A compressed stream that breaks part-way (truncated or corrupt gzip/bz2/zstd) keeps every
record decoded before the damage and adds one REJECT at the damage's offset.

Text is always valid Unicode: lone surrogates (legal in JSON as "\\ud800" escapes, e.g. half of an
emoji cut by a truncating writer) are replaced with U+FFFD in every document field and marked with
`metadata.lone_surrogates_replaced`, so that everything downstream can encode the text as UTF-8.

Records are framed so that damage stays local: WARC records are checked against their
Content-Length and the next record's start (resynchronising at the next `WARC/1.x` line),
Wikipedia pages are cut out of the stream and parsed one at a time, parquet is read per row group,
tar headers are resynchronised, and arXiv sources expand within size and depth limits
(`ExpansionLimit`: decompression and `\\input` bombs).

Document ids are `<source>/<16 hex digits>` from a stable hash of the file path and the record's
native id (WARC-Record-ID, page id, arXiv id...) or its index, so they are the same on every run.
"""
from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import json
import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, Any, Callable, Iterable, Iterator


from jamdata.io import fs_and_path, open_input, open_url, stable_hash
from jamdata.text.extract import ExtractionTimeout

FORMATS_DOC = {
    "warc": "Common Crawl WARC: HTML responses, main text extracted (trafilatura)",
    "wet": "Common Crawl WET: conversion records (plain text)",
    "c4": "JSON lines (C4 / dolma): text, url, timestamp or date",
    "wiki_xml": "Wikipedia pages-articles XML dump (.xml, .xml.bz2); redirects and non-article namespaces skipped",
    "wiki_parquet": "Wikipedia parquet export: id, url, title, text",
    "pile": "The Pile JSON lines (.jsonl.zst): text, meta.pile_set_name (kept if in pile_set_names)",
    "text": "plain-text files (one document per file), e.g. a folder of books",
    "arxiv": "arXiv e-print source: gzip'd tar or single gzip'd .tex, one paper per file",
    "arxiv_jsonl": "RedPajama-style arXiv JSON lines: text, meta.arxiv_id, meta.url, meta.timestamp",
}


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


_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub_surrogates(text: str) -> str:
    """`text` with lone surrogates (not encodable as UTF-8) replaced by U+FFFD."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def doc_id(source: str, path: str, native: Any) -> str:
    return f"{source}/{stable_hash(scrub_surrogates(str(path)), scrub_surrogates(str(native))):016x}"


def make_doc(source: str, path: str, native: Any, text: str, url: Any = None,
             meta: dict | None = None) -> dict:
    """A DOCUMENT record. A `url` that is not a non-empty string (a number, an object) is dropped;
    lone surrogates are replaced (see the module doc)."""
    url = url if isinstance(url, str) and url else None
    metadata = _dump_meta(meta or {})
    clean = [scrub_surrogates(x) for x in (text, url or "", metadata)]
    if clean != [text, url or "", metadata]:
        text, url = clean[0], clean[1] or None
        metadata = json.dumps({**json.loads(clean[2]), "lone_surrogates_replaced": True},
                              sort_keys=True, ensure_ascii=False)
    return {
        "id": doc_id(source, path, native), "source": source, "text": text, "url": url,
        "metadata": metadata, "language": None, "language_score": None, "quality_score": None,
    }


def _dump_meta(meta: dict) -> str:
    """`meta` as JSON; a value nested too deeply to write (JSON metadata that the parser just
    accepted can exceed the writer's stack in a deeper call) is replaced by a note, not fatal."""
    dump = lambda v: json.dumps(v, sort_keys=True, ensure_ascii=False, default=str)  # noqa: E731
    try:
        return dump(meta)
    except (RecursionError, ValueError):
        safe = {}
        for k, v in meta.items():
            try:
                dump(v)
                safe[k] = v
            except (RecursionError, ValueError):
                safe[k] = "<nested too deeply to keep>"
        return dump(safe)


def make_reject(source: str, stage: str, reason: str, snippet: str | bytes | None = None,
                file: str | None = None, offset: int | None = None, id: str | None = None,
                snippet_chars: int = 200) -> dict:
    if isinstance(snippet, bytes):
        snippet = snippet[: snippet_chars * 4].decode("utf-8", "replace")
    reason, snippet = scrub_surrogates(reason), scrub_surrogates(snippet) if snippet else snippet
    rid = id or f"{source}/{stable_hash(str(file), str(offset), stage, reason):016x}"
    return {"id": rid, "source": source, "stage": stage, "reason": reason,
            "snippet": snippet[:snippet_chars] if snippet else None, "file": file, "offset": offset}


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

    def __init__(self, offset: int, cause: BaseException):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.offset, self.cause = offset, cause


class _Guarded(io.RawIOBase):
    """A file's decompressed stream, read one decoder chunk at a time, that ends where the data
    breaks instead of raising, and remembers the failure and its offset.

    Reading one chunk at a time matters: a buffered read that spans the damage would lose the
    intact bytes decoded in the same call, and with them the last good records."""

    def __init__(self, f: IO[bytes]):
        self.f, self.pos, self.error = f, 0, None

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


# -- lines ---------------------------------------------------------------------------------------
def iter_lines(stream: IO[bytes], max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(offset, line) pairs; a line longer than max_bytes is skipped in bounded memory and
    yielded as (offset, None). On a damaged stream the last, unfinished line is part of the
    damage and is not yielded."""
    off = 0
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


def _json_lines(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[tuple[int, int, dict] | dict]:
    """(index, offset, object) per line, or a REJECT dict for a line that is not a JSON object."""
    with _open(path, cur) as f:
        for idx, (off, line) in enumerate(iter_lines(f, opts.max_record_bytes)):
            cur.offset, cur.records = off, idx
            if line is None:
                yield make_reject(source, "read", f"record longer than {opts.max_record_bytes} bytes",
                                  None, path, off)
                continue
            if not line.strip():
                continue
            bad = _bad_utf8(line, off)
            if bad:
                yield make_reject(source, "read", bad[0], line, path, bad[1])
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                yield make_reject(source, "read", f"malformed JSON: {e}", line, path, off)
                continue
            except RecursionError:  # valid-looking JSON nested deeper than the parser's stack
                yield make_reject(source, "read", "malformed JSON: nested too deeply", line, path, off)
                continue
            if not isinstance(obj, dict):
                yield make_reject(source, "read", "JSON line is not an object", line, path, off)
                continue
            yield idx, off, obj


def _text_field(obj: dict, source: str, path: str, off: int, line_hint: str = "text") -> str | dict:
    text = obj.get("text")
    if not isinstance(text, str):
        return make_reject(source, "read", f"no string '{line_hint}' field", json.dumps(obj)[:200], path, off)
    return text


def _json_texts(path: str, source: str, opts: ReadOptions, cur: _Cursor,
                keep: Callable[[dict], bool] = lambda obj: True) -> Iterator[tuple[int, int, dict, str] | dict]:
    """(index, offset, object, text) per kept JSON line with a string `text`; REJECT dicts otherwise."""
    for item in _json_lines(path, source, opts, cur):
        if isinstance(item, dict):
            yield item
            continue
        idx, off, obj = item
        if not keep(obj):
            cur.passed_over["pile other subsets"] = cur.passed_over.get("pile other subsets", 0) + 1
            continue
        text = _text_field(obj, source, path, off)
        yield text if isinstance(text, dict) else (idx, off, obj, text)


def read_c4(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    for item in _json_texts(path, source, opts, cur):
        if isinstance(item, dict):
            yield item
            continue
        idx, off, obj, text = item
        inner = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        url = obj.get("url") or inner.get("url")
        meta = {k: v for k, v in obj.items() if k not in ("text", "url", "metadata")}
        meta.update({k: v for k, v in inner.items() if k != "url"})
        ts = obj.get("timestamp") or obj.get("date") or inner.get("timestamp") or inner.get("date")
        if ts is not None:
            meta["timestamp"] = ts
        meta.pop("date", None)
        meta.update(file=path, offset=off)
        yield make_doc(source, cur.id_path, obj.get("id", idx), text, url, meta)


def _meta(obj: dict) -> dict:
    return obj.get("meta") if isinstance(obj.get("meta"), dict) else {}


def read_pile(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    """Only the Pile subsets in opts.pile_set_names; the other subsets are not this source's
    documents and are passed over without a reject."""
    wanted = lambda obj: _meta(obj).get("pile_set_name") in opts.pile_set_names  # noqa: E731
    for item in _json_texts(path, source, opts, cur, keep=wanted):
        if isinstance(item, dict):
            yield item
            continue
        idx, off, obj, text = item
        yield make_doc(source, cur.id_path, idx, text, None, {**_meta(obj), "file": path, "offset": off})


def read_arxiv_jsonl(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    for item in _json_texts(path, source, opts, cur):
        if isinstance(item, dict):
            yield item
            continue
        idx, off, obj, text = item
        meta = _meta(obj)
        native = meta.get("arxiv_id") or obj.get("id") or idx
        yield make_doc(source, cur.id_path, native, text, meta.get("url"),
                       {**{k: v for k, v in meta.items() if k != "url"}, "file": path, "offset": off})


# -- Common Crawl ----------------------------------------------------------------------------------
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.I)


# Browsers decode these labels as the superset encoding (WHATWG Encoding Standard); pages rely on it.
_SUPERSET = {"gb2312": "gb18030", "gbk": "gb18030", "latin_1": "cp1252", "iso8859_1": "cp1252", "ascii": "cp1252",
             "iso8859_9": "cp1254", "tis_620": "cp874", "shift_jis": "cp932", "euc_kr": "cp949",
             "big5": "big5hkscs"}


def _charset(name: str | None) -> str | None:
    if not name:
        return None
    try:
        codec = codecs.lookup(name.strip().lower()).name.replace("-", "_")
    except LookupError:
        return None
    return _SUPERSET.get(codec, codec)


def decode_html(payload: bytes, content_type: str | None = None) -> tuple[str, str]:
    """HTML bytes to text: (text, charset used).

    Valid UTF-8 wins over any declaration (non-ASCII text in other charsets is practically never
    valid UTF-8, while servers that declare ISO-8859-1 and send UTF-8 are common). Otherwise the
    HTTP charset, then the <meta> charset: first one that decodes cleanly, then one that decodes with
    under 1% bad bytes (a few stray bytes are common), then a detected charset, then cp1252."""
    try:
        return payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    m = _HEADER_CHARSET.search(content_type or "")
    header = _charset(m.group(1)) if m else None
    m = _META_CHARSET.search(payload[:8192])
    meta = _charset(m.group(1).decode("ascii", "replace")) if m else None
    declared = [e for e in dict.fromkeys((header, meta)) if e and e != "utf_8"]
    for enc in declared:
        try:
            return payload.decode(enc), enc
        except UnicodeDecodeError:
            continue
    for enc in declared:
        text = payload.decode(enc, errors="replace")
        if text.count("\ufffd") <= max(2, len(text) // 100):
            return text, f"{enc}(lossy)"
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(payload[:65536]).best()
        if best is not None and best.encoding:
            return payload.decode(best.encoding, errors="replace"), f"{best.encoding}(detected)"
    except ImportError:
        pass
    return payload.decode("cp1252", errors="replace"), "cp1252(fallback)"


def extract_main_text(html: str, url: str | None = None, timeout_s: float | None = None) -> str | None:
    """Main text of an HTML page (boilerplate, navigation, comments dropped); past `timeout_s`
    seconds raises ExtractionTimeout (see jamdata/text/extract.py for how the limit is enforced)."""
    from jamdata.text.extract import extract_main_text as extract

    return extract(html, url, timeout_s)


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
        parts, have = [self.buf[self.i:]], len(self.buf) - self.i
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
        return self.buf[self.i: self.i + n]

    def read(self, n: int) -> bytes:
        self._fill(n)
        out = self.buf[self.i: self.i + n]
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
        self.buf, self.i = data + self.buf[self.i:], 0
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
                kept.append(self.buf[self.i: self.i + min(need, passed)])
                need -= len(kept[-1])
            self.i += passed
            self.offset += passed
            if m is not None:
                return b"".join(kept), pattern.match(self.buf, self.i)
            if self.eof:
                return b"".join(kept), None
            self._fill(len(self.buf) - self.i + self.chunk)


# -- Common Crawl: WARC framing -------------------------------------------------------------------
_WARC_HEADER_MAX = 1 << 16
_WARC_LINE = re.compile(rb"\nWARC/1\.[01]\r?\n")
_CONTENT_LENGTH = re.compile(rb"^content-length:[ \t]*(\S*)[ \t]*\r?$", re.I | re.M)
_WARC_TYPE = re.compile(rb"^WARC-Type:[ \t]*(\S+)", re.I | re.M)
_WARC_TYPES = {"warcinfo", "response", "resource", "request", "metadata", "revisit", "conversion", "continuation"}
_RECORD_INSIDE = re.compile(rb"\r\n\r\nWARC/1\.[01]\r\n[A-Za-z-]+:")


@dataclass
class _WarcFrame:
    offset: int
    header: bytes
    content: bytes | None  # None: longer than the record limit, passed over unread


@dataclass
class _WarcDamage:
    offset: int
    problem: str
    end: int = 0  # where reading resumed (the next record, or the end of the file)


def _skip_blank_lines(src: _Lookahead) -> None:
    while src.peek(2) == b"\r\n" or src.peek(1) == b"\n":
        src.read(2 if src.peek(1) == b"\r" else 1)


def _warc_header(src: _Lookahead) -> tuple[bytes, int | str]:
    """The header block of the record starting here (the bytes consumed) and its Content-Length,
    or what is wrong with it."""
    first = src.readline(_WARC_HEADER_MAX)
    if not first.startswith(b"WARC/"):
        return first, f"no WARC/ version line (found {first[:40]!r})"
    lines = [first]
    while True:
        line = src.readline(_WARC_HEADER_MAX)
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            break
        if not line.endswith(b"\n") or sum(map(len, lines)) > _WARC_HEADER_MAX:
            return b"".join(lines), "header block not terminated by a blank line"
        if line.startswith(b"WARC/"):
            return b"".join(lines), "header cut short by the next record"
    header = b"".join(lines)
    m = _CONTENT_LENGTH.search(header)
    if m is None or not m.group(1).isdigit():
        return header, f"invalid Content-Length {m.group(1)[:20]!r}" if m else "no Content-Length"
    return header, int(m.group(1))


def _record_ends_here(src: _Lookahead) -> bool:
    """Whether a record can end at the current offset: the `\\r\\n\\r\\n` separator follows, or (from
    a lax writer) a shorter run of line breaks and then the next record's `WARC/` line, or the end
    of the file. Looks ahead, consumes nothing."""
    window = src.peek(512)
    rest = window.lstrip(b"\r\n")
    if window.startswith(b"\r\n\r\n") or (not rest and len(window) < 512):
        return True
    return len(rest) < len(window) and rest.startswith(b"WARC/")


def _warc_frame(src: _Lookahead, max_bytes: int) -> _WarcFrame | str:
    """The record starting at the current offset, or what is wrong with it: its Content-Length
    must end where a record can end, and its content must not hold the start of another record
    (a Content-Length too large swallows what follows). On failure the stream is left just after
    the record's first line, so that the damaged record's own bytes are scanned for the next
    record."""
    start = src.offset
    header, length = _warc_header(src)
    if isinstance(length, str):
        src.unread(header[header.find(b"\n") + 1:] if b"\n" in header else b"")
        return length
    if length > max_bytes + _WARC_HEADER_MAX:  # too long to hold: passed over, not rescanned
        if src.skip(length) < length:
            return f"Content-Length {length} runs past the end of the file"
        return _WarcFrame(start, header, None) if _record_ends_here(src) else \
            f"Content-Length {length} does not end at a record boundary"
    content = src.read(length)
    if len(content) == length and _record_ends_here(src) and not _RECORD_INSIDE.search(content):
        return _WarcFrame(start, header, content)
    src.unread(header[header.index(b"\n") + 1:] + content)
    if len(content) < length:
        return f"Content-Length {length} runs past the end of the file"
    return f"Content-Length {length} does not end at a record boundary"


def _warc_frames(f: IO[bytes], max_bytes: int) -> Iterator[_WarcFrame | _WarcDamage]:
    """Records of a (decompressed) WARC stream, framed by their Content-Length and checked: each
    must be followed by the `\\r\\n\\r\\n` separator, and the next one must start with `WARC/`.
    Where that fails, the damaged record or stretch (up to the next `WARC/1.x` line at the start
    of a line) becomes one `_WarcDamage` and reading resumes at that line. A stretch that runs
    into the end of a damaged stream (cut compressed data) is left to `_open` to report."""
    src = _Lookahead(f)
    damage: _WarcDamage | None = None
    while True:
        _skip_blank_lines(src)
        if not src.peek(1):
            break
        start = src.offset
        frame = _warc_frame(src, max_bytes)
        if isinstance(frame, _WarcFrame):
            if damage is not None:
                damage.end = start
                yield damage
                damage = None
            yield frame
            continue
        damage = damage or _WarcDamage(start, frame)
        _, m = src.scan(_WARC_LINE, overlap=16)
        if m is None:
            break
        src.read(1)  # the line break before `WARC/`
    if damage is not None and not _damaged(f):
        damage.end = src.offset
        yield damage


def _warc_records(path: str, source: str, opts: ReadOptions, cur: _Cursor, wanted: str
                  ) -> Iterator[tuple[_WarcFrame, Any, bytes | None] | dict]:
    """(frame, warcio record, payload) for each record of type `wanted` (record and payload None:
    over the record limit), and a `bad_warc_record` REJECT for each damaged record. Records of
    other types (request, metadata, revisit, warcinfo...) are not documents; they are counted in
    `cur.passed_over` by type."""
    from warcio.recordloader import ArcWarcRecordLoader

    loader = ArcWarcRecordLoader()
    with _open(path, cur) as f:
        for frame in _warc_frames(f, opts.max_record_bytes):
            cur.offset = frame.offset
            if isinstance(frame, _WarcDamage):
                yield make_reject(source, "read", f"bad_warc_record: {frame.problem} ({frame.end - frame.offset} "
                                  "bytes skipped to the next record)", None, path, frame.offset)
                continue
            m = _WARC_TYPE.search(frame.header)
            rtype = m.group(1).decode("ascii", "replace").lower() if m else "unknown"
            if rtype != wanted:
                kind = f"warc {rtype if rtype in _WARC_TYPES else 'other'}"
                cur.passed_over[kind] = cur.passed_over.get(kind, 0) + 1
                continue
            if frame.content is None:
                yield frame, None, None
                continue
            try:
                record = loader.parse_record_stream(io.BytesIO(frame.header + frame.content), known_format="warc")
                payload = record.content_stream().read(opts.max_record_bytes + 1)
            except Exception as e:  # a record warcio cannot parse is one bad record
                yield make_reject(source, "read", f"bad_warc_record: {type(e).__name__}: {e}",
                                  frame.content[:200], path, frame.offset)
                continue
            yield frame, record, payload


def _too_long(source: str, path: str, cur: _Cursor, opts: ReadOptions, snippet: str | None) -> dict:
    return make_reject(source, "read", f"record longer than {opts.max_record_bytes} bytes", snippet, path, cur.offset)


def _header_uri(header: bytes) -> str | None:
    m = re.search(rb"^WARC-Target-URI:[ \t]*(\S+)", header, re.I | re.M)
    return m.group(1).decode("utf-8", "replace") if m else None


def read_wet(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    for item in _warc_records(path, source, opts, cur, "conversion"):
        if isinstance(item, dict):
            yield item
            continue
        frame, record, data = item
        if data is None or len(data) > opts.max_record_bytes:
            yield _too_long(source, path, cur, opts, _header_uri(frame.header))
            continue
        h = record.rec_headers
        url, rid = h.get_header("WARC-Target-URI"), h.get_header("WARC-Record-ID")
        bad = _bad_utf8(data, 0)
        text = data.decode("utf-8", errors="replace")
        meta = {"warc_record_id": rid, "warc_date": h.get_header("WARC-Date"),
                "languages": h.get_header("WARC-Identified-Content-Language"), "file": path, "offset": cur.offset}
        if bad:
            meta["invalid_utf8_replaced"] = True
        yield make_doc(source, cur.id_path, rid or cur.offset, text, url, meta)


def _http_status(record) -> tuple[int, str] | None:
    """(code, status line) of a response record, or None when it has no parsable status."""
    line = (record.http_headers.get_statuscode() or "") if record.http_headers else ""
    status = record.http_headers.statusline if record.http_headers else ""
    return (int(line), status) if line.isdigit() else None


def read_warc(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    """HTML responses with a 2xx status (206 Partial Content excluded: a part of a page); other
    statuses (redirects, errors) are `http_status` rejects."""
    for item in _warc_records(path, source, opts, cur, "response"):
        if isinstance(item, dict):
            yield item
            continue
        frame, record, payload = item
        if payload is None:
            yield _too_long(source, path, cur, opts, _header_uri(frame.header))
            continue
        h = record.rec_headers
        url, rid = h.get_header("WARC-Target-URI"), h.get_header("WARC-Record-ID")
        status = _http_status(record)
        if status is None:
            yield make_reject(source, "read", "bad_warc_record: response without an HTTP status line", url, path, cur.offset)
            continue
        if not 200 <= status[0] < 300 or status[0] == 206:
            yield make_reject(source, "read", f"http_status: {status[1]}", url, path, cur.offset)
            continue
        ctype = record.http_headers.get_header("Content-Type")
        mime = (ctype or "").split(";")[0].strip().lower()
        if mime not in ("text/html", "application/xhtml+xml"):
            yield make_reject(source, "read", f"not an HTML response ({mime or 'no content-type'})", url, path, cur.offset)
            continue
        if len(payload) > opts.max_record_bytes:
            yield _too_long(source, path, cur, opts, url)
            continue
        html, charset = decode_html(payload, ctype)
        try:
            text = extract_main_text(html, url, opts.extract_timeout_s)
        except ExtractionTimeout as e:  # an adversarial page: one reject, the file goes on
            yield make_reject(source, "read", f"extraction_timeout: {e}", url, path, cur.offset)
            continue
        except Exception as e:  # the extractor fails on some malformed pages
            yield make_reject(source, "read", f"HTML extraction failed: {type(e).__name__}: {e}", url, path, cur.offset)
            continue
        if not text or not text.strip():
            yield make_reject(source, "read", "no main text in HTML", url, path, cur.offset)
            continue
        meta = {"warc_record_id": rid, "warc_date": h.get_header("WARC-Date"), "charset": charset,
                "declared_content_type": ctype, "file": path, "offset": cur.offset}
        yield make_doc(source, cur.id_path, rid or cur.offset, text, url, meta)


# -- Wikipedia -----------------------------------------------------------------------------------
_PAGE_OPEN = re.compile(rb"<page[\s>]")
_PAGE_CLOSE = re.compile(rb"</page\s*>")
_BASE = re.compile(rb"<base>\s*([^<]*?)\s*</base>")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(elem: ET.Element | None, name: str) -> ET.Element | None:
    for c in elem if elem is not None else ():
        if _local(c.tag) == name:
            return c
    return None


def _child_text(elem: ET.Element | None, name: str, default: str = "") -> str:
    c = _child(elem, name)
    return (c.text or default) if c is not None else default


def _wiki_pages(f: IO[bytes], max_bytes: int) -> Iterator[tuple[int, bytes | str]]:
    """(offset, the bytes of one `<page>...</page>` element) for each page of a dump, or
    (offset, problem) for a page that cannot be cut out (over the record limit, or not closed
    before the end of the file). Pages are cut out of the byte stream and parsed one by one, so
    malformed XML in one page costs that page only. The siteinfo before the first page comes
    first, as (-1, its first 64 KiB)."""
    src = _Lookahead(f)
    head, m = src.scan(_PAGE_OPEN, overlap=8, keep=1 << 16)
    yield -1, head
    while m is not None:
        start = src.offset
        page, closed = src.scan(_PAGE_CLOSE, overlap=16, keep=max_bytes + 1)
        if closed is None:
            if not _damaged(f):
                yield start, "malformed XML: page not closed before the end of the file"
            return
        src.read(closed.end() - closed.start())
        inner = _PAGE_OPEN.search(page, 1)
        if inner is not None:  # this page was never closed: the next one starts inside it
            src.unread(page[inner.start():] + closed.group(0))
            yield start, "malformed XML: page not closed before the next page"
        elif len(page) > max_bytes:
            yield start, f"record longer than {max_bytes} bytes"
        else:
            yield start, page + closed.group(0)
        _, m = src.scan(_PAGE_OPEN, overlap=8)


def read_wiki_xml(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    base_url = None
    with _open(path, cur) as f:
        for offset, page in _wiki_pages(f, opts.max_record_bytes):
            if offset < 0:
                m = _BASE.search(page)
                base_url = m.group(1).decode("utf-8", "replace").rsplit("/", 1)[0] + "/" if m else None
                continue
            cur.offset = offset
            if isinstance(page, str):
                yield make_reject(source, "read", page, None, path, offset)
                continue
            try:
                elem = ET.fromstring(page)
            except ET.ParseError as e:
                yield make_reject(source, "read", f"malformed XML: {e}", page, path, offset)
                continue
            yield _wiki_record(elem, source, path, opts, cur, base_url)


def _wiki_record(elem: ET.Element, source: str, path: str, opts: ReadOptions, cur: _Cursor,
                 base_url: str | None) -> dict:
    """The DOCUMENT of one parsed <page>, or its REJECT (redirect, not an article, too long)."""
    title = _child_text(elem, "title")
    ns = _child_text(elem, "ns", "0").strip()
    page_id = _child_text(elem, "id").strip()
    text = _child_text(_child(elem, "revision"), "text")
    if _child(elem, "redirect") is not None:
        return make_reject(source, "read", "wikipedia redirect", title, path, cur.offset,
                           id=doc_id(source, cur.id_path, page_id or title))
    if ns != "0":
        return make_reject(source, "read", f"wikipedia namespace {ns} (not an article)", title, path,
                           cur.offset, id=doc_id(source, cur.id_path, page_id or title))
    if len(text.encode("utf-8")) > opts.max_record_bytes:
        return make_reject(source, "read", f"record longer than {opts.max_record_bytes} bytes", title,
                           path, cur.offset)
    url = f"{base_url}{title.replace(' ', '_')}" if base_url else None
    return make_doc(source, cur.id_path, page_id or title, text, url,
                    {"title": title, "page_id": page_id, "markup": "wikitext", "file": path})


def read_wiki_parquet(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    """Row by row, one row group at a time: a row group that cannot be decoded is one REJECT (at
    its first row) and the others are still read."""
    import pyarrow.parquet as pq

    with open_url(path, "rb") as f:
        pf = pq.ParquetFile(f)
        cols = [c for c in ("id", "url", "title", "text") if c in pf.schema_arrow.names]
        if "text" not in cols:
            yield make_reject(source, "read", f"parquet file has no 'text' column (columns: {pf.schema_arrow.names})",
                              None, path, 0)
            return
        first = 0
        for group in range(pf.num_row_groups):
            rows = pf.metadata.row_group(group).num_rows
            row = first
            try:
                for batch in pf.iter_batches(batch_size=256, columns=cols, row_groups=[group]):
                    for rec in batch.to_pylist():
                        cur.offset = row
                        yield _parquet_record(rec, row, source, path, opts, cur)
                        row += 1
            except Exception as e:  # a corrupt page or column chunk
                yield make_reject(source, "read", f"unreadable row group {group} (rows {row}-{first + rows - 1}): "
                                  f"{type(e).__name__}: {e}"[:500], None, path, row)
            first += rows


def _parquet_record(rec: dict, row: int, source: str, path: str, opts: ReadOptions, cur: _Cursor) -> dict:
    text = rec.get("text")
    if not isinstance(text, str):
        return make_reject(source, "read", "null text", str(rec.get("title")), path, row)
    if len(text) > opts.max_record_bytes:
        return make_reject(source, "read", f"record longer than {opts.max_record_bytes} bytes",
                           str(rec.get("title")), path, row)
    native = rec.get("id") if rec.get("id") is not None else row
    return make_doc(source, cur.id_path, native, text, rec.get("url"),
                    {"title": rec.get("title"), "page_id": rec.get("id"), "row": row, "file": path})


# -- books ---------------------------------------------------------------------------------------
def _read_bounded(f: IO[bytes], limit: int) -> bytes | None:
    data = f.read(limit + 1)
    return None if len(data) > limit else data


def read_text(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    """One document per file (UTF-8, BOM allowed); a file cut short is a REJECT, not half a book."""
    with _open(path, cur) as f:
        data = _read_bounded(f, opts.max_record_bytes)
    if data is None:
        yield make_reject(source, "read", f"file longer than {opts.max_record_bytes} bytes", None, path, 0)
        return
    bad = _bad_utf8(data, 0)
    if bad:
        yield make_reject(source, "read", bad[0], data[max(0, bad[1] - 100): bad[1] + 100], path, bad[1])
        return
    text = data.decode("utf-8").removeprefix("\ufeff")
    name = PurePosixPath(path).name
    title = re.sub(r"(\.[A-Za-z0-9]{1,4})+$", "", name)
    yield make_doc(source, cur.id_path, 0, text, None, {"title": title, "file": path})


# -- arXiv ---------------------------------------------------------------------------------------
class ExpansionLimit(ValueError):
    """A paper that expands past a limit: a tar that unpacks to too much, .tex files too large
    together, or `\\input`s that fan out or nest too deep (decompression and inclusion bombs)."""


_MAX_INPUTS = 10_000  # \input inclusions in one paper (real papers have tens)


class _Prefixed(io.RawIOBase):
    """`head` then the rest of `f`, raising ExpansionLimit once more than `limit` bytes are read
    (tar members skipped unread must still be decompressed to get past them)."""

    def __init__(self, head: bytes, f: IO[bytes], limit: int):
        self.head, self.f, self.limit, self.read_bytes = head, f, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
        else:
            data = self.f.read(len(b))
            n = len(data)
            b[:n] = data
        self.read_bytes += n
        if self.read_bytes > self.limit:
            raise ExpansionLimit(f"the archive unpacks to more than {self.limit} bytes")
        return n


_TEX_SUFFIXES = (".tex", ".ltx", ".latex")
_DOCCLASS = re.compile(r"^[^%\n]*\\document(class|style)\b", re.M)
_BEGIN_DOC = re.compile(r"^[^%\n]*\\begin\{document\}", re.M)
_INPUT = re.compile(r"\\(input|include|subfile)\s*\{\s*([^}]+?)\s*\}|\\input\s+([^\s{}\\]+)")


def _decode_tex(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # pre-UTF-8 LaTeX sources are commonly latin-1


def find_main_tex(files: dict[str, str]) -> str | None:
    """The file with \\documentclass (prefer one with \\begin{document}, then main/ms names, then the
    largest); with no \\documentclass anywhere, the only file if there is exactly one."""
    cands = [n for n, t in files.items() if _DOCCLASS.search(t)]
    if not cands:
        return next(iter(files)) if len(files) == 1 else None

    def rank(n: str):
        stem = PurePosixPath(n).stem.lower()
        return (not _BEGIN_DOC.search(files[n]), stem not in ("main", "ms", "paper", "article"),
                -len(files[n]), n)

    return sorted(cands, key=rank)[0]


def resolve_inputs(files: dict[str, str], main: str, max_depth: int = 8, max_chars: int = 16 << 20) -> str:
    """Inline \\input / \\include / \\subfile targets (relative to the archive root or the including
    file, `.tex` optional); missing targets are left out, cycles cut.

    Raises ExpansionLimit when the inlined text would exceed `max_chars`, inputs nest deeper than
    `max_depth`, or more than _MAX_INPUTS inclusions are made: a few hundred bytes of `\\input`s
    that fan out can otherwise expand to gigabytes. The budget is charged before each file is
    inlined, so a bomb stops after at most `max_chars` of work."""
    names = {PurePosixPath(n).as_posix().removeprefix("./"): n for n in files}
    spent = {"chars": 0, "inputs": 0}

    def lookup(target: str, here: str) -> str | None:
        target = target.strip().strip('"')
        base = PurePosixPath(here).parent
        for cand in (target, f"{target}.tex", str(base / target), f"{base / target}.tex"):
            key = PurePosixPath(cand).as_posix().removeprefix("./")
            if key in names:
                return names[key]
        return None

    def charge(name: str) -> None:
        spent["chars"] += len(files[name])
        spent["inputs"] += 1
        if spent["chars"] > max_chars:
            raise ExpansionLimit(f"\\input expansion over {max_chars} characters")
        if spent["inputs"] > _MAX_INPUTS:
            raise ExpansionLimit(f"more than {_MAX_INPUTS} \\input inclusions")

    def expand(name: str, depth: int, stack: tuple[str, ...]) -> str:
        charge(name)
        text = files[name]

        def sub(m: re.Match) -> str:
            line_start = text.rfind("\n", 0, m.start()) + 1
            if "%" in re.sub(r"\\%", "", text[line_start: m.start()]):
                return m.group(0)  # commented out
            target = m.group(2) or m.group(3)
            found = lookup(target, name)
            if found is None or found in stack:
                return ""
            if depth >= max_depth:
                raise ExpansionLimit(f"\\input nested deeper than {max_depth} levels")
            return expand(found, depth + 1, stack + (found,))

        return _INPUT.sub(sub, text)

    return expand(main, 0, (main,))


def _arxiv_id(name: str) -> str:
    return re.sub(r"(\.(tar|gz|tgz|tex|zip))+$", "", PurePosixPath(name).name)


@dataclass
class _Sources:
    """What one arXiv tar holds: .tex files, gzip'd papers (a bulk tar) and rejects of members."""
    files: dict[str, str] = field(default_factory=dict)
    nested: list[tuple[str, int, bytes]] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)


def _tar_sources(f: IO[bytes], head: bytes, path: str, source: str, opts: ReadOptions, cur: _Cursor,
                 member: str | None) -> _Sources:
    """The .tex files (and, at the top level, gzip'd papers) of a tar stream, within the limits:
    each member at most max_record_bytes, the .tex files together at most max_record_bytes, the
    whole tar at most max_archive_bytes unpacked (else ExpansionLimit)."""
    where = f"{member}: " if member else ""
    out, tex_bytes, expected = _Sources(), 0, 0
    stream = io.BufferedReader(_Prefixed(head, f, opts.max_archive_bytes))
    # ignore_zeros: past a damaged member header, go on block by block to the next good header
    # (tarfile would otherwise end the archive there without a word)
    with tarfile.open(fileobj=stream, mode="r|", ignore_zeros=True) as tar:
        for m in tar:
            if member is None:
                cur.offset = m.offset
            if m.offset > expected:
                out.rejects.append(make_reject(
                    source, "read", f"bad_tar_header: {where}{m.offset - expected} bytes at offset {expected} "
                    "skipped to the next member header (a damaged header and its member)", None, path, expected))
            expected = m.offset_data + -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            low = m.name.lower()
            if not m.isfile() or not (low.endswith(_TEX_SUFFIXES) or (member is None and low.endswith(".gz"))):
                continue
            if low.rsplit("/", 1)[-1].startswith("._") or "__macosx/" in low:
                continue  # macOS AppleDouble metadata (`._main.tex`), not a source file
            if m.size > opts.max_record_bytes:
                out.rejects.append(make_reject(source, "read", f"{where}{m.name}: longer than {opts.max_record_bytes} bytes",
                                               None, path, cur.offset))
                continue
            data = tar.extractfile(m).read()
            if low.endswith(".gz"):
                out.nested.append((m.name, m.offset, data))
                continue
            tex_bytes += len(data)
            if tex_bytes > opts.max_record_bytes:
                raise ExpansionLimit(f"the .tex files hold more than {opts.max_record_bytes} bytes")
            out.files[m.name] = _decode_tex(data)
    return out


def _read_paper(f: IO[bytes], path: str, source: str, opts: ReadOptions, cur: _Cursor, arxiv_id: str,
                member: str | None = None) -> Iterator[dict]:
    """One paper from a decompressed stream: a tar of sources or a single .tex. A tar holding
    gzip'd papers instead of .tex files (arXiv's bulk source tars) yields each of those papers.
    A paper past a limit (see ExpansionLimit) is one `expansion_limit` REJECT."""
    try:
        yield from _paper(f, path, source, opts, cur, arxiv_id, member)
    except ExpansionLimit as e:
        where = f"{member}: " if member else ""
        yield make_reject(source, "read", f"expansion_limit: {where}{e}", None, path, cur.offset if member else 0)


def _paper(f: IO[bytes], path: str, source: str, opts: ReadOptions, cur: _Cursor, arxiv_id: str,
           member: str | None) -> Iterator[dict]:
    where = f"{member}: " if member else ""
    head = f.read(512)
    if len(head) >= 262 and head[257:262] == b"ustar":
        got = _tar_sources(f, head, path, source, opts, cur, member)
        yield from got.rejects
        files = got.files
        if not files and got.nested:
            yield from _nested_papers(got.nested, path, source, opts, cur)
            return
    else:
        rest = _read_bounded(f, max(0, opts.max_record_bytes - len(head)))
        if rest is None:
            yield make_reject(source, "read", f"{where}file longer than {opts.max_record_bytes} bytes", None, path, cur.offset)
            return
        data = head + rest
        if b"\x00" in data[:8192] or data.startswith(b"%PDF"):
            yield make_reject(source, "read", f"{where}not a tar archive or a .tex file (binary content)",
                              data[:200], path, cur.offset)
            return
        files = {f"{arxiv_id}.tex": _decode_tex(data)}
    if not files:
        yield make_reject(source, "read", f"{where}archive has no .tex file", None, path, cur.offset if member else 0)
        return
    main = find_main_tex(files)
    if main is None:
        yield make_reject(source, "read", f"{where}no main .tex file (no \\documentclass in {sorted(files)[:5]})",
                          None, path, cur.offset if member else 0)
        return
    text = resolve_inputs(files, main, opts.max_input_depth, opts.max_record_bytes)
    meta = {"arxiv_id": arxiv_id, "main_file": main, "tex_files": len(files), "file": path}
    if member:
        meta.update(member=member, offset=cur.offset)
    yield make_doc(source, cur.id_path, arxiv_id, text, f"https://arxiv.org/abs/{arxiv_id}", meta)


def _nested_papers(nested: list[tuple[str, int, bytes]], path: str, source: str, opts: ReadOptions,
                   cur: _Cursor) -> Iterator[dict]:
    """The gzip'd papers of a bulk tar, each on its own: one that cannot be read is one REJECT."""
    for name, offset, data in nested:
        cur.offset = offset
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as g:
                yield from _read_paper(g, path, source, opts, cur, _arxiv_id(name), member=name)
        except Exception as e:  # corrupt gzip (zlib.error, OSError), broken tar...
            yield make_reject(source, "read", f"{name}: unreadable: {type(e).__name__}: {e}"[:500], None, path, offset)


def read_arxiv(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    """One paper per file (a gzip'd tar of sources or a single gzip'd .tex), or a bulk tar of
    gzip'd papers."""
    with _open(path, cur) as f:
        yield from _read_paper(f, path, source, opts, cur, _arxiv_id(path))


# -- entry point -----------------------------------------------------------------------------------
READERS: dict[str, Callable[[str, str, ReadOptions, _Cursor], Iterator[dict]]] = {
    "warc": read_warc, "wet": read_wet, "c4": read_c4, "wiki_xml": read_wiki_xml,
    "wiki_parquet": read_wiki_parquet, "pile": read_pile, "text": read_text, "arxiv": read_arxiv,
    "arxiv_jsonl": read_arxiv_jsonl,
}


def read_file(path: str, fmt: str, source: str, opts: ReadOptions = ReadOptions(),
              id_path: str | None = None, passed_over: dict[str, int] | None = None) -> Iterator[dict]:
    """Documents and REJECTs of one raw file; never raises for bad content (see module doc).
    `id_path`: the name the file's records are identified by (default: `path`); giving the path
    relative to the configured input directory keeps ids the same wherever the inputs live.
    `passed_over`: if given, receives the counts of records that are neither documents nor
    rejects, by kind ("warc request", "warc metadata", "pile other subsets"...)."""
    if fmt not in READERS:
        raise ValueError(f"unknown text format {fmt!r} (formats: {', '.join(READERS)})")
    cur = _Cursor(id_path=id_path or path)
    for rec in _read_file(path, fmt, source, opts, cur):
        if is_reject(rec) and id_path and rec["id"] == make_reject(
                source, rec["stage"], rec["reason"], None, path, rec["offset"])["id"]:
            rec["id"] = make_reject(source, rec["stage"], rec["reason"], None, id_path, rec["offset"])["id"]
        yield rec
    if passed_over is not None:
        for kind, n in cur.passed_over.items():
            passed_over[kind] = passed_over.get(kind, 0) + n


def _read_file(path: str, fmt: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    try:
        fs, p = fs_and_path(path)
        if fs.size(p) == 0:
            yield make_reject(source, "read", "empty file (0 bytes)", None, path, 0)
            return
        for rec in READERS[fmt](path, source, opts, cur):
            if not is_reject(rec) and not rec["text"].strip():
                yield make_reject(source, "read", "empty document", None, path,
                                  json.loads(rec["metadata"]).get("offset", cur.offset), id=rec["id"])
                continue
            yield rec
    except Exception as e:  # a file that breaks part-way: keep what was read, record where it broke
        offset = cur.offset
        if isinstance(e, _Damaged):
            offset, e = e.offset, e.cause
        elif cur.stream is not None and cur.stream.error is not None:
            # the reader stumbled over the end of a damaged stream: report the damage itself
            offset, e = cur.stream.pos, cur.stream.error
        reason = f"unreadable from here on: {type(e).__name__}: {e}"
        yield make_reject(source, "read", reason[:500], None, path, offset)


def read_files(paths: Iterable[str], fmt: str, source: str, opts: ReadOptions = ReadOptions()) -> Iterator[dict]:
    for path in paths:
        yield from read_file(path, fmt, source, opts)
