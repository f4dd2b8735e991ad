"""Files named inside data records. A data row (a jsonl line, a parquet row, a how-to step) may name
an image file to read. Those names come from the data, not from the operator, so they are confined:
only regular files under the configured roots, no remote fetch unless its scheme is allowed, and a
size limit checked before anything is read."""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass, replace
from typing import IO

from jamdata.storage import fs_and_path, url_scheme

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


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symlink"),
)


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
    raise InputRefused(
        url,
        "scheme_not_allowed",
        f"{scheme}:// is not under the input roots and not an allowed scheme (allowed: {allowed})",
    )


def _read_remote(url: str, policy: InputPolicy) -> bytes:
    _confine_remote(url, policy)
    try:
        fs, p = fs_and_path(url)
        info = fs.info(p)
        if info.get("type") not in (None, "file"):
            raise InputRefused(url, "not_regular_file", f"is a {info.get('type')}, only files are read")
        if isinstance(info.get("size"), int) and info["size"] > policy.max_bytes:
            raise InputRefused(
                url, "file_too_large", f"{info['size']} bytes, more than the limit of {policy.max_bytes}"
            )
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
