"""Readers for image-caption collections: img2dataset webdataset tars, jsonl and parquet tables.

Each yields `RawRecord`s in file order. A problem with one sample (no image, unreadable path) or
with the file itself (truncated tar) becomes a record with `error` set, never an exception, so
the caller can write it to the rejects dataset with the file and offset.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import fsspec

from jamdata.formats.wds import TarDamageError, iter_members

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
TABLE_IMAGE_FIELDS = ("image", "jpg", "png", "webp", "image_bytes", "img")
TABLE_PATH_FIELDS = ("image_path", "path", "file", "filename", "file_name")
TABLE_CAPTION_FIELDS = ("caption", "text", "txt", "alt", "title")
TABLE_KEY_FIELDS = ("key", "id", "uid")


@dataclass
class RawRecord:
    key: str                      # output sample key (no '.' or '/')
    original_key: str
    file: str
    offset: int                   # tar member offset, jsonl line or parquet row
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
        yield RawRecord(f"{_file_stem(path)}-truncated-{e.offset}", "", path, e.offset,
                        error=("truncated_shard", e.problem))
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


def _table_record(path: str, index: int, row: dict, fields: dict[str, str | None]) -> RawRecord:
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
        full = img if ("://" in img or img.startswith("/")) else str(Path(path).parent / img)
        try:
            with fsspec.open(full, "rb") as f:
                rec.image = f.read()
        except (FileNotFoundError, IsADirectoryError, PermissionError, OSError) as e:
            rec.error = ("missing_image", f"image file {full} unreadable: {e}")
    else:
        rec.error = ("missing_image", "row has no image bytes or image path")
    return rec


def read_jsonl(path: str, fields: dict[str, str | None]) -> Iterator[RawRecord]:
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
            yield _table_record(path, i, row, fields)


def read_parquet(path: str, fields: dict[str, str | None]) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        index = 0
        for batch in pf.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                yield _table_record(path, index, row, fields)
                index += 1


def read_source(path: str, fields: dict[str, str | None] | None = None) -> Iterator[RawRecord]:
    """Dispatch by extension: .tar, .jsonl/.json(.gz/.zst), .parquet."""
    fields = fields or {}
    name = Path(path).name.lower()
    if name.endswith(".tar"):
        yield from read_tar(path)
    elif name.endswith(".parquet"):
        yield from read_parquet(path, fields)
    elif re.search(r"\.jsonl?(\.(gz|zst|bz2|xz))?$", name):
        yield from read_jsonl(path, fields)
    else:
        yield RawRecord(f"{_file_stem(path)}-unsupported", "", path, 0,
                        error=("unsupported_file", "not a .tar, .jsonl or .parquet image-caption file"))
