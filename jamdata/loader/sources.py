"""Datasets as the loader sees them: the shard list from the manifest (nothing else is read at
start-up) and per-process shard readers that verify a shard on first use and turn damage into
counted, logged skips instead of crashes."""
from __future__ import annotations

import io
import logging
import os
import tarfile
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np

from jamdata.formats.megatron import IndexedDataset, IndexedDatasetError
from jamdata.formats.wds import ShardError, split_member
from jamdata.io import is_local, sha256_file
from jamdata.manifest import read_manifest
from jamdata.vocab import JointVocab

log = logging.getLogger("jamdata.loader")

KINDS = {"text_tokens": "megatron", "image_caption": "tar", "interleaved": "tar"}


class LoaderError(ValueError):
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
    cum: np.ndarray = field(default=None)  # type: ignore[assignment]

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
        fs, p = fsspec.core.url_to_fs(full)
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
        self.lengths = self.ds.index.sequence_lengths

    def length(self, i: int) -> int:
        return int(self.lengths[i])

    def get(self, i: int) -> Sample:
        return Sample(f"{self.ref.rel}:{i}", self.ds.get(i), None)


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


class TarShard:
    """Random access into a webdataset tar: one pass over the 512-byte headers builds a member
    table (data is never read for it); damage after the last complete sample is reported once."""

    def __init__(self, root: str, ref: ShardRef, counters: dict[str, int]):
        self.ref = ref
        self.path = f"{root}/{ref.rel}"
        self.samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
        self.damage: str | None = None
        self._f = open(self.path, "rb") if is_local(self.path) else fsspec.open(self.path, "rb").open()
        size = self._f.seek(0, os.SEEK_END)
        self._f.seek(0)
        seen: set[str] = set()
        current: tuple[str, dict] | None = None
        try:
            with tarfile.open(fileobj=self._f, mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    if member.offset_data + member.size > size:
                        raise tarfile.ReadError(f"member {member.name} runs past the end of the file")
                    key, fld = split_member(member.name)
                    if current is not None and key == current[0]:
                        current[1][fld] = (member.offset_data, member.size)
                        continue
                    if current is not None:
                        self.samples.append(current)
                    current = None
                    if key in seen:
                        counters["duplicate_keys"] = counters.get("duplicate_keys", 0) + 1
                        log.error("%s: duplicate sample key %r at offset %d skipped", self.path, key, member.offset)
                        continue
                    seen.add(key)
                    current = (key, {fld: (member.offset_data, member.size)})
        except (tarfile.TarError, EOFError, OSError) as e:
            self.damage = f"{self.path}: corrupt or truncated tar after {len(self.samples)} samples: {e}"
            current = None  # the sample at the damage may be incomplete
        if current is not None:
            self.samples.append(current)
        if not self.samples and self.damage:
            raise BadShard(self.damage)

    def get(self, i: int) -> Sample | None:
        if i >= len(self.samples):
            return None
        key, fields = self.samples[i]
        if "tokens.npy" not in fields:
            raise ShardError(f"{self.path}: sample {key!r} has no tokens.npy")
        tokens = _npy(self._read(*fields["tokens.npy"]))
        mask = _npy(self._read(*fields["loss_mask.npy"])) if "loss_mask.npy" in fields else None
        if tokens.ndim != 1 or (mask is not None and mask.shape != tokens.shape):
            raise ShardError(f"{self.path}: sample {key!r}: tokens {tokens.shape} / loss_mask "
                             f"{None if mask is None else mask.shape} are not matching 1-d arrays")
        return Sample(key, tokens, mask)

    def _read(self, offset: int, size: int) -> bytes:
        self._f.seek(offset)
        return self._f.read(size)


class ShardPool:
    """Opened shards of one process (a worker), verified once each; bad shards are remembered so
    each is logged and counted once per process."""

    def __init__(self, verify: str, on_corrupt: str, max_open: int = 64):
        self.verify = verify
        self.on_corrupt = on_corrupt
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
            if k not in self.verified and self.verify != "none":
                _verify(src.root, ref, self.verify)
            self.verified.add(k)
            shard = MegatronShard(src.root, ref) if src.fmt == "megatron" else TarShard(src.root, ref, self.counters)
        except BadShard as e:
            self.bad.add(k)
            self.fail_or_log(str(e), "skipped_shards")
            return None
        if getattr(shard, "damage", None):
            self.fail_or_log(shard.damage, "damaged_shards")
        if isinstance(shard, TarShard) and len(shard.samples) < ref.records:
            self.count("missing_samples", ref.records - len(shard.samples))
        if len(self.open) >= self.max_open:
            self.open.pop(next(iter(self.open)))
        self.open[k] = shard
        return shard
