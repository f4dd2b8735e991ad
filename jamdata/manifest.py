"""Dataset manifests: writing them last (a dataset is complete iff its manifest exists), checking a
dataset against its manifest, refusing to mix vocabularies, and guarding an output directory."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from jamdata import __version__
from jamdata.io import (
    TMP_MARK,
    LockHeld,
    OutputDirError,
    absolute,
    acquire_lock,
    atomic_write,
    fs_and_path,
    is_local,
    join,
    open_url,
    release_lock,
    sha256_file,
    storage_error,
)
from jamdata.vocab import JointVocab, check_same_vocab
from schemas import MANIFEST_VERSION, SCHEMA_VERSION, validate_manifest
from jamdata.errors import UserError

MANIFEST = "manifest.json"
LOCK = ".jam.lock"


@dataclass
class ShardInfo:
    path: str  # relative to the dataset directory
    bytes: int
    sha256: str
    records: int | None = None
    tokens: int | None = None
    group: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {
            "path": self.path,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "records": self.records,
            "tokens": self.tokens,
            "group": self.group,
        }
        if self.summary:
            d["summary"] = self.summary
        return d


def describe_shard(
    root: str,
    rel: str,
    records: int | None = None,
    tokens: int | None = None,
    group: str | None = None,
    summary: dict | None = None,
) -> ShardInfo:
    """Hash and size a finished shard file for the manifest."""
    full = f"{str(root).rstrip('/')}/{rel}"
    fs, p = fs_and_path(full)
    return ShardInfo(rel, int(fs.size(p)), sha256_file(full), records, tokens, group, summary or {})


SIZE_DIFFERS = "truncated or altered"
HASH_DIFFERS = "sha256 differs from the manifest (altered)"


def shard_path_problem(rel: object) -> str | None:
    """Why a manifest's shard path may not be read, or None. A shard must lie inside its dataset
    directory: a relative path without `..`, not absolute, not a URL (a manifest naming an
    outside file would make validation and readers vouch for, and read, that file)."""
    if not isinstance(rel, str) or not rel.strip():
        return "is empty"
    if rel.startswith("/") or "://" in rel or "::" in rel or "\x00" in rel:
        return "is absolute or a URL"
    if ".." in rel.split("/"):
        return "climbs out with '..'"
    return None


def check_shard_paths(shards: Iterable[dict], where: str) -> None:
    """ManifestError (one line) for the first shard path that leaves the dataset directory."""
    for shard in shards:
        why = shard_path_problem(shard.get("path") if isinstance(shard, dict) else None)
        if why:
            raise ManifestError(
                f"{where}: shard path {shard.get('path')!r} {why}; shards must lie inside the dataset directory"
            )


def build_manifest(
    kind: str,
    shards: Iterable[ShardInfo | dict],
    config: dict,
    vocab: JointVocab | None = None,
    summary: dict | None = None,
    inputs: list[str] | None = None,
) -> dict:
    rows = sorted((s.to_dict() if isinstance(s, ShardInfo) else dict(s) for s in shards), key=lambda s: s["path"])
    check_shard_paths(rows, f"{kind} manifest")
    tokens = [s.get("tokens") for s in rows]
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "vocab_fingerprint": vocab.fingerprint if vocab else None,
        "vocab": vocab.to_dict() if vocab else None,
        "config": config,
        "shards": rows,
        "totals": {
            "records": sum(s.get("records") or 0 for s in rows),
            "bytes": sum(s["bytes"] for s in rows),
            "tokens": sum(t for t in tokens if t is not None) if any(t is not None for t in tokens) else None,
        },
        "summary": summary or {},
        "inputs": list(inputs or []),
        "tool_version": f"jamdata {__version__}",
    }
    validate_manifest(manifest)
    return manifest


def write_manifest(root: str, manifest: dict) -> str:
    """Written last and atomically: its presence is what marks the dataset complete."""
    validate_manifest(manifest)
    path = f"{str(root).rstrip('/')}/{MANIFEST}"
    with atomic_write(path, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return path


class ManifestError(UserError):
    pass


def read_manifest(root: str) -> dict:
    path = f"{str(root).rstrip('/')}/{MANIFEST}"
    try:
        with open_url(path, "r") as f:
            manifest = json.load(f)
    except (FileNotFoundError, NotADirectoryError):  # NotADirectory: a file where the dataset dir should be
        raise ManifestError(f"{root}: no {MANIFEST} (not a dataset, or its job did not finish)") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except OSError:
        raise
    except Exception as e:  # remote storage that cannot be reached: one line naming the URL
        raise storage_error(path, e) from None
    try:
        validate_manifest(manifest, where=path)
    except ValueError as e:
        raise ManifestError(str(e)) from None
    check_shard_paths(manifest["shards"], path)
    return manifest


def is_complete(root: str) -> bool:
    try:
        read_manifest(root)
        return True
    except ManifestError:
        return False


# -- record counting per shard format (for validate) -------------------------------------------
def _count_parquet(path: str) -> int:
    import pyarrow.parquet as pq

    with open_url(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def _count_idx(path: str) -> int:
    from jamdata.formats.megatron import read_index

    return len(read_index(path).sequence_lengths)


def _count_tar(path: str) -> int:
    from jamdata.formats.wds import count_samples

    return count_samples(path)


RECORD_COUNTERS: dict[str, Callable[[str], int]] = {
    ".parquet": _count_parquet,
    ".idx": _count_idx,
    ".tar": _count_tar,
}


def _local_shard_problem(root: str, rel: str) -> str | None:
    """A local shard that is a symlink out of the dataset directory, or not a regular file (a
    FIFO would block the hash forever)."""
    if "://" in root and not root.startswith("file://"):
        return None
    base = os.path.realpath(root.removeprefix("file://"))
    full = os.path.realpath(os.path.join(base, rel))
    if full != base and not full.startswith(base.rstrip("/") + "/"):
        return f"{rel}: resolves outside the dataset directory (symlink to {full})"
    try:
        mode = os.stat(full).st_mode
    except OSError:
        return None  # reported as missing below
    return None if stat.S_ISREG(mode) else f"{rel}: not a regular file"


def validate_dataset(root: str, deep: bool = True, hashes: bool | None = None) -> list[str]:
    """Every problem found (empty list = valid): shard paths outside the dataset, missing,
    truncated or altered shards, count mismatches. Sizes are always compared with the manifest;
    sha256 when `hashes` (default: `deep`); records are counted when `deep`."""
    try:
        manifest = read_manifest(root)
    except ManifestError as e:
        return [str(e)]
    hashes = deep if hashes is None else hashes
    problems: list[str] = []
    root = str(root).rstrip("/")
    fs, base = fs_and_path(root)
    for shard in manifest["shards"]:
        full = f"{root}/{shard['path']}"
        _, p = fs_and_path(full)
        if outside := _local_shard_problem(root, shard["path"]):
            problems.append(outside)
            continue
        if not fs.exists(p):
            problems.append(f"{shard['path']}: missing")
            continue
        size = fs.size(p)
        if size != shard["bytes"]:
            problems.append(f"{shard['path']}: {size} bytes, manifest says {shard['bytes']} ({SIZE_DIFFERS})")
            continue
        if hashes and sha256_file(full) != shard["sha256"]:
            problems.append(f"{shard['path']}: {HASH_DIFFERS}")
            continue
        counter = RECORD_COUNTERS.get(Path(shard["path"]).suffix)
        if deep and counter and shard.get("records") is not None:
            try:
                n = counter(full)
            except Exception as e:  # a corrupt shard is a finding, not a crash
                problems.append(f"{shard['path']}: unreadable ({e})")
                continue
            if n != shard["records"]:
                problems.append(f"{shard['path']}: {n} records, manifest says {shard['records']}")
    total = sum(s.get("records") or 0 for s in manifest["shards"])
    if total != manifest["totals"]["records"]:
        problems.append(f"totals.records is {manifest['totals']['records']} but the shards add up to {total}")
    return problems


def check_compatible(roots: Iterable[str]) -> str:
    """Refuse to combine datasets made with different joint vocabularies (names both)."""
    return check_same_vocab({str(r): read_manifest(str(r))["vocab_fingerprint"] for r in roots})


# -- output directories --------------------------------------------------------------------------
class OutputLockedError(UserError, RuntimeError):
    pass


@contextlib.contextmanager
def output_dir(root: str | os.PathLike, clean: bool = True) -> Iterator[Path | str]:
    """Claim an output directory for one job and remove the old manifest first, so a half-redone
    dataset never looks complete. A local directory is locked (refusing a second job writing into
    it; the lock dies with its process, so a killed job never blocks the next) and yields a Path;
    a remote prefix (s3://, gs://) yields its URL (see remote_output_dir)."""
    if not is_local(str(root)):
        yield from remote_output_dir(str(root), clean)
        return
    root = Path(str(root).removeprefix("file://"))
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock_f = acquire_lock(root / LOCK)
    except LockHeld:
        raise OutputLockedError(
            f"{root} is being written by another job (lock {root / LOCK}); "
            "wait for it or choose another output directory"
        ) from None
    except PermissionError as e:
        raise PermissionError(f"cannot write to output directory {root}: permission denied ({e.strerror})") from None
    except OSError as e:  # a file where a directory is expected, /proc, disk full, read-only mount
        err = OutputDirError(f"cannot write to output directory {root}: {e.strerror or e}")
        err.errno = e.errno
        raise err from None
    try:
        (root / MANIFEST).unlink(missing_ok=True)
        if clean:
            for child in root.iterdir():
                if child.name == LOCK:
                    continue
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        yield root
    finally:
        release_lock(lock_f)


def remote_output_dir(url: str, clean: bool = True) -> Iterator[str]:
    """A dataset prefix on object storage, which has no lock: one job per output prefix is the
    operator's responsibility (docs/ARCHITECTURE.md). Before anything is written the old manifest
    is deleted, then (with `clean`) every other object under the prefix, so no shard of an earlier
    attempt survives; without `clean` (appending) only temporaries a killed attempt left. If the
    job fails, the temporaries of this attempt are removed and the dataset stays without manifest."""
    url = absolute(url)
    fs, p = fs_and_path(url)

    def remove(which) -> None:
        try:
            names = [f for f in fs.find(p) if which(f)] if fs.exists(p) else []
            if names:
                fs.rm(names)
            fs.invalidate_cache()
        except FileNotFoundError:
            pass
        except Exception as e:  # unreachable endpoint, missing bucket, refused credentials
            raise storage_error(url, e) from None

    probe = join(p, f".jam-write-check{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:  # endpoint, bucket, credentials and write permission, before the old dataset is touched
        fs.pipe_file(probe, b"")
        fs.rm(probe)
    except Exception as e:  # else a worker would fail at its first shard, naming no URL
        raise storage_error(url, e) from None
    manifest = join(p, MANIFEST)
    remove(lambda f: f == manifest)
    remove((lambda f: True) if clean else (lambda f: TMP_MARK in f.rsplit("/", 1)[-1]))
    try:
        yield url
    except BaseException:
        with contextlib.suppress(Exception):
            remove(lambda f: TMP_MARK in f.rsplit("/", 1)[-1])
        raise
