"""Wikipedia readers: the pages-articles XML dump (pages cut out of the byte stream and parsed one
by one) and parquet exports (row group by row group)."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from typing import IO, Iterator

from jamdata.io import open_url
from jamdata.text.readers.common import (
    ReadOptions,
    _Cursor,
    _damaged,
    _Guarded,
    _Lookahead,
    _open,
    doc_id,
    is_reject,
    make_doc,
    make_reject,
    reject_id,
)
from jamdata.text.readers.splits import Bz2Stream


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
            src.unread(page[inner.start() :] + closed.group(0))
            yield start, "malformed XML: page not closed before the next page"
        elif len(page) > max_bytes:
            yield start, f"record longer than {max_bytes} bytes"
        else:
            yield start, page + closed.group(0)
        _, m = src.scan(_PAGE_OPEN, overlap=8)


def _base_url(head: bytes) -> str | None:
    m = _BASE.search(head)
    return m.group(1).decode("utf-8", "replace").rsplit("/", 1)[0] + "/" if m else None


def read_wiki_xml(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    if cur.split is not None:
        yield from read_wiki_streams(path, source, opts, cur)
        return
    base_url = None
    with _open(path, cur) as f:
        for offset, page in _wiki_pages(f, opts.max_record_bytes):
            if offset < 0:
                base_url = _base_url(page) if isinstance(page, bytes) else None
                continue
            cur.offset = offset
            yield _page_record(page, source, path, opts, cur, base_url)


def _page_record(
    page: bytes | str, source: str, path: str, opts: ReadOptions, cur: _Cursor, base_url: str | None
) -> dict:
    if isinstance(page, str):
        return make_reject(source, "read", page, None, path, cur.offset)
    try:
        elem = ET.fromstring(page)
    except ET.ParseError as e:
        return make_reject(source, "read", f"malformed XML: {e}", page, path, cur.offset)
    return _wiki_record(elem, source, path, opts, cur, base_url)


def read_wiki_streams(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    """The pages of the bz2 streams that begin in `cur.split` of a multistream dump, stream by
    stream. A page is reported at its stream's offset in the file (what the index lists, where
    `dd skip=… | bzcat` finds it); a REJECT's id also names the page's place in its stream, so two
    rejects of one stream stay apart. A damaged stream ends its part with one REJECT."""
    split, base_url = cur.split, None
    if split.start > 0:
        with open_url(path, "rb") as raw:
            base_url = _stream_head(Bz2Stream(raw))
    with open_url(path, "rb") as raw:
        raw.seek(split.start)
        pos, pending = split.start, b""
        while pos < split.end:
            head = pending if len(pending) >= 3 else pending + raw.read(3 - len(pending))
            if not head:
                return
            cur.offset = pos
            if not head.startswith(b"BZh"):
                yield make_reject(
                    source,
                    "read",
                    f"no bz2 stream at offset {pos} (multistream index and dump do not match)",
                    None,
                    path,
                    pos,
                )
                return
            stream = Bz2Stream(raw, head)
            guard = _Guarded(stream)
            for local, page in _wiki_pages(io.BufferedReader(guard, 1 << 16), opts.max_record_bytes):
                if local < 0:
                    base_url = base_url if pos > 0 or not isinstance(page, bytes) else _base_url(page)
                    continue
                rec = _page_record(page, source, path, opts, cur, base_url)
                if is_reject(rec) and rec["id"] == make_reject(source, "read", rec["reason"], None, path, pos)["id"]:
                    rec["id"] = reject_id(source, "read", rec["reason"], cur.id_path, f"{pos}+{local}")
                yield rec
            if guard.error is not None:
                yield make_reject(
                    source,
                    "read",
                    f"unreadable from here on: {type(guard.error).__name__}: {guard.error}"[:500],
                    None,
                    path,
                    pos,
                )
                return
            while stream.read():  # to its end, so that its size is known
                pass
            pos, pending = pos + stream.size, stream.next_raw


def _stream_head(stream: Bz2Stream, limit: int = 1 << 20) -> str | None:
    """The base URL in the siteinfo of a dump's first stream."""
    head = b""
    while len(head) < limit and (chunk := stream.read()):
        head += chunk
        if b"</siteinfo>" in head:
            break
    return _base_url(head)


def _wiki_record(
    elem: ET.Element, source: str, path: str, opts: ReadOptions, cur: _Cursor, base_url: str | None
) -> dict:
    """The DOCUMENT of one parsed <page>, or its REJECT (redirect, not an article, too long)."""
    title = _child_text(elem, "title")
    ns = _child_text(elem, "ns", "0").strip()
    page_id = _child_text(elem, "id").strip()
    text = _child_text(_child(elem, "revision"), "text")
    if _child(elem, "redirect") is not None:
        return make_reject(
            source,
            "read",
            "wikipedia redirect",
            title,
            path,
            cur.offset,
            id=doc_id(source, cur.id_path, page_id or title),
        )
    if ns != "0":
        return make_reject(
            source,
            "read",
            f"wikipedia namespace {ns} (not an article)",
            title,
            path,
            cur.offset,
            id=doc_id(source, cur.id_path, page_id or title),
        )
    if len(text.encode("utf-8")) > opts.max_record_bytes:
        return make_reject(source, "read", f"record longer than {opts.max_record_bytes} bytes", title, path, cur.offset)
    url = f"{base_url}{title.replace(' ', '_')}" if base_url else None
    return make_doc(
        source,
        cur.id_path,
        page_id or title,
        text,
        url,
        {"title": title, "page_id": page_id, "markup": "wikitext", "file": path},
    )


def read_wiki_parquet(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    """Row by row, one row group at a time: a row group that cannot be decoded is one REJECT (at
    its first row) and the others are still read."""
    import pyarrow.parquet as pq

    with open_url(path, "rb") as f:
        pf = pq.ParquetFile(f)
        cols = [c for c in ("id", "url", "title", "text") if c in pf.schema_arrow.names]
        if "text" not in cols:
            yield make_reject(
                source, "read", f"parquet file has no 'text' column (columns: {pf.schema_arrow.names})", None, path, 0
            )
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
                yield make_reject(
                    source,
                    "read",
                    f"unreadable row group {group} (rows {row}-{first + rows - 1}): {type(e).__name__}: {e}"[:500],
                    None,
                    path,
                    row,
                )
            first += rows


def _parquet_record(rec: dict, row: int, source: str, path: str, opts: ReadOptions, cur: _Cursor) -> dict:
    text = rec.get("text")
    if not isinstance(text, str):
        return make_reject(source, "read", "null text", str(rec.get("title")), path, row)
    if len(text) > opts.max_record_bytes:
        return make_reject(
            source, "read", f"record longer than {opts.max_record_bytes} bytes", str(rec.get("title")), path, row
        )
    native = rec.get("id") if rec.get("id") is not None else row
    return make_doc(
        source,
        cur.id_path,
        native,
        text,
        rec.get("url"),
        {"title": rec.get("title"), "page_id": rec.get("id"), "row": row, "file": path},
    )
