"""Readers for image-caption collections: img2dataset webdataset tars, jsonl and parquet tables.

Each yields `RawRecord`s in file order. A problem with one sample (no image, unreadable path) or
with the file itself (truncated tar) becomes a record with `error` set, never an exception, so
the caller can write it to the rejects dataset with the file and offset.

Image paths inside jsonl/parquet rows are data, not configuration: they are read through an
`InputPolicy` (jamdata.io.read_confined), so a row can only name regular files under the table's
own directory or a configured root, never a system file, a FIFO or a device, and no URL is
fetched unless its scheme is allowed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator


from jamdata.formats.wds import TarDamageError, iter_members
from jamdata.io import InputPolicy, InputRefused, open_url, parent_dir, read_confined

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
TABLE_IMAGE_FIELDS = ("image", "jpg", "png", "webp", "image_bytes", "img")
TABLE_PATH_FIELDS = ("image_path", "path", "file", "filename", "file_name")
TABLE_CAPTION_FIELDS = ("caption", "text", "txt", "alt", "title")
TABLE_KEY_FIELDS = ("key", "id", "uid")


@dataclass
class RawRecord:
    key: str  # output sample key (no '.' or '/')
    original_key: str
    file: str
    offset: int  # tar member offset, jsonl line or parquet row
    image: bytes | None = None
    caption: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: tuple[str, str] | None = None  # (reason, detail) when the record is unusable


def sanitize_key(key: str) -> str:
    """Webdataset splits names at the first dot, and keys are file names: keep [A-Za-z0-9_-]."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", key.strip()) or "_"


def _file_stem(path: str) -> str:
    name = Path(path).name
    return sanitize_key(name.split(".", 1)[0])


