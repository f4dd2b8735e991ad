"""File access shared by every stage: content-sniffed decompression, atomic writes, locks, hashes.

All paths go through fsspec so that local paths, gs:// and s3:// behave the same. The storage
helpers (jamdata/storage.py) and the confined reads of files named by data (jamdata/confined.py)
are imported from here as well.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import fcntl
import gzip
import hashlib
import io
import lzma
import os
import uuid
from pathlib import Path
from typing import IO, Iterator, cast

from jamdata.confined import (
    DEFAULT_MAX_INPUT_BYTES,  # noqa: F401 (re-exported)
    InputPolicy,  # noqa: F401 (re-exported)
    InputRefused,  # noqa: F401 (re-exported)
    confined_path,  # noqa: F401
    parent_dir,  # noqa: F401 (re-exported)
    read_confined,  # noqa: F401 (re-exported)
)
from jamdata.errors import UserError
from jamdata.storage import (
    STORAGE_ENV,  # noqa: F401 (re-exported)
    TMP_MARK,  # noqa: F401 (re-exported)
    StorageError,  # noqa: F401 (re-exported)
    absolute,  # noqa: F401 (re-exported)
    environment_storage_options,  # noqa: F401
    exists,  # noqa: F401 (re-exported)
    fs_and_path,
    is_local,
    join,  # noqa: F401 (re-exported)
    list_dirs,  # noqa: F401 (re-exported)
    open_url,
    read_bytes,  # noqa: F401 (re-exported)
    remote_atomic_write,
    set_storage_options,  # noqa: F401 (re-exported)
    storage_error,
    storage_options,  # noqa: F401 (re-exported)
    url_scheme,  # noqa: F401 (re-exported)
)

MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bz2",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\xfd7zXZ\x00": "xz",
}


class OutputDirError(UserError, OSError):
    """An output directory that cannot be written (permission denied, read-only, disk full); the
    message names the directory, so the command line prints one clear line."""


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def output_error(path: str | os.PathLike, e: OSError) -> OutputDirError:
    where = Path(path)
    what = "disk full" if e.errno in _DISK_FULL else "cannot write"
    err = OutputDirError(f"{what}: output directory {where.parent} ({where.name}: {e.strerror or e})")
    err.errno = e.errno
    return err


class InputError(UserError):
    """A raw input that cannot be read; the message names the file (and offset when known)."""

    def __init__(self, path: str, message: str, offset: int | None = None):
        where = f"{path}" + (f" at offset {offset}" if offset is not None else "")
        super().__init__(f"{where}: {message}")
        self.path = path
        self.offset = offset
        self.reason = message


def sniff_compression(head: bytes) -> str | None:
    """Compression from the first bytes of a file, not its name (files are often misnamed)."""
    for magic, name in MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def _decompressor(raw: IO[bytes], kind: str | None) -> IO[bytes]:
    if kind == "gzip":
        # handles multi-member gzip (WARC/WET); a binary file, though its stubs do not say IO[bytes]
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw))
    if kind == "bz2":
        return bz2.BZ2File(raw)
    if kind == "xz":
        return lzma.LZMAFile(raw)
    if kind == "zstd":
        return io.BufferedReader(_ZstdStream(raw), buffer_size=1 << 17)
    return raw


class _ZstdStream(io.RawIOBase):
    """Multi-frame zstd decoding that raises EOFError on a truncated frame (zstandard's
    stream_reader silently stops there, which would lose the rest of a file unnoticed)."""

    def __init__(self, raw: IO[bytes]):
        import zstandard

        self._raw, self._new = raw, zstandard.ZstdDecompressor().decompressobj
        self._d, self._buf, self._mid_frame = self._new(), b"", False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            chunk = self._raw.read(1 << 17)
            if not chunk:
                if self._mid_frame:
                    raise EOFError("zstd stream ended before the end of a frame (truncated file)")
                return 0
            out = []
            while chunk:
                if self._d.eof:
                    self._d = self._new()
                out.append(self._d.decompress(chunk))
                chunk = self._d.unused_data if self._d.eof else b""
            self._mid_frame = not self._d.eof
            self._buf = b"".join(out)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


@contextlib.contextmanager
def open_input(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open any local or remote file as a decompressed binary stream (compression sniffed)."""
    path = str(path)
    with open_url(path, "rb") as raw:
        buffered = raw if hasattr(raw, "peek") else io.BufferedReader(raw)
        head = buffered.peek(8)[:8]
        stream = _decompressor(buffered, sniff_compression(head))
        try:
            yield stream
        finally:
            if stream is not buffered:
                stream.close()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write to a temporary sibling and rename on success, so a killed job never leaves a
    file that looks complete. On object storage the same: the object is written under an
    attempt-unique temporary name and moved to its name only when whole (a writer that raises
    mid-file publishes nothing; some stores, e.g. memory://, show an object from its open)."""
    path = str(path)
    if not is_local(path):
        yield from remote_atomic_write(path, mode)
        return
    local = Path(path.removeprefix("file://"))
    tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        local.parent.mkdir(parents=True, exist_ok=True)
        f = open(tmp, mode)
    except OSError as e:  # read-only, immutable or full output directory: name it, once
        raise output_error(local, e) from None
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, local)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if e.errno in _DISK_FULL and not isinstance(e, OutputDirError):
            raise output_error(local, e) from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class LockHeld(Exception):
    """Another process holds the lock."""


def acquire_lock(path: str | os.PathLike) -> IO[str]:
    """Open `path` (created if missing) and take an exclusive advisory lock on it without waiting.
    The kernel drops the lock when its process dies, so a killed holder never blocks the next.
    Raises LockHeld while another process holds it, OSError when the file cannot be opened.
    Give the returned file to `release_lock`."""
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise LockHeld(str(path)) from None
    return f


def release_lock(f: IO[str]) -> None:
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open_url(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(*parts: str | bytes, seed: int = 0) -> int:
    """A 64-bit hash that is the same on every machine, process and run (unlike hash())."""
    h = hashlib.blake2b(digest_size=8, key=seed.to_bytes(8, "little"))
    for p in parts:
        h.update(p.encode("utf-8") if isinstance(p, str) else p)
        h.update(b"\x00")
    return int.from_bytes(h.digest(), "little")


def expand_inputs(patterns: str | list[str]) -> list[str]:
    """Expand globs/directories into a sorted list of files (sorted so runs are reproducible).
    Remote storage that cannot be listed (unreachable endpoint, refused credentials) is one
    StorageError naming the pattern, not the client library's own exception."""
    out: set[str] = set()
    for pat in [patterns] if isinstance(patterns, str) else patterns:
        try:
            out.update(_expand_inputs([pat]))
        except (InputError, OSError):
            raise
        except Exception as e:
            raise storage_error(str(pat), e) from None
    return sorted(out)


def _expand_inputs(patterns: str | list[str]) -> list[str]:
    if isinstance(patterns, str):
        patterns = [patterns]
    out: list[str] = []
    for pat in patterns:
        fs, p = fs_and_path(pat)
        proto = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
        prefix = "" if proto in ("file", "local") else f"{proto}://"
        if fs.isdir(p):
            found = [f for f in fs.find(p) if not Path(f).name.startswith(".")]
        elif any(c in p for c in "*?["):
            found = [f for f in fs.glob(p) if not Path(f).name.startswith("._")]  # macOS AppleDouble junk
            if not found:
                raise InputError(str(pat), "the pattern matches no file")
        elif fs.exists(p):
            found = [p]
        else:
            raise InputError(str(pat), "no such file or directory")
        out.extend(prefix + f for f in found)
    return sorted(set(out))
