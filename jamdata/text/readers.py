"""Streaming readers for the raw text formats; each yields DOCUMENT dicts and REJECT dicts.

`read_file(path, fmt, source)` is the entry point. Bad input never raises out of it: a broken record
becomes a REJECT (stage "read") with the file and the byte offset in the decompressed stream (WARC:
the record offset; parquet: the row), and a file that breaks part-way (truncated gzip/bz2/zstd,
malformed XML) yields a REJECT at the point where reading stopped, after everything read before it.

Document ids are `<source>/<16 hex digits>` from a stable hash of the file path and the record's
native id (WARC-Record-ID, page id, arXiv id...) or its index, so they are the same on every run.
"""
from __future__ import annotations

import codecs
import gzip
import io
import json
import logging
import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any, Callable, Iterable, Iterator

import fsspec

from jamdata.io import open_input, stable_hash

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


@dataclass
class _Cursor:
    """Where the reader is, so a failure can be reported at the right offset; `id_path` is the
    file's name as it enters document ids (stable wherever the inputs live)."""
    offset: int = 0
    records: int = 0
    id_path: str = ""


def doc_id(source: str, path: str, native: Any) -> str:
    return f"{source}/{stable_hash(str(path), str(native)):016x}"


def make_doc(source: str, path: str, native: Any, text: str, url: str | None = None,
             meta: dict | None = None) -> dict:
    return {
        "id": doc_id(source, path, native), "source": source, "text": text, "url": url or None,
        "metadata": json.dumps(meta or {}, sort_keys=True, ensure_ascii=False, default=str),
        "language": None, "language_score": None, "quality_score": None,
    }


def make_reject(source: str, stage: str, reason: str, snippet: str | bytes | None = None,
                file: str | None = None, offset: int | None = None, id: str | None = None,
                snippet_chars: int = 200) -> dict:
    if isinstance(snippet, bytes):
        snippet = snippet[: snippet_chars * 4].decode("utf-8", "replace")
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
        return f"invalid UTF-8 (byte 0x{data[e.start]:02x})", base + e.start


