"""Datasets as the loader sees them: the shard list from the manifest (nothing else is read at
start-up) and per-process shard readers that verify a shard on first use and turn damage into
counted, logged skips instead of crashes."""

from __future__ import annotations

import io
import logging
import mmap
import os
import tarfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from jamdata.formats.megatron import IndexedDataset, IndexedDatasetError
from jamdata.formats.wds import ShardError, split_member
from jamdata.io import fs_and_path, is_local, open_url, sha256_file
from jamdata.manifest import read_manifest
from jamdata.vocab import JointVocab
from jamdata.errors import UserError

log = logging.getLogger("jamdata.loader")

KINDS = {"text_tokens": "megatron", "image_caption": "tar", "interleaved": "tar"}


class LoaderError(UserError, ValueError):
    """The loader's inputs or state cannot be used (message names the dataset, shard or key)."""


@dataclass(frozen=True)
class ShardRef:
    rel: str  # the data file relative to the dataset root (.idx prefix for Megatron: "src/part-00000")
    records: int
    files: tuple[tuple[str, int, str], ...]  # (relative path, bytes, sha256) to verify


@dataclass
class DatasetSource:
    """One dataset of the mixture, described by its manifest only."""

    name: str
    root: str
    kind: str
    fmt: str
    shards: list[ShardRef]
    fingerprint: str | None
    vocab: JointVocab | None
    tokens: int | None
    cum: np.ndarray | None = None

    @property
    def n_samples(self) -> int:
        return sum(s.records for s in self.shards)

    @classmethod
    def from_manifest(cls, name: str, root: str) -> "DatasetSource":
        root = str(root).rstrip("/")
        m = read_manifest(root)
        kind = m["kind"]
        if kind not in KINDS:
            raise LoaderError(f"{root}: dataset kind {kind!r} cannot be loaded (loadable: {', '.join(KINDS)})")
        fmt = KINDS[kind]
        rows = {s["path"]: s for s in m["shards"]}
        shards: list[ShardRef] = []
        for path, s in sorted(rows.items()):
            if fmt == "megatron" and path.endswith(".idx"):
                prefix = path[:-4]
                b = rows.get(prefix + ".bin")
                if b is None:
                    raise LoaderError(f"{root}: manifest lists {path} without {prefix}.bin")
                files = ((path, s["bytes"], s["sha256"]), (b["path"], b["bytes"], b["sha256"]))
                shards.append(ShardRef(prefix, int(s.get("records") or 0), files))
            elif fmt == "tar" and path.endswith(".tar"):
                shards.append(ShardRef(path, int(s.get("records") or 0), ((path, s["bytes"], s["sha256"]),)))
        vocab = JointVocab.from_dict(m["vocab"]) if m.get("vocab") else None
        src = cls(name, root, kind, fmt, shards, m.get("vocab_fingerprint"), vocab, m["totals"].get("tokens"))
        if src.n_samples == 0:
            raise LoaderError(f"{root}: dataset {name!r} has no samples (manifest lists no records)")
        return src


# -- reading -----------------------------------------------------------------------------------------
@dataclass
class Sample:
    key: str
    tokens: np.ndarray  # any integer dtype
    loss_mask: np.ndarray | None  # uint8/bool or None (= all targets)


class BadShard(Exception):
    """Internal: the shard is unusable; carries the reason for the log and counters."""


def _verify(root: str, ref: ShardRef, mode: str) -> None:
    for rel, size, sha in ref.files:
        full = f"{root}/{rel}"
        fs, p = fs_and_path(full)
        try:
            actual = fs.size(p)
        except FileNotFoundError:
            raise BadShard(f"{full}: missing") from None
        if actual != size:
            raise BadShard(f"{full}: {actual} bytes, manifest says {size} (truncated or altered)")
        if mode == "sha256" and sha256_file(full) != sha:
            raise BadShard(f"{full}: sha256 differs from the manifest (altered)")


