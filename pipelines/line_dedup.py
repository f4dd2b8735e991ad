"""CCNet line dedup over groups of Common Crawl files, bounded per element.

CCNet groups the ~1,600 shards of a dump into groups of ~50 files and removes every copy of a line
that occurs in several documents of a group (boilerplate: menus, cookie banners, footers). Within
one file (`text.clean.line_dedup_min_docs`, jamdata/text/clean.py) a worker can count a file's
lines itself; over a group it cannot hold the group's documents, so here:

    (group, doc) --distinct line hashes--> ((group, h), 1) --CombinePerKey(sum)--> boilerplate keys
    (group, doc) --distinct line hashes--> ((group, h), doc key)  ─┐
    boilerplate keys ((group, h), BOILER) ───────────────────────── GroupByKey: streamed twice
        (first pass: is the key boilerplate?  second: each doc key) -> (doc key, h)
    (doc key, doc) + (doc key, [h...]) --CoGroupByKey--> the document without those lines

Elements: one document, one line-hash count (combined), one (doc key, hash) pair, or one document
with its own removed hashes. The GroupByKey values of a frequent line (one doc key per document
that has it) are iterated, never listed (runners page large groups in lazily).

Line dedup within one file (`line_dedup_group_files` 0) is the same with a group per file, so no
element holds a whole file's documents either (a WET file is ~30k of them).

Documents come in as read, not yet cleaned: lines are removed from the raw text and the result is
normalised once (clean._clean_one), as jamdata/text/clean.clean_records does in one process.

Line keys are `stable_hash` of CCNet's normalised line (clean.line_keys): they must agree
across worker processes, unlike the in-process path's `hash()`.
"""

from __future__ import annotations

from typing import Iterator

import apache_beam as beam

from jamdata.io import stable_hash
from jamdata.text.readers.common import order_key
from jamdata.text.clean import CLEANER_OF_FORMAT, CleanOptions, _clean_one, _clean_reject, line_keys

_BOILER = "\x00boilerplate"  # marks a boilerplate key among the doc keys of its GroupByKey


def ccnet_format(fmt: str) -> bool:
    return CLEANER_OF_FORMAT.get(fmt) == "ccnet"


def assign_groups(files, group_files: int) -> dict[str, str]:
    """{file key: group name} for the Common Crawl files (WARC/WET) of each source: the source's
    files sorted by their id path (stable wherever the inputs live), `group_files` per group, or
    (`group_files` 0) a group per file. Other formats get no group."""
    from pipelines.text_inputs import file_key

    by_source: dict[str, list] = {}
    for f in files:
        if ccnet_format(f.fmt):
            by_source.setdefault(f.source, []).append(f)
    groups = {}
    for source, fs in by_source.items():
        for i, f in enumerate(sorted(fs, key=lambda f: (f.id_path, f.fmt, f.path))):
            groups[file_key(f)] = f"{source}/{i // group_files:05d}" if group_files else f"{source}/{f.path}"
    return groups


class AssignGroups(beam.PTransform):
    """InputFiles -> (file key, group name) for the Common Crawl ones (see assign_groups). Groups of
    several files need each source's sorted list of file names (names only, not documents)."""

    def __init__(self, group_files: int):
        super().__init__()
        self.group_files = group_files

    def expand(self, files):
        n = self.group_files
        cc = files | "CommonCrawl" >> beam.Filter(lambda f: ccnet_format(f.fmt))
        if not n:
            return cc | "OwnGroup" >> beam.FlatMap(lambda f: assign_groups([f], 0).items())
        return (
            cc
            | "BySource" >> beam.Map(lambda f: (f.source, f))
            | "SourceFiles" >> beam.GroupByKey()
            | "Group" >> beam.FlatMap(lambda kv: sorted(assign_groups(list(kv[1]), n).items()))
        )


def stable_line_keys(text: str, min_chars: int) -> list[int | None]:
    """One process-independent key per line of `text` (None: empty, or `min_chars` or shorter)."""
    return line_keys(text, min_chars, key=stable_hash)


def _distinct_keys(doc: dict, min_chars: int) -> set[int]:
    return {k for k in stable_line_keys(doc["text"], min_chars) if k is not None}


def _boiler_docs(element) -> Iterator[tuple[str, int]]:
    """((group, h), [BOILER?, doc keys...]) -> (doc key, h) for each document, if boilerplate."""
    (_, h), values = element
    if not any(v == _BOILER for v in values):
        return
    for v in values:
        if v != _BOILER:
            yield v, h


class _FilterLines(beam.DoFn):
    """(doc key, {docs: [doc...], drop: [h...]}) -> the document as read without its boilerplate
    lines, cleaned (normalised), or a clean REJECT when nothing is left."""

    def __init__(self, copts: CleanOptions):
        self.copts = copts

    def process(self, element):
        _, joined = element
        drop = set(joined["drop"])
        for doc in joined["docs"]:
            lines = doc["text"].split("\n")
            keys = stable_line_keys(doc["text"], self.copts.line_dedup_min_chars)
            kept = [l for l, k in zip(lines, keys) if k is None or k not in drop]
            removed = len(lines) - len(kept)
            out, reason = _clean_one({**doc, "text": "\n".join(kept)}, "none", self.copts)
            if out is None:
                yield beam.pvalue.TaggedOutput(
                    "rejects", _clean_reject(doc, "only boilerplate lines" if removed else reason)
                )
                continue
            if removed:
                out["metadata"] = {**out["metadata"], "boilerplate_lines_removed": removed}
            yield out


class GroupLineDedup(beam.PTransform):
    """PCollection of (group, doc) -> (docs, REJECTs): lines in at least `min_docs` documents of a
    group removed from every document of that group."""

    def __init__(self, copts: CleanOptions):
        super().__init__()
        self.copts = copts

    def expand(self, grouped):
        min_docs, min_chars = self.copts.line_dedup_min_docs, self.copts.line_dedup_min_chars
        keyed = grouped | "KeyDoc" >> beam.Map(lambda gd: (order_key(gd[1]), gd))
        line_docs = keyed | "LineDocKeys" >> beam.FlatMap(
            lambda kv: [((kv[1][0], h), kv[0]) for h in sorted(_distinct_keys(kv[1][1], min_chars))]
        )
        boiler = (
            line_docs
            | "One" >> beam.Map(lambda kv: (kv[0], 1))
            | "CountLines" >> beam.CombinePerKey(sum)
            | "Frequent" >> beam.Filter(lambda kv: kv[1] >= min_docs)
            | "Mark" >> beam.Map(lambda kv: (kv[0], _BOILER))
        )
        drops = (
            (line_docs, boiler)
            | "LinesAndMarks" >> beam.Flatten()
            | "ByLine" >> beam.GroupByKey()
            | "DocsToDrop" >> beam.FlatMap(_boiler_docs)
        )
        docs = keyed | "DocByKey" >> beam.Map(lambda kv: (kv[0], kv[1][1]))
        out = (
            {"docs": docs, "drop": drops}
            | "JoinDrops" >> beam.CoGroupByKey()
            | "FilterLines" >> beam.ParDo(_FilterLines(self.copts)).with_outputs("rejects", main="docs")
        )
        return out.docs, out.rejects