# -- lines ---------------------------------------------------------------------------------------
def iter_lines(stream: IO[bytes], max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(offset, line) pairs; a line longer than max_bytes is skipped in bounded memory and
    yielded as (offset, None)."""
    off = 0
    while True:
        line = stream.readline(max_bytes + 1)
        if not line:
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
    with open_input(path) as f:
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


def extract_main_text(html: str, url: str | None = None) -> str | None:
    """Main text of an HTML page (boilerplate, navigation, comments dropped)."""
    import trafilatura

    logging.getLogger("trafilatura").setLevel(logging.ERROR)
    return trafilatura.extract(html, url=url, include_comments=False, include_tables=False,
                               deduplicate=False, favor_precision=False)


class _OneReadAtATime:
    """Hands warcio at most one decompressed chunk per read and remembers a failure.

    warcio reads large blocks and treats EOFError as the end of the archive, so a truncated
    .warc.gz would otherwise lose the complete records in the last block and end silently."""

    def __init__(self, f: IO[bytes]):
        self.f, self.error = f, None

    def read(self, n: int = -1) -> bytes:
        try:
            return self.f.read1(n) if n and n > 0 and hasattr(self.f, "read1") else self.f.read(n)
        except (EOFError, OSError, ValueError) as e:
            self.error = e
            raise EOFError(str(e)) from None


def _warc_records(path: str, cur: _Cursor):
    from warcio.archiveiterator import ArchiveIterator

    with open_input(path) as f:
        reader = _OneReadAtATime(f)
        it = ArchiveIterator(reader, check_digests=False)
        for record in it:
            cur.offset = it.offset
            yield record
        if reader.error is not None:
            raise EOFError(f"truncated or corrupt compressed data ({reader.error})")


def read_wet(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    for record in _warc_records(path, cur):
        if record.rec_type != "conversion":
            continue
        h = record.rec_headers
        url, rid = h.get_header("WARC-Target-URI"), h.get_header("WARC-Record-ID")
        data = record.content_stream().read(opts.max_record_bytes + 1)
        if len(data) > opts.max_record_bytes:
            yield make_reject(source, "read", f"record longer than {opts.max_record_bytes} bytes", url, path, cur.offset)
            continue
        bad = _bad_utf8(data, 0)
        text = data.decode("utf-8", errors="replace")
        meta = {"warc_record_id": rid, "warc_date": h.get_header("WARC-Date"),
                "languages": h.get_header("WARC-Identified-Content-Language"), "file": path, "offset": cur.offset}
        if bad:
            meta["invalid_utf8_replaced"] = True
        yield make_doc(source, cur.id_path, rid or cur.offset, text, url, meta)


def read_warc(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    for record in _warc_records(path, cur):
        if record.rec_type != "response":
            continue
        h = record.rec_headers
        url, rid = h.get_header("WARC-Target-URI"), h.get_header("WARC-Record-ID")
        ctype = record.http_headers.get_header("Content-Type") if record.http_headers else None
        mime = (ctype or "").split(";")[0].strip().lower()
        if mime not in ("text/html", "application/xhtml+xml"):
            yield make_reject(source, "read", f"not an HTML response ({mime or 'no content-type'})", url, path, cur.offset)
            continue
        payload = record.content_stream().read(opts.max_record_bytes + 1)
        if len(payload) > opts.max_record_bytes:
            yield make_reject(source, "read", f"record longer than {opts.max_record_bytes} bytes", url, path, cur.offset)
            continue
        html, charset = decode_html(payload, ctype)
        try:
            text = extract_main_text(html, url)
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
class _CountingReader(io.RawIOBase):
    def __init__(self, f: IO[bytes]):
        self.f, self.pos = f, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.f.read(len(b))
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    for c in elem:
        if _local(c.tag) == name:
            return c
    return None


def read_wiki_xml(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    base_url = None
    with open_input(path) as f:
        counting = _CountingReader(f)
        root = None
        for event, elem in ET.iterparse(counting, events=("start", "end")):
            if root is None:
                root = elem
            if event != "end":
                continue
            tag = _local(elem.tag)
            if tag == "base" and base_url is None:
                base_url = (elem.text or "").rsplit("/", 1)[0] + "/"
                continue
            if tag != "page":
                continue
            cur.offset = counting.pos  # decompressed bytes read so far (a block after the page)
            title = (_child(elem, "title").text or "") if _child(elem, "title") is not None else ""
            ns = (_child(elem, "ns").text or "0").strip() if _child(elem, "ns") is not None else "0"
            page_id = (_child(elem, "id").text or "").strip() if _child(elem, "id") is not None else ""
            rev = _child(elem, "revision")
            text_el = _child(rev, "text") if rev is not None else None
            text = (text_el.text or "") if text_el is not None else ""
            redirect = _child(elem, "redirect") is not None
            root.clear()
            if redirect:
                yield make_reject(source, "read", "wikipedia redirect", title, path, cur.offset,
                                  id=doc_id(source, cur.id_path, page_id or title))
                continue
            if ns != "0":
                yield make_reject(source, "read", f"wikipedia namespace {ns} (not an article)", title, path,
                                  cur.offset, id=doc_id(source, cur.id_path, page_id or title))
                continue
            if len(text.encode("utf-8")) > opts.max_record_bytes:
                yield make_reject(source, "read", f"record longer than {opts.max_record_bytes} bytes", title,
                                  path, cur.offset)
                continue
            url = f"{base_url}{title.replace(' ', '_')}" if base_url else None
            yield make_doc(source, cur.id_path, page_id or title, text, url,
                           {"title": title, "page_id": page_id, "markup": "wikitext", "file": path})


def read_wiki_parquet(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        cols = [c for c in ("id", "url", "title", "text") if c in pf.schema_arrow.names]
        if "text" not in cols:
            yield make_reject(source, "read", f"parquet file has no 'text' column (columns: {pf.schema_arrow.names})",
                              None, path, 0)
            return
        row = 0
        for batch in pf.iter_batches(batch_size=256, columns=cols):
            for rec in batch.to_pylist():
                cur.offset = row
                text = rec.get("text")
                if not isinstance(text, str):
                    yield make_reject(source, "read", "null text", str(rec.get("title")), path, row)
                elif len(text) > opts.max_record_bytes:
                    yield make_reject(source, "read", f"record longer than {opts.max_record_bytes} bytes",
                                      str(rec.get("title")), path, row)
                else:
                    native = rec.get("id") if rec.get("id") is not None else row
                    yield make_doc(source, cur.id_path, native, text, rec.get("url"),
                                   {"title": rec.get("title"), "page_id": rec.get("id"), "row": row, "file": path})
                row += 1


# -- books ---------------------------------------------------------------------------------------
def _read_bounded(f: IO[bytes], limit: int) -> bytes | None:
    data = f.read(limit + 1)
    return None if len(data) > limit else data


def read_text(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    """One document per file (UTF-8, BOM allowed)."""
    with open_input(path) as f:
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
class _Prefixed(io.RawIOBase):
    def __init__(self, head: bytes, f: IO[bytes]):
        self.head, self.f = head, f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.f.read(len(b))
        b[: len(data)] = data
        return len(data)


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


def resolve_inputs(files: dict[str, str], main: str, max_depth: int = 8) -> str:
    """Inline \\input / \\include / \\subfile targets (relative to the archive root or the including
    file, `.tex` optional); missing targets are left out, cycles cut."""
    names = {PurePosixPath(n).as_posix().removeprefix("./"): n for n in files}

    def lookup(target: str, here: str) -> str | None:
        target = target.strip().strip('"')
        base = PurePosixPath(here).parent
        for cand in (target, f"{target}.tex", str(base / target), f"{base / target}.tex"):
            key = PurePosixPath(cand).as_posix().removeprefix("./")
            if key in names:
                return names[key]
        return None

    def expand(name: str, depth: int, stack: tuple[str, ...]) -> str:
        text = files[name]

        def sub(m: re.Match) -> str:
            line_start = text.rfind("\n", 0, m.start()) + 1
            if "%" in re.sub(r"\\%", "", text[line_start: m.start()]):
                return m.group(0)  # commented out
            target = m.group(2) or m.group(3)
            found = lookup(target, name)
            if found is None or found in stack or depth >= max_depth:
                return ""
            return expand(found, depth + 1, stack + (found,))

        return _INPUT.sub(sub, text)

    return expand(main, 0, (main,))


def _arxiv_id(name: str) -> str:
    return re.sub(r"(\.(tar|gz|tgz|tex|zip))+$", "", PurePosixPath(name).name)


def _read_paper(f: IO[bytes], path: str, source: str, opts: ReadOptions, cur: _Cursor, arxiv_id: str,
                member: str | None = None) -> Iterator[dict]:
    """One paper from a decompressed stream: a tar of sources or a single .tex. A tar holding
    gzip'd papers instead of .tex files (arXiv's bulk source tars) yields each of those papers."""
    where = f"{member}: " if member else ""
    head = f.read(512)
    nested: list[tuple[str, int, bytes]] = []
    if len(head) >= 262 and head[257:262] == b"ustar":
        files: dict[str, str] = {}
        with tarfile.open(fileobj=io.BufferedReader(_Prefixed(head, f)), mode="r|") as tar:
            for m in tar:
                cur.offset = m.offset
                low = m.name.lower()
                if not m.isfile() or not (low.endswith(_TEX_SUFFIXES) or (member is None and low.endswith(".gz"))):
                    continue
                if m.size > opts.max_record_bytes:
                    yield make_reject(source, "read", f"{where}{m.name}: longer than {opts.max_record_bytes} bytes",
                                      None, path, m.offset)
                    continue
                data = tar.extractfile(m).read()
                if low.endswith(".gz"):
                    nested.append((m.name, m.offset, data))
                else:
                    files[m.name] = _decode_tex(data)
        if not files and nested:
            for name, offset, data in nested:
                cur.offset = offset
                try:
                    with gzip.GzipFile(fileobj=io.BytesIO(data)) as g:
                        yield from _read_paper(g, path, source, opts, cur, _arxiv_id(name), member=name)
                except (OSError, EOFError, tarfile.TarError) as e:
                    yield make_reject(source, "read", f"{name}: unreadable: {type(e).__name__}: {e}", None, path, offset)
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
    text = resolve_inputs(files, main)
    meta = {"arxiv_id": arxiv_id, "main_file": main, "tex_files": len(files), "file": path}
    if member:
        meta.update(member=member, offset=cur.offset)
    yield make_doc(source, cur.id_path, arxiv_id, text, f"https://arxiv.org/abs/{arxiv_id}", meta)


def read_arxiv(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    """One paper per file (a gzip'd tar of sources or a single gzip'd .tex), or a bulk tar of
    gzip'd papers."""
    with open_input(path) as f:
        yield from _read_paper(f, path, source, opts, cur, _arxiv_id(path))