class MegatronShard:
    def __init__(self, root: str, ref: ShardRef):
        self.ref = ref
        try:
            self.ds = IndexedDataset(f"{root}/{ref.rel}")
        except (IndexedDatasetError, OSError, ValueError) as e:
            raise BadShard(str(e)) from None
        if len(self.ds) != ref.records:
            raise BadShard(f"{root}/{ref.rel}.idx: {len(self.ds)} documents, manifest says {ref.records}")
        idx = self.ds.index
        # plain ndarray views of the memory map: slicing a np.memmap costs more than the copy
        self.tokens = (
            np.asarray(self.ds._bin).view(np.ndarray).view(idx.dtype) if len(self.ds) else np.zeros(0, idx.dtype)
        )
        self.start_arr = (idx.sequence_pointers // idx.dtype.itemsize).astype(np.int64)
        self.len_arr = idx.sequence_lengths.astype(np.int64)
        bad = np.flatnonzero((self.start_arr < 0) | (self.start_arr + self.len_arr > len(self.tokens)))
        if bad.size:
            raise BadShard(
                f"{root}/{ref.rel}.idx: document {int(bad[0])} points past the end of the .bin "
                f"({bad.size} such documents; corrupt index)"
            )
        self._keys: list[str] | None = None

    @property
    def keys(self) -> list[str]:
        """Every document's sample key, built once per process (each epoch reuses them)."""
        if self._keys is None:
            self._keys = list(map(f"{self.ref.rel}:".__add__, map(str, range(len(self.len_arr)))))
        return self._keys


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], int]] = {}


def _npy(buf, offset: int, size: int) -> np.ndarray:
    """Decode a .npy member straight from the mapped shard (zero copy); headers are parsed once
    per distinct header (np.load parses each one with literal_eval)."""
    head = bytes(buf[offset : offset + min(size, 256)])
    if head[:6] != b"\x93NUMPY":
        raise ShardError("not a .npy member")
    hl = int.from_bytes(head[8:10], "little") if head[6] == 1 else int.from_bytes(head[8:12], "little")
    start = 10 if head[6] == 1 else 12
    key = head[: start + hl] if start + hl <= len(head) else bytes(buf[offset : offset + start + hl])
    info = _NPY_HEADERS.get(key)
    if info is None:
        arr = np.load(io.BytesIO(bytes(buf[offset : offset + size])), allow_pickle=False)
        if arr.dtype.hasobject or arr.ndim != 1:
            return arr
        info = (arr.dtype, arr.shape, start + hl)
        if len(_NPY_HEADERS) < 4096:
            _NPY_HEADERS[key] = info
    dtype, shape, data_at = info
    count = shape[0] if shape else 1
    if data_at + count * dtype.itemsize > size:
        raise ShardError("truncated .npy member")
    return np.frombuffer(buf, dtype=dtype, count=count, offset=offset + data_at)


def _scan_ustar(buf, size: int) -> list[tuple[str, int, int]] | None:
    """(name, data offset, data size) of every regular member, reading only headers; None when
    the archive uses headers this fast path does not handle (tarfile then does it)."""
    out: list[tuple[str, int, int]] = []
    pos = 0
    while pos + 512 <= size:
        h = bytes(buf[pos : pos + 512])
        if h == b"\0" * 512:
            return out
        chk = h[148:156].split(b"\0")[0].strip()
        if not chk or int(chk, 8) != sum(h[:148]) + 256 + sum(h[156:]):
            raise tarfile.ReadError(f"bad header checksum at offset {pos}")
        kind = h[156:157]
        if kind not in (b"0", b"\0") or h[257:262] != b"ustar":
            return None
        name = h[:100].split(b"\0")[0].decode()
        prefix = h[345:500].split(b"\0")[0].decode()
        if prefix:
            name = f"{prefix}/{name}"
        n = int(h[124:136].split(b"\0")[0].strip() or b"0", 8)
        if pos + 512 + n > size:
            raise tarfile.ReadError(f"member {name} runs past the end of the file")
        out.append((name, pos + 512, n))
        pos += 512 + (n + 511) // 512 * 512
    if pos < size:
        raise tarfile.ReadError(f"truncated header at offset {pos}")
    return out


def _scan_tarfile(f, size: int) -> list[tuple[str, int, int]]:
    out = []
    with tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
            if member.isfile():
                if member.offset_data + member.size > size:
                    raise tarfile.ReadError(f"member {member.name} runs past the end of the file")
                out.append((member.name, member.offset_data, member.size))
    return out


