"""JSON-lines readers: C4 / dolma, The Pile, RedPajama arXiv."""

from __future__ import annotations

import contextlib
import itertools
import json
from typing import Callable, Iterator

from jamdata.text.readers.common import (
    ReadOptions,
    _bad_utf8,
    _Cursor,
    _open,
    _open_at,
    iter_lines,
    make_doc,
    make_reject,
)


@contextlib.contextmanager
def _lines(path: str, opts: ReadOptions, cur: _Cursor) -> Iterator[Iterator[tuple[int, tuple[int, bytes | None]]]]:
    """(line number, (offset, line)) of the whole file, or of the lines that begin in the part
    `cur.split` of an uncompressed file (readers/splits.py): the same numbers and offsets."""
    split = cur.split
    if split is None:
        with _open(path, cur) as f:
            yield enumerate(iter_lines(f, opts.max_record_bytes))
        return
    with _open_at(path, cur, split.start) as (f, pos):
        lines = itertools.takewhile(lambda ol: ol[0] < split.end, iter_lines(f, opts.max_record_bytes, pos))
        yield enumerate(lines, split.first_line)


def _json_lines(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[tuple[int, int, dict] | dict]:
    """(index, offset, object) per line, or a REJECT dict for a line that is not a JSON object."""
    with _lines(path, opts, cur) as numbered:
        for idx, (off, line) in numbered:
            cur.offset, cur.records = off, idx
            if line is None:
                yield make_reject(source, "read", f"record longer than {opts.max_record_bytes} bytes", None, path, off)
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


def _json_texts(
    path: str, source: str, opts: ReadOptions, cur: _Cursor, keep: Callable[[dict], bool] = lambda obj: True
) -> Iterator[tuple[int, int, dict, str] | dict]:
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
        m = obj.get("metadata")
        inner = m if isinstance(m, dict) else {}
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
    m = obj.get("meta")
    return m if isinstance(m, dict) else {}


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
        yield make_doc(
            source,
            cur.id_path,
            native,
            text,
            meta.get("url"),
            {**{k: v for k, v in meta.items() if k != "url"}, "file": path, "offset": off},
        )