# -- entry point -----------------------------------------------------------------------------------
READERS: dict[str, Callable[[str, str, ReadOptions, _Cursor], Iterator[dict]]] = {
    "warc": read_warc, "wet": read_wet, "c4": read_c4, "wiki_xml": read_wiki_xml,
    "wiki_parquet": read_wiki_parquet, "pile": read_pile, "text": read_text, "arxiv": read_arxiv,
    "arxiv_jsonl": read_arxiv_jsonl,
}


def read_file(path: str, fmt: str, source: str, opts: ReadOptions = ReadOptions(),
              id_path: str | None = None) -> Iterator[dict]:
    """Documents and REJECTs of one raw file; never raises for bad content (see module doc).
    `id_path`: the name the file's records are identified by (default: `path`); giving the path
    relative to the configured input directory keeps ids the same wherever the inputs live."""
    if fmt not in READERS:
        raise ValueError(f"unknown text format {fmt!r} (formats: {', '.join(READERS)})")
    for rec in _read_file(path, fmt, source, opts, _Cursor(id_path=id_path or path)):
        if is_reject(rec) and id_path and rec["id"] == make_reject(
                source, rec["stage"], rec["reason"], None, path, rec["offset"])["id"]:
            rec["id"] = make_reject(source, rec["stage"], rec["reason"], None, id_path, rec["offset"])["id"]
        yield rec


def _read_file(path: str, fmt: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    try:
        fs, p = fsspec.core.url_to_fs(path)
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
        reason = f"unreadable from here on: {type(e).__name__}: {e}"
        yield make_reject(source, "read", reason[:500], None, path, cur.offset)


def read_files(paths: Iterable[str], fmt: str, source: str, opts: ReadOptions = ReadOptions()) -> Iterator[dict]:
    for path in paths:
        yield from read_file(path, fmt, source, opts)
