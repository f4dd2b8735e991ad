"""Plain-text books: one document per file."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Iterator

from jamdata.text.readers.common import ReadOptions, _bad_utf8, _Cursor, _open, _read_bounded, make_doc, make_reject


def read_text(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    """One document per file (UTF-8, BOM allowed); a file cut short is a REJECT, not half a book."""
    with _open(path, cur) as f:
        data = _read_bounded(f, opts.max_record_bytes)
    if data is None:
        yield make_reject(source, "read", f"file longer than {opts.max_record_bytes} bytes", None, path, 0)
        return
    bad = _bad_utf8(data, 0)
    if bad:
        yield make_reject(source, "read", bad[0], data[max(0, bad[1] - 100) : bad[1] + 100], path, bad[1])
        return
    text = data.decode("utf-8").removeprefix("\ufeff")
    name = PurePosixPath(path).name
    title = re.sub(r"(\.[A-Za-z0-9]{1,4})+$", "", name)
    yield make_doc(source, cur.id_path, 0, text, None, {"title": title, "file": path})