def _from_fields(path: str, key: str, offset: int, fields: dict[str, bytes]) -> RawRecord:
    rec = RawRecord(sanitize_key(key.rsplit("/", 1)[-1]), key, path, offset)
    meta: dict[str, Any] = {}
    if "json" in fields:
        try:
            meta = json.loads(fields["json"].decode("utf-8"))
            if not isinstance(meta, dict):
                meta = {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            meta = {}
    rec.meta = {k: meta[k] for k in ("url", "width", "height", "original_width", "original_height") if k in meta}
    if "txt" in fields:
        rec.caption = fields["txt"].decode("utf-8", errors="replace")
    elif isinstance(meta.get("caption"), str):
        rec.caption = meta["caption"]
    ext = next((e for e in IMAGE_EXTS if e in fields), None)
    if ext is None:
        rec.error = ("missing_image", f"no image member ({'/'.join(IMAGE_EXTS)}); has: {', '.join(sorted(fields))}")
    else:
        rec.image = fields[ext]
    return rec


def read_tar(path: str) -> Iterator[RawRecord]:
    """img2dataset shards: members `{key}.jpg`, `{key}.txt`, `{key}.json` next to each other.
    A key seen again (in or out of sequence) is yielded again; the caller rejects duplicates."""
    current: tuple[str, int, dict[str, bytes]] | None = None
    try:
        for offset, key, fld, data in iter_members(path):
            fld = fld.lower()
            if current is not None and key == current[0] and fld not in current[2]:
                current[2][fld] = data
                continue
            if current is not None:
                yield _from_fields(path, *current)
            current = (key, offset, {fld: data})
    except TarDamageError as e:
        if current is not None:
            yield _from_fields(path, *current)
        yield RawRecord(
            f"{_file_stem(path)}-truncated-{e.offset}", "", path, e.offset, error=("truncated_shard", e.problem)
        )
        return
    if current is not None:
        yield _from_fields(path, *current)


def _pick(row: dict, wanted: str | None, candidates: tuple[str, ...]) -> tuple[str | None, Any]:
    if wanted:
        return wanted, row.get(wanted)
    for name in candidates:
        if row.get(name) is not None:
            return name, row[name]
    return None, None


def _read_named_image(rec: RawRecord, table: str, ref: str, policy: InputPolicy) -> None:
    """Fill `rec.image` from a path named in a row of `table`, or set `rec.error`: the detail
    names the path and why, never any of the file's bytes."""
    try:
        rec.image = read_confined(ref, parent_dir(table), policy)
    except InputRefused as e:
        rec.error = (e.reason, f"image path {ref!r} refused: {e.why}")
    except OSError as e:
        rec.error = ("missing_image", f"image file {ref!r} unreadable: {e.strerror or e}")


def _table_record(path: str, index: int, row: dict, fields: dict[str, str | None], policy: InputPolicy) -> RawRecord:
    _, key = _pick(row, fields.get("key_field"), TABLE_KEY_FIELDS)
    original = str(key) if key is not None else f"{_file_stem(path)}-{index:08d}"
    rec = RawRecord(sanitize_key(original), original, path, index)
    _, cap = _pick(row, fields.get("caption_field"), TABLE_CAPTION_FIELDS)
    rec.caption = cap if isinstance(cap, str) else None
    if isinstance(row.get("url"), str):
        rec.meta["url"] = row["url"]
    _, img = _pick(row, fields.get("image_field"), TABLE_IMAGE_FIELDS + TABLE_PATH_FIELDS)
    if isinstance(img, dict):  # Hugging Face Image feature: {"bytes": ..., "path": ...}
        img = img.get("bytes") or img.get("path")
    if isinstance(img, (bytes, bytearray)):
        rec.image = bytes(img)
    elif isinstance(img, str) and img:
        _read_named_image(rec, path, img, policy)
    else:
        rec.error = ("missing_image", "row has no image bytes or image path")
    return rec


def read_jsonl(path: str, fields: dict[str, str | None], policy: InputPolicy) -> Iterator[RawRecord]:
    from jamdata.io import open_input

    with open_input(path) as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as e:
                yield RawRecord(f"{_file_stem(path)}-{i:08d}", "", path, i, error=("bad_row", f"line {i + 1}: {e}"))
                continue
            yield _table_record(path, i, row, fields, policy)


def read_parquet(path: str, fields: dict[str, str | None], policy: InputPolicy) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    with open_url(path, "rb") as f:
        pf = pq.ParquetFile(f)
        index = 0
        for batch in pf.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                yield _table_record(path, index, row, fields, policy)
                index += 1


def _within_size(rec: RawRecord, max_bytes: int) -> RawRecord:
    """Image bytes carried inline (tar member, table cell) obey the same size limit as files."""
    if rec.error is None and rec.image is not None and len(rec.image) > max_bytes:
        rec.error = ("file_too_large", f"image of {len(rec.image)} bytes, more than the limit of {max_bytes}")
        rec.image = None
    return rec


def _records(path: str, fields: dict[str, str | None], policy: InputPolicy) -> Iterator[RawRecord]:
    name = Path(path).name.lower()
    if name.endswith(".tar"):
        yield from read_tar(path)
    elif name.endswith(".parquet"):
        yield from read_parquet(path, fields, policy)
    elif re.search(r"\.jsonl?(\.(gz|zst|bz2|xz))?$", name):
        yield from read_jsonl(path, fields, policy)
    else:
        yield RawRecord(
            f"{_file_stem(path)}-unsupported",
            "",
            path,
            0,
            error=("unsupported_file", "not a .tar, .jsonl or .parquet image-caption file"),
        )


def read_source(
    path: str, fields: dict[str, str | None] | None = None, policy: InputPolicy | None = None
) -> Iterator[RawRecord]:
    """Dispatch by extension: .tar, .jsonl/.json(.gz/.zst), .parquet. Image paths named by table
    rows are read under `policy` (default: no extra roots, no remote schemes, 32 MiB), with the
    table's own directory always one of its roots."""
    policy = (policy or InputPolicy()).with_root(parent_dir(path))
    for rec in _records(path, fields or {}, policy):
        yield _within_size(rec, policy.max_bytes)
