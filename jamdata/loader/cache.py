"""A local disk cache for shards on object storage (s3://, gs://): the loader never holds a whole
remote shard in memory. On first use a shard's files are streamed in 1 MiB blocks into the cache
directory (hashed on the way, checked against the manifest's size and sha256, then renamed into
place), and the shard is read from the local copy with the same memory-mapped code as a local
dataset. Entries are named after the manifest's sha256 of their files, so a re-made dataset never
reads a stale copy and a shard shared by several runs is downloaded once.

Where: `loader.cache_dir`, else $JAM_CACHE_DIR, else ~/.cache/jam/shards. Nothing is evicted: size
the disk for the shards a run reads (docs/loader.md)."""

from __future__ import annotations

import hashlib
import os
import uuid

from jamdata.errors import UserError
from jamdata.io import open_url

CACHE_ENV = "JAM_CACHE_DIR"
BLOCK = 1 << 20


class CacheError(UserError):
    """A remote shard file that could not be copied intact (missing, altered, unreachable)."""


def default_cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "jam", "shards")


def _entry(files: tuple[tuple[str, int, str], ...]) -> str:
    """One directory per shard, named after the sha256s of its files."""
    h = hashlib.sha256()
    for rel, size, sha in files:
        h.update(f"{rel}\0{size}\0{sha}\n".encode())
    return h.hexdigest()[:32]


def _download(url: str, dest: str, size: int, sha: str) -> None:
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    h, n = hashlib.sha256(), 0
    try:
        with open_url(url, "rb") as src, open(tmp, "wb") as out:
            while block := src.read(BLOCK):
                h.update(block)
                out.write(block)
                n += len(block)
        if n != size:
            raise CacheError(f"{url}: {n} bytes, manifest says {size} (truncated or altered)")
        if h.hexdigest() != sha:
            raise CacheError(f"{url}: sha256 differs from the manifest (altered)")
        os.replace(tmp, dest)
    except FileNotFoundError:
        raise CacheError(f"{url}: missing") from None
    except CacheError:
        raise
    except Exception as e:  # unreachable endpoint, refused credentials, local disk full
        raise CacheError(f"{url}: cannot copy to the shard cache {dest}: {type(e).__name__}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def local_root(root: str, files: tuple[tuple[str, int, str], ...], cache_dir: str | None = None) -> str:
    """A local directory holding `files` (relative paths, bytes, sha256) of the remote dataset
    `root` at the same relative paths, copying what is not cached yet."""
    base = os.path.join(cache_dir or default_cache_dir(), _entry(files))
    for rel, size, sha in files:
        dest = os.path.join(base, rel)
        if os.path.exists(dest) and os.path.getsize(dest) == size:
            continue
        _download(f"{root.rstrip('/')}/{rel}", dest, size, sha)
    return base
