"""text-clean's inputs, listed and split inside the pipeline.

The job graph holds the configured patterns (files, directories, globs, local or remote), not the
files they match (450k Common Crawl files would be ~11 MB of graph). The driver only checks that
each pattern matches something, cheaply, so that a mistake is still one line naming the pattern:

    patterns | list each (fsspec) | distinct | same relative name twice? use the full path
             | line-dedup group (Common Crawl) | parts of big files (readers/splits.py)
             | numbered lines (uncompressed JSON lines: lines before each part) -> one element per part

Every step is a pure function of the listing, so the elements (and with them every id and output
byte) do not depend on the order in which files are listed or on the worker count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import apache_beam as beam

from jamdata.config import Config, ConfigError
from jamdata.settings import load_settings, setting
from jamdata.io import InputError, absolute, expand_inputs, fs_and_path, is_local, storage_error
from jamdata.text.readers import READERS
from jamdata.text.readers.splits import Split, count_line_starts, is_multistream_index, number_splits, plan_splits


@dataclass(frozen=True)
class InputFile:
    source: str
    fmt: str
    path: str
    id_path: str = ""  # the path relative to its configured input directory (see input_id_path)
    group: str = ""  # its line-dedup group (Common Crawl), "" for none
    split: Split | None = None  # the part of the file this element reads; None: all of it


@dataclass(frozen=True)
class InputPattern:
    source: str
    fmt: str
    pattern: str  # as configured (ids are relative to it)
    where: str  # absolute for a local pattern: workers resolve relative paths against their own cwd


def input_id_path(pattern: str, path: str) -> str:
    """`path` relative to the directory its pattern names (the pattern itself, the directory part
    before the first wildcard, or a file's own name), so document ids do not depend on where the
    inputs live."""
    pattern, path = str(pattern).rstrip("/"), str(path)
    wild = min((i for i in (pattern.find(c) for c in "*?[") if i >= 0), default=-1)
    base = pattern[:wild].rsplit("/", 1)[0] if wild >= 0 else pattern
    if is_local(pattern):
        base, path = os.path.abspath(base.removeprefix("file://")), os.path.abspath(path.removeprefix("file://"))
    if path.startswith(base + "/"):
        return path[len(base) + 1 :]
    return path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class InputSettings:
    """One entry of `text.sources.<name>.inputs`."""

    format: str = setting(doc="raw format of the files", choices=tuple(READERS))
    paths: list[str] = setting(doc="files, directories or globs, local or URLs", one_or_many=True)


@dataclass(frozen=True)
class SourceSettings:
    """`text.sources.<name>`: a source's inputs, or one input given directly as {format, paths}."""

    inputs: list[InputSettings] | None = setting(None, "the source's inputs [{format, paths}, ...]")
    format: str | None = setting(None, "raw format, when the source is one input", choices=(*READERS, None))
    paths: list[str] | None = setting(
        None, "files, directories or globs, when the source is one input", one_or_many=True
    )


def _checked_paths(key: str, paths: list[str] | None, source: str) -> list[str]:
    """An input's `paths`; an empty one is a mistake, not a source with no files, so it fails here
    with the key named instead of silently dropping the source."""
    if paths is None:
        raise ConfigError(key, "missing (required)", source=source)
    if not paths or any(not str(p).strip() for p in paths):
        raise ConfigError(key, "empty: give at least one file, directory or glob (or remove the input)", source=source)
    return paths


def plan_patterns(text_cfg: Config) -> list[InputPattern]:
    """`text.sources`: {source: {inputs: [{format, paths}, ...]}} (or {format, paths} directly),
    each pattern checked to match at least one file (`probe`)."""
    sources = text_cfg.section("sources", required=True)
    out: list[InputPattern] = []
    for name in sources.data:
        src = sources.section(name)
        s = load_settings(SourceSettings, src)
        if s.inputs is not None:
            if not s.inputs:
                raise ConfigError(
                    f"{src.prefix}.inputs",
                    "empty: list at least one {format, paths} input (or remove the source)",
                    source=src.source,
                )
            entries: list[tuple[str, str, list[str] | None]] = [
                (f"{src.prefix}.inputs.{i}", e.format, e.paths) for i, e in enumerate(s.inputs)
            ]
        else:
            if s.format is None:
                raise ConfigError(
                    f"{src.prefix}.format", "missing (required)", allowed=list(READERS), source=src.source
                )
            entries = [(src.prefix, s.format, s.paths)]
        for where, fmt, paths in entries:
            for pattern in _checked_paths(f"{where}.paths", paths, src.source):
                out.append(
                    InputPattern(
                        name, fmt, str(pattern), absolute(str(pattern)) if is_local(str(pattern)) else str(pattern)
                    )
                )
    if not any([probe(p.where) for p in out]):
        raise ConfigError(sources.prefix, "no input files configured")
    return sorted(set(out), key=lambda p: (p.source, p.pattern, p.fmt))


def probe(pattern: str) -> bool:
    """Whether `pattern` matches a file, without listing all it matches where that can be avoided
    (a local glob or directory stops at its first file); a glob that matches nothing or a missing
    path is the InputError `expand_inputs` gives."""
    if not is_local(pattern):
        return bool(expand_inputs(pattern))  # object stores list by prefix: nothing cheaper
    import glob

    p = pattern.removeprefix("file://")
    if any(c in p for c in "*?["):
        for f in glob.iglob(p, recursive=True):
            if os.path.isfile(f) and not os.path.basename(f).startswith("._"):
                return True
        raise InputError(pattern, "the pattern matches no file")
    if os.path.isdir(p):
        return any(not n.startswith(".") for _, _, names in os.walk(p) for n in names)
    if os.path.exists(p):
        return True
    raise InputError(pattern, "no such file or directory")


def list_pattern(p: InputPattern) -> list[InputFile]:
    """The files a pattern matches (a Wikipedia multistream index is not an input of its own)."""
    try:
        paths = expand_inputs(p.where)
    except InputError:
        raise
    except Exception as e:  # the driver's probe saw it; a store that fails now is named the same way
        raise storage_error(p.where, e) from None
    return [
        InputFile(p.source, p.fmt, path, input_id_path(p.pattern, path))
        for path in paths
        if not (p.fmt == "wiki_xml" and is_multistream_index(path))
    ]


def file_key(f: InputFile) -> str:
    return "\x00".join((f.source, f.fmt, f.path, f.id_path))


def _unique_names(element) -> list[InputFile]:
    """Two inputs of one source with the same relative name are identified by their full path."""
    _, files = element
    files = sorted(files, key=file_key)
    if len(files) > 1:
        return [replace(f, id_path=f.path) for f in files]
    return files


def _parts(f: InputFile, split_bytes: int) -> list[InputFile]:
    try:
        splits = plan_splits(f.path, f.fmt, split_bytes)
    except InputError:
        splits = []  # an unusable multistream index: the dump is read whole, as without one
    return [replace(f, split=s) for s in splits] or [f]


def _count(f: InputFile) -> tuple[str, tuple[InputFile, int]]:
    assert f.split is not None  # only the parts of a split file are counted
    return file_key(f), (f, count_line_starts(f.path, f.split))


def _numbered(element) -> list[InputFile]:
    _, counted = element
    by_split = {f.split.start: f for f, _ in counted}
    return [replace(by_split[s.start], split=s) for s in number_splits([(f.split, n) for f, n in counted])]


class ListInputs(beam.PTransform):
    """InputPatterns -> one InputFile per file or part of a big file, with its line-dedup group
    (`group_of`: a PTransform of InputFiles -> (file key, group), or None)."""

    def __init__(self, split_bytes: int, group_of=None):
        super().__init__()
        self.split_bytes, self.group_of = split_bytes, group_of

    def expand(self, patterns):
        split_bytes = self.split_bytes
        files = (
            patterns
            | "List" >> beam.FlatMap(list_pattern)
            | "KeyFile" >> beam.Map(lambda f: (file_key(f), f))
            | "Distinct" >> beam.CombinePerKey(lambda fs: next(iter(fs)))
            | "ByName" >> beam.Map(lambda kf: (f"{kf[1].source}\x00{kf[1].id_path}", kf[1]))
            | "SameName" >> beam.GroupByKey()
            | "UniqueNames" >> beam.FlatMap(_unique_names)
        )
        if self.group_of is not None:
            groups = files | "Groups" >> self.group_of
            files = (
                ({"file": files | "KeyForGroup" >> beam.Map(lambda f: (file_key(f), f)), "group": groups})
                | "JoinGroups" >> beam.CoGroupByKey()
                | "WithGroup"
                >> beam.FlatMap(lambda kv: [replace(f, group=(kv[1]["group"] or [""])[0]) for f in kv[1]["file"]])
            )
        parts = files | "Split" >> beam.ParDo(_SplitFiles(split_bytes)).with_outputs("lines", main="whole")
        numbered = (
            parts.lines
            | "SpreadCounts" >> beam.Reshuffle()
            | "CountLines" >> beam.Map(_count)
            | "PartsOfFile" >> beam.GroupByKey()
            | "NumberLines" >> beam.FlatMap(_numbered)
        )
        return (parts.whole, numbered) | "AllParts" >> beam.Flatten()


class _SplitFiles(beam.DoFn):
    """A file -> its parts (tag "lines": parts whose first line number is still to be counted)."""

    def __init__(self, split_bytes: int):
        self.split_bytes = split_bytes

    def process(self, f: InputFile):
        try:
            parts = _parts(f, self.split_bytes)
        except Exception:  # unreadable here: the reader reports it as a reject of the whole file
            parts = [f]
        for part in parts:
            if part.split is not None and part.split.kind == "lines":
                yield beam.pvalue.TaggedOutput("lines", part)
            else:
                yield part


def file_bytes(f: InputFile) -> int:
    """The raw bytes an element reads (its part, or the whole file's size; 0 if unreadable)."""
    if f.split is not None:
        return f.split.nbytes
    try:
        fs, p = fs_and_path(f.path)
        return int(fs.size(p))
    except Exception:  # the read already reported it
        return 0
