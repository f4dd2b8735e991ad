"""Where files live: every path is an fsspec URL (a local path is a URL without a scheme), opened
with the storage options of its prefix. jamdata/io.py re-exports all of this; it is the one place
where storage options are applied.

Storage options are fsspec arguments (endpoint, credentials, profile, ...) by URL prefix. The driver
sets them from `run.storage_options` (jamdata/config.py `storage_setting`), merged over
JAM_STORAGE_OPTIONS from the environment, and exports them in that variable, so Beam worker
processes started from it apply the same options. Never `pathlib` on a URL: it folds `s3://b` to
`s3:/b` and a job would write a local folder named `s3:`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import re
import uuid
from typing import IO, Iterator

import fsspec
from jamdata.errors import UserError


def is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def url_scheme(path: str) -> str | None:
    """`gs` for `gs://b/x`; None for a plain path (`file://` counts as a plain path)."""
    m = _URL.match(path)
    return None if m is None or m.group(1).lower() == "file" else m.group(1).lower()


TMP_MARK = ".tmp-"  # in the name of a file or object that is being written (never part of a dataset)


def remote_atomic_write(url: str, mode: str) -> Iterator[IO]:
    """The object-storage half of io.atomic_write (a generator it delegates to): the object is
    written under an attempt-unique temporary name and moved to `url` only when whole."""
    fs, p = fs_and_path(url)
    tmp = posixpath.join(
        posixpath.dirname(p), f".{posixpath.basename(p)}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    )
    try:
        raw = fs.open(tmp, "wb")
    except Exception as e:  # unreachable endpoint, no bucket, no credentials: name the URL once
        raise storage_error(url, e) from None
    f = raw if "b" in mode else io.TextIOWrapper(raw, encoding="utf-8", newline="")

    def drop() -> None:
        with contextlib.suppress(Exception):
            raw.discard()  # abort a multipart upload: nothing of this attempt is published
        with contextlib.suppress(Exception):
            raw.closed = True  # and a later close (garbage collection) uploads nothing either
        with contextlib.suppress(Exception):
            fs.rm(tmp)

    try:
        yield f
    except BaseException:  # the writer failed: its exception, unchanged, and no object
        drop()
        raise
    try:
        f.close()  # uploads the whole temporary object
        fs.mv(tmp, p)
    except BaseException as e:
        drop()
        if isinstance(e, Exception) and not isinstance(e, OSError):
            raise storage_error(url, e) from None
        raise


# -- storage options ---------------------------------------------------------------------------------
# fsspec arguments (endpoint, credentials profile, ...) by URL prefix, applied to every remote path
# opened through this module. The driver sets them from `run.storage_options`; they are exported in
# JAM_STORAGE_OPTIONS (JSON) so Beam worker processes started from it apply the same options.
STORAGE_ENV = "JAM_STORAGE_OPTIONS"
_storage: dict[str, dict] | None = None


class StorageError(UserError, OSError):
    """Remote storage that cannot be used (unreachable endpoint, missing bucket, refused
    credentials); the message names the URL, so the command line prints one clear line."""


def storage_error(url: str, e: BaseException) -> StorageError:
    if isinstance(e, StorageError):
        return e
    text = " ".join(str(e).split()) or type(e).__name__
    return StorageError(f"cannot use {url}: {type(e).__name__}: {text}")


def _prefix_key(prefix: str) -> str:
    prefix = str(prefix).strip()
    return prefix if prefix.endswith("://") else prefix.rstrip("/")


def set_storage_options(options: dict | None) -> None:
    """Use `options` ({URL prefix: {fsspec argument: value}}) from now on, in this process and in
    worker processes it starts. The longest matching prefix wins; `s3://` alone covers all of S3."""
    global _storage
    clean: dict[str, dict] = {}
    for prefix, kwargs in (options or {}).items():
        if not isinstance(prefix, str) or not url_scheme(prefix) or not isinstance(kwargs, dict):
            raise ValueError(
                f"run.storage_options: {prefix!r} must be a URL prefix (s3://bucket) mapping to fsspec arguments"
            )
        clean[_prefix_key(prefix)] = dict(kwargs)
    _storage = clean
    if clean:
        os.environ[STORAGE_ENV] = json.dumps(clean, sort_keys=True)
    else:
        os.environ.pop(STORAGE_ENV, None)


def _parse_storage(text: str | None) -> dict[str, dict]:
    try:
        return {_prefix_key(k): dict(v) for k, v in json.loads(text).items()} if text and text.strip() else {}
    except (ValueError, AttributeError, TypeError) as e:
        from jamdata.config import ConfigError  # one line at the command line, naming the variable

        raise ConfigError(STORAGE_ENV, f"not a JSON object of URL prefix -> fsspec arguments ({e})") from None


_ENV_AT_START = os.environ.get(STORAGE_ENV)


def environment_storage_options() -> dict[str, dict]:
    """The options this process was started with (JAM_STORAGE_OPTIONS); fsspec's own variables
    (FSSPEC_S3_ENDPOINT_URL, ...) and the clients' credential chains apply as well."""
    return _parse_storage(_ENV_AT_START)


