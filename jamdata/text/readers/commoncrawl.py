"""Common Crawl readers: WARC (HTML responses, main text extracted) and WET (conversion records),
framed by Content-Length and resynchronised at the next `WARC/1.x` line after damage."""

from __future__ import annotations

import codecs
import io
import re
from dataclasses import dataclass
from typing import IO, Any, Iterator

from jamdata.text.extract import ExtractionTimeout
from jamdata.text.readers.common import (
    ReadOptions,
    _bad_utf8,
    _Cursor,
    _damaged,
    _Lookahead,
    _open,
    make_doc,
    make_reject,
)


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.I)


# Browsers decode these labels as the superset encoding (WHATWG Encoding Standard); pages rely on it.
_SUPERSET = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "latin_1": "cp1252",
    "iso8859_1": "cp1252",
    "ascii": "cp1252",
    "iso8859_9": "cp1254",
    "tis_620": "cp874",
    "shift_jis": "cp932",
    "euc_kr": "cp949",
    "big5": "big5hkscs",
}


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
    hm = _HEADER_CHARSET.search(content_type or "")
    header = _charset(hm.group(1)) if hm else None
    mm = _META_CHARSET.search(payload[:8192])
    meta = _charset(mm.group(1).decode("ascii", "replace")) if mm else None
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
        src.unread(header[header.find(b"\n") + 1 :] if b"\n" in header else b"")
        return length
    if length > max_bytes + _WARC_HEADER_MAX:  # too long to hold: passed over, not rescanned
        if src.skip(length) < length:
            return f"Content-Length {length} runs past the end of the file"
        return (
            _WarcFrame(start, header, None)
            if _record_ends_here(src)
            else f"Content-Length {length} does not end at a record boundary"
        )
    content = src.read(length)
    if len(content) == length and _record_ends_here(src) and not _RECORD_INSIDE.search(content):
        return _WarcFrame(start, header, content)
    src.unread(header[header.index(b"\n") + 1 :] + content)
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


def _warc_records(
    path: str, source: str, opts: ReadOptions, cur: _Cursor, wanted: str
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
                yield make_reject(
                    source,
                    "read",
                    f"bad_warc_record: {frame.problem} ({frame.end - frame.offset} bytes skipped to the next record)",
                    None,
                    path,
                    frame.offset,
                )
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
                yield make_reject(
                    source, "read", f"bad_warc_record: {type(e).__name__}: {e}", frame.content[:200], path, frame.offset
                )
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
        meta = {
            "warc_record_id": rid,
            "warc_date": h.get_header("WARC-Date"),
            "languages": h.get_header("WARC-Identified-Content-Language"),
            "file": path,
            "offset": cur.offset,
        }
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
            yield make_reject(
                source, "read", "bad_warc_record: response without an HTTP status line", url, path, cur.offset
            )
            continue
        if not 200 <= status[0] < 300 or status[0] == 206:
            yield make_reject(source, "read", f"http_status: {status[1]}", url, path, cur.offset)
            continue
        ctype = record.http_headers.get_header("Content-Type")
        mime = (ctype or "").split(";")[0].strip().lower()
        if mime not in ("text/html", "application/xhtml+xml"):
            yield make_reject(
                source, "read", f"not an HTML response ({mime or 'no content-type'})", url, path, cur.offset
            )
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
        meta = {
            "warc_record_id": rid,
            "warc_date": h.get_header("WARC-Date"),
            "charset": charset,
            "declared_content_type": ctype,
            "file": path,
            "offset": cur.offset,
        }
        yield make_doc(source, cur.id_path, rid or cur.offset, text, url, meta)
