"""File access shared by every stage: content-sniffed decompression, atomic writes, locks, hashes.

All paths go through fsspec so that local paths, gs:// and s3:// behave the same.
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
import posixpath
import stat
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Iterator

from jamdata.errors import UserError
from jamdata.storage import (STORAGE_ENV, TMP_MARK, StorageError, absolute, environment_storage_options,  # noqa: F401
                             exists, fs_and_path, is_local, join, list_dirs, open_url, read_bytes,
                             remote_atomic_write, set_storage_options, storage_error, storage_options,
                             url_scheme)

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
        return gzip.GzipFile(fileobj=raw)  # handles multi-member gzip (WARC/WET)
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


# -- files named inside data records ---------------------------------------------------------------
# A data row (a jsonl line, a parquet row, a how-to step) may name an image file to read. Those
# names come from the data, not from the operator, so they are confined: only regular files under
# the configured roots, no remote fetch unless its scheme is allowed, and a size limit checked
# before anything is read.
DEFAULT_MAX_INPUT_BYTES = 32 << 20


class InputRefused(Exception):
    """A file named inside a data record that may not be read. `reason` is a short code for the
    rejects dataset; the message names the path and why, never the file's content."""

    def __init__(self, path: str, reason: str, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.reason, self.why = path, reason, why


@dataclass(frozen=True)
class InputPolicy:
    """Where files named by data rows may come from: paths and URLs under `roots`, plus URLs whose
    scheme is in `allow_schemes` (empty: nothing is fetched from elsewhere); at most `max_bytes`
    bytes per file."""

    roots: tuple[str, ...] = ()
    allow_schemes: tuple[str, ...] = ()
    max_bytes: int = DEFAULT_MAX_INPUT_BYTES

    def with_root(self, root: str) -> "InputPolicy":
        """The same policy with one more root (e.g. the directory of the table naming the files)."""
        return replace(self, roots=(str(root),) + tuple(self.roots))


def parent_dir(path: str | os.PathLike) -> str:
    """The directory holding a file, as an absolute local path or a URL of the same scheme."""
    path = str(path)
    if url_scheme(path):
        return posixpath.dirname(path)
    return os.path.dirname(os.path.abspath(path.removeprefix("file://")))


def _normal_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme.lower()}://{posixpath.normpath(rest)}"


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _local_roots(policy: InputPolicy, real: bool) -> list[str]:
    roots = [os.path.abspath(r.removeprefix("file://")) for r in policy.roots if not url_scheme(r)]
    return [os.path.realpath(r) for r in roots] if real else roots


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink"))