def _current_storage() -> dict[str, dict]:
    global _storage
    if _storage is None:
        _storage = _parse_storage(os.environ.get(STORAGE_ENV))
    return _storage


def storage_options(url: str | os.PathLike) -> dict:
    """The fsspec arguments for `url` (empty for local paths and unlisted URLs)."""
    url = str(url)
    if is_local(url):
        return {}
    best = None
    storage = _current_storage()
    for prefix in storage:
        hit = url.startswith(prefix) if prefix.endswith("://") else (url == prefix or url.startswith(prefix + "/"))
        if hit and (best is None or len(prefix) > len(best)):
            best = prefix
    return dict(storage[best]) if best is not None else {}


def open_url(url: str | os.PathLike, mode: str = "rb", **kwargs):
    """fsspec.open with the storage options of `url` (a context manager giving the file)."""
    return fsspec.open(str(url), mode, **{**storage_options(url), **kwargs})


def absolute(url: str | os.PathLike) -> str:
    """A local path made absolute here, in the driver (Beam workers resolve relative paths
    against their own working directory); a URL as it is, without a trailing slash."""
    url = str(url)
    if url_scheme(url):
        return url if url.endswith("://") else url.rstrip("/")
    return os.path.abspath(url.removeprefix("file://"))


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base/part/...` for a path or URL (never through pathlib, which folds `gs://` to `gs:/`)."""
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def exists(url: str | os.PathLike) -> bool:
    fs, p = fs_and_path(url)
    try:
        return fs.exists(p)
    except Exception as e:  # unreachable endpoint and the like
        raise storage_error(str(url), e) from None


def list_dirs(url: str | os.PathLike) -> list[str]:
    """Names of the directories (prefixes, on object storage) directly under `url`, sorted; none
    when `url` is not a directory."""
    fs, p = fs_and_path(url)
    try:
        if not fs.isdir(p):
            return []
        return sorted(
            posixpath.basename(e["name"].rstrip("/")) for e in fs.ls(p, detail=True) if e.get("type") == "directory"
        )
    except FileNotFoundError:
        return []
    except Exception as e:
        if isinstance(e, OSError) and is_local(url):
            raise
        raise storage_error(str(url), e) from None


def read_bytes(url: str | os.PathLike) -> bytes:
    with open_url(url, "rb") as f:
        return f.read()


def fs_and_path(path: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        fs, p = fsspec.core.url_to_fs(str(path), **storage_options(path))
    except (ImportError, ValueError) as e:  # no client library for the scheme (gcsfs, s3fs), bad options
        if is_local(path):
            raise
        raise storage_error(str(path), e) from None
    return fs, p
