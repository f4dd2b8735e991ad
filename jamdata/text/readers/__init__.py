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

from typing import Callable, Iterable, Iterator

from jamdata.io import fs_and_path
from jamdata.text.readers.arxiv import ExpansionLimit, find_main_tex, read_arxiv, resolve_inputs
from jamdata.text.readers.books import read_text
from jamdata.text.readers.commoncrawl import decode_html, extract_main_text, read_warc, read_wet
from jamdata.text.readers.common import (
    ReadOptions,
    _Cursor,
    _Damaged,
    doc_id,
    is_reject,
    iter_lines,
    make_doc,
    make_reject,
    scrub_surrogates,
)
from jamdata.text.readers.splits import Split
from jamdata.text.readers.jsonl import read_arxiv_jsonl, read_c4, read_pile
from jamdata.text.readers.wikipedia import read_wiki_parquet, read_wiki_xml

__all__ = [
    "FORMATS_DOC",
    "READERS",
    "ExpansionLimit",
    "ReadOptions",
    "decode_html",
    "doc_id",
    "extract_main_text",
    "find_main_tex",
    "is_reject",
    "iter_lines",
    "make_doc",
    "make_reject",
    "read_file",
    "read_files",
    "resolve_inputs",
    "scrub_surrogates",
    "Split",
]

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


# -- entry point -----------------------------------------------------------------------------------
READERS: dict[str, Callable[[str, str, ReadOptions, _Cursor], Iterator[dict]]] = {
    "warc": read_warc,
    "wet": read_wet,
    "c4": read_c4,
    "wiki_xml": read_wiki_xml,
    "wiki_parquet": read_wiki_parquet,
    "pile": read_pile,
    "text": read_text,
    "arxiv": read_arxiv,
    "arxiv_jsonl": read_arxiv_jsonl,
}


def read_file(
    path: str,
    fmt: str,
    source: str,
    opts: ReadOptions = ReadOptions(),
    id_path: str | None = None,
    passed_over: dict[str, int] | None = None,
    split: Split | None = None,
) -> Iterator[dict]:
    """Documents and REJECTs of one raw file; never raises for bad content (see module doc).
    `id_path`: the name the file's records are identified by (default: `path`); giving the path
    relative to the configured input directory keeps ids the same wherever the inputs live.
    `passed_over`: if given, receives the counts of records that are neither documents nor
    rejects, by kind ("warc request", "warc metadata", "pile other subsets"...).
    `split`: read only that part of the file (readers/splits.py); the parts of a file together
    give the records of the whole, with the same ids and offsets."""
    if fmt not in READERS:
        raise ValueError(f"unknown text format {fmt!r} (formats: {', '.join(READERS)})")
    cur = _Cursor(id_path=id_path or path, split=split)
    for rec in _read_file(path, fmt, source, opts, cur):
        if (
            is_reject(rec)
            and id_path
            and rec["id"] == make_reject(source, rec["stage"], rec["reason"], None, path, rec["offset"])["id"]
        ):
            rec["id"] = make_reject(source, rec["stage"], rec["reason"], None, id_path, rec["offset"])["id"]
        yield rec
    if passed_over is not None:
        for kind, n in cur.passed_over.items():
            passed_over[kind] = passed_over.get(kind, 0) + n


def _read_file(path: str, fmt: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    try:
        fs, p = fs_and_path(path)
        if cur.split is None and fs.size(p) == 0:
            yield make_reject(source, "read", "empty file (0 bytes)", None, path, 0)
            return
        for rec in READERS[fmt](path, source, opts, cur):
            if not is_reject(rec) and not rec["text"].strip():
                yield make_reject(
                    source,
                    "read",
                    "empty document",
                    None,
                    path,
                    rec["metadata"].get("offset", cur.offset),
                    id=rec["id"],
                )
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
