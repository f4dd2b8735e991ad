"""Webdataset tar shards: deterministic, atomic writing and corruption-aware reading.

A sample is a key plus named fields; each field becomes the tar member `{key}.{field}`.
Webdataset splits a member name at the first dot of its basename, so keys must not contain dots.
Members are written with fixed metadata (mtime 0, uid/gid 0, mode 0644) so that the same samples
always give byte-identical shards.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np

from jamdata.io import atomic_write, open_url
from jamdata.errors import UserError


class ShardError(UserError, ValueError):
    """A tar shard that cannot be read to the end; names the file and the offset."""


def encode_field(name: str, value: Any) -> bytes:
    """Encode by extension, as webdataset's default decoders expect."""
    ext = name.rsplit(".", 1)[-1]
    if isinstance(value, bytes):
        return value
    if ext == "npy":
        buf = io.BytesIO()
        np.save(buf, np.asarray(value), allow_pickle=False)
        return buf.getvalue()
    if ext == "json":
        return json.dumps(value, sort_keys=True, ensure_ascii=False).encode()
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"cannot encode field {name!r} of type {type(value).__name__}")


def decode_field(name: str, data: bytes) -> Any:
    ext = name.rsplit(".", 1)[-1]
    if ext == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if ext == "json":
        return json.loads(data)
    if ext in ("txt", "cls"):
        return data.decode("utf-8")
    return data


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


class TarShardWriter:
    """Write samples into one tar, published atomically on `close()`."""

    def __init__(self, path: str):
        if not str(path).endswith(".tar"):
            raise ValueError(f"{path}: shard names end in .tar")
        self.path = str(path)
        self._cm = atomic_write(self.path, "wb")
        self._f = self._cm.__enter__()
        self._tar = tarfile.open(fileobj=self._f, mode="w", format=tarfile.USTAR_FORMAT)
        self._keys: set[str] = set()
        self.records = 0

    def write(self, key: str, fields: Mapping[str, Any]) -> None:
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} may not contain '.' or '/'")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in {self.path}")
        self._keys.add(key)
        for name in sorted(fields):
            data = encode_field(name, fields[name])
            self._tar.addfile(_tarinfo(f"{key}.{name}", len(data)), io.BytesIO(data))
        self.records += 1

    def close(self) -> None:
        self._tar.close()
        self._cm.__exit__(None, None, None)

    def abort(self) -> None:
        self._tar.close()
        self._cm.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> "TarShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort() if exc_type else self.close()


@dataclass
class Sample:
    key: str
    fields: dict[str, bytes]  # raw bytes per field name (extension after the key)
    shard: str

    def decoded(self) -> dict[str, Any]:
        return {name: decode_field(name, data) for name, data in self.fields.items()}


def tar_tail_problem(f, data_end: int) -> str | None:
    """A tar cut inside a header block reads like a normal end of archive to tarfile; a complete
    one ends with at least two zero blocks after the last member's data. `data_end` is where the
    last member's (512-byte padded) data ends."""
    try:
        size = f.seek(0, 2)
        f.seek(data_end)
        tail = f.read(1024)
    except (OSError, ValueError):
        return None  # not seekable: nothing more to check
    if size - data_end < 1024 or tail.count(0) != len(tail):
        return f"no end-of-archive marker after offset {data_end} (truncated or corrupt tar)"
    return None


def member_data_end(member: tarfile.TarInfo) -> int:
    return member.offset_data + -(-member.size // 512) * 512


def split_member(name: str) -> tuple[str, str]:
    """`dir/abc.image_codes.npy` -> (`dir/abc`, `image_codes.npy`), webdataset's rule."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


class TarDamageError(ShardError):
    """A tar that is truncated or corrupt at `offset` (every member before it was read)."""

    def __init__(self, path: str, offset: int, problem: str):
        super().__init__(f"{path}: {problem}")
        self.offset = offset
        self.problem = problem


def iter_members(path: str) -> Iterator[tuple[int, str, str, bytes]]:
    """(offset, key, field, data) of every file member in order; raises TarDamageError where
    the tar is damaged, after yielding every complete member before it."""
    offset = data_end = 0
    with open_url(path, "rb") as f:
        try:
            tar = tarfile.open(fileobj=f, mode="r|")
            for member in tar:
                offset, data_end = member.offset, member_data_end(member)
                if not member.isfile():
                    continue
                extracted = tar.extractfile(member)
                data = extracted.read() if extracted else b""
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name} truncated ({len(data)} of {member.size} bytes)")
                yield (member.offset, *split_member(member.name), data)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise TarDamageError(path, offset, f"corrupt or truncated tar after offset {offset}: {e}") from None
        problem = tar_tail_problem(f, data_end)
    if problem:
        raise TarDamageError(path, data_end, problem)


def iter_samples(path: str, on_duplicate: str = "error") -> Iterator[Sample]:
    """Stream samples (consecutive members sharing a key). A truncated or corrupt tar raises
    ShardError after yielding every complete sample before the damage. Duplicate keys raise
    (`on_duplicate="error"`) or are skipped (`"skip"`), never silently merged."""
    seen: set[str] = set()
    current: Sample | None = None
    for offset, key, field, data in iter_members(path):
        if current is not None and key == current.key:
            if field in current.fields:
                raise ShardError(f"{path}: field {field!r} repeated for key {key!r}")
            current.fields[field] = data
            continue
        if current is not None:
            yield current
        if key in seen:
            if on_duplicate == "error":
                raise ShardError(f"{path}: duplicate sample key {key!r} at offset {offset}")
            current = None
            continue
        seen.add(key)
        current = Sample(key, {field: data}, str(path))
    if current is not None:
        yield current


def count_samples(path: str) -> int:
    return sum(1 for _ in iter_samples(path))