class TarShard:
    """Random access into a webdataset tar: one pass over the 512-byte headers builds a member
    table (data is never read for it); damage after the last complete sample is reported once."""

    def __init__(self, root: str, ref: ShardRef, counters: dict[str, int]):
        self.ref = ref
        self.path = f"{root}/{ref.rel}"
        self.samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
        self.damage: str | None = None
        if is_local(self.path):
            with open(self.path.removeprefix("file://"), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self.buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        else:
            with open_url(self.path, "rb") as f:
                self.buf = f.read()
            size = len(self.buf)
        members: list[tuple[str, int, int]] = []
        try:
            scanned = _scan_ustar(self.buf, size)
            members = scanned if scanned is not None else _scan_tarfile(io.BytesIO(self.buf[:]), size)
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            self.damage = f"{self.path}: corrupt or truncated tar: {e}"
            members = _partial_members(self.buf, size)
        seen: set[str] = set()
        current: tuple[str, dict] | None = None
        for name, offset, n in members:
            key, fld = split_member(name)
            if current is not None and key == current[0]:
                current[1][fld] = (offset, n)
                continue
            if current is not None:
                self.samples.append(current)
            current = None
            if key in seen:
                counters["duplicate_keys"] = counters.get("duplicate_keys", 0) + 1
                log.error("%s: duplicate sample key %r at offset %d skipped", self.path, key, offset - 512)
                continue
            seen.add(key)
            current = (key, {fld: (offset, n)})
        if current is not None and not self.damage:  # at damage the last sample may be incomplete
            self.samples.append(current)
        if self.damage:
            self.damage += f" (kept the {len(self.samples)} samples before it)"
        if not self.samples and self.damage:
            raise BadShard(self.damage)

    def get(self, i: int) -> Sample | None:
        if i >= len(self.samples):
            return None
        key, fields = self.samples[i]
        if "tokens.npy" not in fields:
            raise ShardError(f"{self.path}: sample {key!r} has no tokens.npy")
        tokens = _npy(self.buf, *fields["tokens.npy"])
        mask = _npy(self.buf, *fields["loss_mask.npy"]) if "loss_mask.npy" in fields else None
        if tokens.ndim != 1 or (mask is not None and mask.shape != tokens.shape):
            raise ShardError(
                f"{self.path}: sample {key!r}: tokens {tokens.shape} / loss_mask "
                f"{None if mask is None else mask.shape} are not matching 1-d arrays"
            )
        return Sample(key, tokens, mask)


def _partial_members(buf, size: int) -> list[tuple[str, int, int]]:
    """Members before the damage, for a tar that cannot be read to the end."""
    out: list[tuple[str, int, int]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(buf[:size]), mode="r:") as tar:
            for member in tar:
                if not member.isfile() or member.offset_data + member.size > size:
                    break
                out.append((member.name, member.offset_data, member.size))
    except (tarfile.TarError, EOFError, OSError, ValueError):
        pass
    return out


class ShardPool:
    """Opened shards of one process (a worker), verified once each; bad shards are remembered so
    each is logged and counted once per process."""

    def __init__(self, verify: str, on_corrupt: str, max_open: int = 64, cache_dir: str | None = None):
        self.verify = verify
        self.on_corrupt = on_corrupt
        self.cache_dir = cache_dir or None  # remote shards are read from local copies (loader/cache.py)
        self.max_open = max_open
        self.open: dict[tuple[str, str], Any] = {}
        self.bad: set[tuple[str, str]] = set()
        self.verified: set[tuple[str, str]] = set()
        self.counters: dict[str, int] = {}

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def fail_or_log(self, message: str, counter: str) -> None:
        if self.on_corrupt == "fail":
            raise ShardError(message)
        log.error("%s (skipped; loader.on_corrupt=skip)", message)
        self.count(counter)

    def get(self, src: DatasetSource, shard_index: int):
        ref = src.shards[shard_index]
        k = (src.root, ref.rel)
        if k in self.bad:
            return None
        if k in self.open:
            return self.open[k]
        try:
            root = src.root
            if not is_local(root):  # streamed to the local disk cache (checked on the way), never into memory
                from jamdata.loader.cache import CacheError, local_root

                try:
                    root = local_root(src.root, ref.files, self.cache_dir)
                except CacheError as e:
                    raise BadShard(str(e)) from None
            if k not in self.verified and self.verify != "none":
                _verify(root, ref, self.verify)
            self.verified.add(k)
            shard = MegatronShard(root, ref) if src.fmt == "megatron" else TarShard(root, ref, self.counters)
        except BadShard as e:
            self.bad.add(k)
            self.fail_or_log(str(e), "skipped_shards")
            return None
        if isinstance(shard, TarShard) and shard.damage:
            self.fail_or_log(shard.damage, "damaged_shards")
        if isinstance(shard, TarShard) and len(shard.samples) < ref.records:
            self.count("missing_samples", ref.records - len(shard.samples))
        if len(self.open) >= self.max_open:
            self.open.pop(next(iter(self.open)))
        self.open[k] = shard
        return shard
