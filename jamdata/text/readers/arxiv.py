"""arXiv e-print sources: a gzip'd tar or a single gzip'd .tex per paper, or a bulk tar of such
papers; the main .tex with its `\\input`s inlined, within size and depth limits."""

from __future__ import annotations

import gzip
import io
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, Iterator, cast

from jamdata.text.readers.common import ReadOptions, _Cursor, _open, _read_bounded, make_doc, make_reject


class ExpansionLimit(ValueError):
    """A paper that expands past a limit: a tar that unpacks to too much, .tex files too large
    together, or `\\input`s that fan out or nest too deep (decompression and inclusion bombs)."""


_MAX_INPUTS = 10_000  # \input inclusions in one paper (real papers have tens)


class _Prefixed(io.RawIOBase):
    """`head` then the rest of `f`, raising ExpansionLimit once more than `limit` bytes are read
    (tar members skipped unread must still be decompressed to get past them)."""

    def __init__(self, head: bytes, f: IO[bytes], limit: int):
        self.head, self.f, self.limit, self.read_bytes = head, f, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
        else:
            data = self.f.read(len(b))
            n = len(data)
            b[:n] = data
        self.read_bytes += n
        if self.read_bytes > self.limit:
            raise ExpansionLimit(f"the archive unpacks to more than {self.limit} bytes")
        return n


_TEX_SUFFIXES = (".tex", ".ltx", ".latex")
_DOCCLASS = re.compile(r"^[^%\n]*\\document(class|style)\b", re.M)
_BEGIN_DOC = re.compile(r"^[^%\n]*\\begin\{document\}", re.M)
_INPUT = re.compile(r"\\(input|include|subfile)\s*\{\s*([^}]+?)\s*\}|\\input\s+([^\s{}\\]+)")


def _decode_tex(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # pre-UTF-8 LaTeX sources are commonly latin-1


def find_main_tex(files: dict[str, str]) -> str | None:
    """The file with \\documentclass (prefer one with \\begin{document}, then main/ms names, then the
    largest); with no \\documentclass anywhere, the only file if there is exactly one."""
    cands = [n for n, t in files.items() if _DOCCLASS.search(t)]
    if not cands:
        return next(iter(files)) if len(files) == 1 else None

    def rank(n: str):
        stem = PurePosixPath(n).stem.lower()
        return (not _BEGIN_DOC.search(files[n]), stem not in ("main", "ms", "paper", "article"), -len(files[n]), n)

    return sorted(cands, key=rank)[0]


def resolve_inputs(files: dict[str, str], main: str, max_depth: int = 8, max_chars: int = 16 << 20) -> str:
    """Inline \\input / \\include / \\subfile targets (relative to the archive root or the including
    file, `.tex` optional); missing targets are left out, cycles cut.

    Raises ExpansionLimit when the inlined text would exceed `max_chars`, inputs nest deeper than
    `max_depth`, or more than _MAX_INPUTS inclusions are made: a few hundred bytes of `\\input`s
    that fan out can otherwise expand to gigabytes. The budget is charged before each file is
    inlined, so a bomb stops after at most `max_chars` of work."""
    names = {PurePosixPath(n).as_posix().removeprefix("./"): n for n in files}
    spent = {"chars": 0, "inputs": 0}

    def lookup(target: str, here: str) -> str | None:
        target = target.strip().strip('"')
        base = PurePosixPath(here).parent
        for cand in (target, f"{target}.tex", str(base / target), f"{base / target}.tex"):
            key = PurePosixPath(cand).as_posix().removeprefix("./")
            if key in names:
                return names[key]
        return None

    def charge(name: str) -> None:
        spent["chars"] += len(files[name])
        spent["inputs"] += 1
        if spent["chars"] > max_chars:
            raise ExpansionLimit(f"\\input expansion over {max_chars} characters")
        if spent["inputs"] > _MAX_INPUTS:
            raise ExpansionLimit(f"more than {_MAX_INPUTS} \\input inclusions")

    def expand(name: str, depth: int, stack: tuple[str, ...]) -> str:
        charge(name)
        text = files[name]

        def sub(m: re.Match) -> str:
            line_start = text.rfind("\n", 0, m.start()) + 1
            if "%" in re.sub(r"\\%", "", text[line_start : m.start()]):
                return m.group(0)  # commented out
            target = m.group(2) or m.group(3)
            found = lookup(target, name)
            if found is None or found in stack:
                return ""
            if depth >= max_depth:
                raise ExpansionLimit(f"\\input nested deeper than {max_depth} levels")
            return expand(found, depth + 1, stack + (found,))

        return _INPUT.sub(sub, text)

    return expand(main, 0, (main,))


def _arxiv_id(name: str) -> str:
    return re.sub(r"(\.(tar|gz|tgz|tex|zip))+$", "", PurePosixPath(name).name)


@dataclass
class _Sources:
    """What one arXiv tar holds: .tex files, gzip'd papers (a bulk tar) and rejects of members."""

    files: dict[str, str] = field(default_factory=dict)
    nested: list[tuple[str, int, bytes]] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)