def _file_kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _check_regular(shown: str, st: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise InputRefused(shown, "not_regular_file", f"is {_file_kind(st.st_mode)}, only regular files are read")
    if st.st_size > max_bytes:
        raise InputRefused(shown, "file_too_large", f"{st.st_size} bytes, more than the limit of {max_bytes}")


def _read_at_most(f: IO[bytes], shown: str, max_bytes: int) -> bytes:
    data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputRefused(shown, "file_too_large", f"more than the limit of {max_bytes} bytes")
    return data


def _confine_local(ref: str, base_dir: str, policy: InputPolicy) -> str:
    """The real path of a local name, confined lexically (no `..` or absolute path out of the
    roots) and again after resolving symlinks."""
    plain = ref.removeprefix("file://")
    full = os.path.abspath(os.path.join(base_dir, plain))
    if not any(_under(full, r) for r in _local_roots(policy, real=False)):
        why = "'..' leads" if ".." in plain.split("/") else "the path is"
        raise InputRefused(ref, "outside_roots", f"{why} outside the input roots ({full})")
    real = os.path.realpath(full)
    if not any(_under(real, r) for r in _local_roots(policy, real=True)):
        raise InputRefused(ref, "symlink_outside_roots", f"a symlink leads outside the input roots (to {real})")
    return real


def _read_local(ref: str, base_dir: str, policy: InputPolicy) -> bytes:
    """Confine the name, then check the file type and size with lstat before opening, and again
    on the open descriptor (O_NOFOLLOW | O_NONBLOCK: a swapped-in symlink or FIFO cannot block or
    redirect the read)."""
    real = _confine_local(ref, base_dir, policy)
    before = os.lstat(real)
    _check_regular(ref, before, policy.max_bytes)
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        after = os.fstat(fd)
        _check_regular(ref, after, policy.max_bytes)
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise InputRefused(ref, "not_regular_file", "the file changed while it was being opened")
        return _read_at_most(f, ref, policy.max_bytes)


def _confine_remote(url: str, policy: InputPolicy) -> None:
    """A URL under a remote root, or of an allowed scheme; chained fsspec URLs (`a::b`) never."""
    scheme = url_scheme(url)
    remote_roots = [_normal_url(r) for r in policy.roots if url_scheme(r)]
    if "::" not in url and (scheme in policy.allow_schemes or any(_under(_normal_url(url), r) for r in remote_roots)):
        return
    if "::" not in url and any(url_scheme(r) == scheme for r in remote_roots):
        raise InputRefused(url, "outside_roots", f"outside the input roots ({_normal_url(url)})")
    allowed = ", ".join(policy.allow_schemes) or "none"
    raise InputRefused(url, "scheme_not_allowed", f"{scheme}:// is not under the input roots and not an "
                                                  f"allowed scheme (allowed: {allowed})")


def _read_remote(url: str, policy: InputPolicy) -> bytes:
    _confine_remote(url, policy)
    try:
        fs, p = fs_and_path(url)
        info = fs.info(p)
        if info.get("type") not in (None, "file"):
            raise InputRefused(url, "not_regular_file", f"is a {info.get('type')}, only files are read")
        if isinstance(info.get("size"), int) and info["size"] > policy.max_bytes:
            raise InputRefused(url, "file_too_large",
                               f"{info['size']} bytes, more than the limit of {policy.max_bytes}")
        with fs.open(p, "rb") as f:
            return _read_at_most(f, url, policy.max_bytes)
    except (InputRefused, OSError):
        raise
    except Exception as e:  # remote backends raise their own types; the record is unreadable, not the job
        raise OSError(f"{url}: {type(e).__name__}: {e}") from None


def _remote_name(ref: str, base_dir: str) -> str:
    """A URL as it is, or a relative name in a remote table as the URL beside that table."""
    if url_scheme(ref):
        return ref
    if ref.startswith("/"):
        raise InputRefused(ref, "outside_roots", "an absolute local path named by a remote table")
    return posixpath.join(base_dir, ref)


def _check_name(ref: object) -> None:
    if not isinstance(ref, str) or not ref or "\x00" in ref:
        raise InputRefused(repr(ref), "bad_path", "not a usable path")


def confined_path(ref: str, base_dir: str, policy: InputPolicy) -> str:
    """Where `ref` may be opened (a real local path or a URL), without reading it: for a
    container such as a tar file whose members are then read (its own size is not limited).
    Raises InputRefused like read_confined; a local path must be a regular file."""
    _check_name(ref)
    if url_scheme(ref) or url_scheme(base_dir):
        url = _remote_name(ref, base_dir)
        _confine_remote(url, policy)
        return url
    real = _confine_local(ref, base_dir, policy)
    st = os.lstat(real)
    if not stat.S_ISREG(st.st_mode):
        raise InputRefused(ref, "not_regular_file", f"is {_file_kind(st.st_mode)}, only regular files are read")
    return real


def read_confined(ref: str, base_dir: str, policy: InputPolicy) -> bytes:
    """The bytes of the file a data record names (`ref`: relative to `base_dir`, absolute, or a
    URL). Raises InputRefused (with a reason code) for a name the policy does not allow, and
    OSError for a file that is allowed but missing or unreadable."""
    _check_name(ref)
    if url_scheme(ref) or url_scheme(base_dir):
        return _read_remote(_remote_name(ref, base_dir), policy)
    return _read_local(ref, base_dir, policy)