def _tar_sources(
    f: IO[bytes], head: bytes, path: str, source: str, opts: ReadOptions, cur: _Cursor, member: str | None
) -> _Sources:
    """The .tex files (and, at the top level, gzip'd papers) of a tar stream, within the limits:
    each member at most max_record_bytes, the .tex files together at most max_record_bytes, the
    whole tar at most max_archive_bytes unpacked (else ExpansionLimit)."""
    where = f"{member}: " if member else ""
    out, tex_bytes, expected = _Sources(), 0, 0
    stream = io.BufferedReader(_Prefixed(head, f, opts.max_archive_bytes))
    # ignore_zeros: past a damaged member header, go on block by block to the next good header
    # (tarfile would otherwise end the archive there without a word)
    with tarfile.open(fileobj=stream, mode="r|", ignore_zeros=True) as tar:
        for m in tar:
            if member is None:
                cur.offset = m.offset
            if m.offset > expected:
                out.rejects.append(
                    make_reject(
                        source,
                        "read",
                        f"bad_tar_header: {where}{m.offset - expected} bytes at offset {expected} "
                        "skipped to the next member header (a damaged header and its member)",
                        None,
                        path,
                        expected,
                    )
                )
            expected = m.offset_data + -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            low = m.name.lower()
            if not m.isfile() or not (low.endswith(_TEX_SUFFIXES) or (member is None and low.endswith(".gz"))):
                continue
            if low.rsplit("/", 1)[-1].startswith("._") or "__macosx/" in low:
                continue  # macOS AppleDouble metadata (`._main.tex`), not a source file
            if m.size > opts.max_record_bytes:
                out.rejects.append(
                    make_reject(
                        source,
                        "read",
                        f"{where}{m.name}: longer than {opts.max_record_bytes} bytes",
                        None,
                        path,
                        cur.offset,
                    )
                )
                continue
            member_file = tar.extractfile(m)
            if member_file is None:  # not reached: only regular files get here
                continue
            data = member_file.read()
            if low.endswith(".gz"):
                out.nested.append((m.name, m.offset, data))
                continue
            tex_bytes += len(data)
            if tex_bytes > opts.max_record_bytes:
                raise ExpansionLimit(f"the .tex files hold more than {opts.max_record_bytes} bytes")
            out.files[m.name] = _decode_tex(data)
    return out


def _read_paper(
    f: IO[bytes], path: str, source: str, opts: ReadOptions, cur: _Cursor, arxiv_id: str, member: str | None = None
) -> Iterator[dict]:
    """One paper from a decompressed stream: a tar of sources or a single .tex. A tar holding
    gzip'd papers instead of .tex files (arXiv's bulk source tars) yields each of those papers.
    A paper past a limit (see ExpansionLimit) is one `expansion_limit` REJECT."""
    try:
        yield from _paper(f, path, source, opts, cur, arxiv_id, member)
    except ExpansionLimit as e:
        where = f"{member}: " if member else ""
        yield make_reject(source, "read", f"expansion_limit: {where}{e}", None, path, cur.offset if member else 0)


def _paper(
    f: IO[bytes], path: str, source: str, opts: ReadOptions, cur: _Cursor, arxiv_id: str, member: str | None
) -> Iterator[dict]:
    where = f"{member}: " if member else ""
    head = f.read(512)
    if len(head) >= 262 and head[257:262] == b"ustar":
        got = _tar_sources(f, head, path, source, opts, cur, member)
        yield from got.rejects
        files = got.files
        if not files and got.nested:
            yield from _nested_papers(got.nested, path, source, opts, cur)
            return
    else:
        rest = _read_bounded(f, max(0, opts.max_record_bytes - len(head)))
        if rest is None:
            yield make_reject(
                source, "read", f"{where}file longer than {opts.max_record_bytes} bytes", None, path, cur.offset
            )
            return
        data = head + rest
        if b"\x00" in data[:8192] or data.startswith(b"%PDF"):
            yield make_reject(
                source,
                "read",
                f"{where}not a tar archive or a .tex file (binary content)",
                data[:200],
                path,
                cur.offset,
            )
            return
        files = {f"{arxiv_id}.tex": _decode_tex(data)}
    if not files:
        yield make_reject(source, "read", f"{where}archive has no .tex file", None, path, cur.offset if member else 0)
        return
    main = find_main_tex(files)
    if main is None:
        yield make_reject(
            source,
            "read",
            f"{where}no main .tex file (no \\documentclass in {sorted(files)[:5]})",
            None,
            path,
            cur.offset if member else 0,
        )
        return
    text = resolve_inputs(files, main, opts.max_input_depth, opts.max_record_bytes)
    meta = {"arxiv_id": arxiv_id, "main_file": main, "tex_files": len(files), "file": path}
    if member:
        meta.update(member=member, offset=cur.offset)
    yield make_doc(source, cur.id_path, arxiv_id, text, f"https://arxiv.org/abs/{arxiv_id}", meta)


def _nested_papers(
    nested: list[tuple[str, int, bytes]], path: str, source: str, opts: ReadOptions, cur: _Cursor
) -> Iterator[dict]:
    """The gzip'd papers of a bulk tar, each on its own: one that cannot be read is one REJECT."""
    for name, offset, data in nested:
        cur.offset = offset
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as g:
                yield from _read_paper(cast(IO[bytes], g), path, source, opts, cur, _arxiv_id(name), member=name)
        except Exception as e:  # corrupt gzip (zlib.error, OSError), broken tar...
            yield make_reject(source, "read", f"{name}: unreadable: {type(e).__name__}: {e}"[:500], None, path, offset)


def read_arxiv(path: str, source: str, opts: ReadOptions, cur: _Cursor) -> Iterator[dict]:
    """One paper per file (a gzip'd tar of sources or a single gzip'd .tex), or a bulk tar of
    gzip'd papers."""
    with _open(path, cur) as f:
        yield from _read_paper(f, path, source, opts, cur, _arxiv_id(path))
