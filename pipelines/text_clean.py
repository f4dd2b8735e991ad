"""Beam pipeline: raw text sources -> read -> clean -> filter -> dedup -> documents + rejects.

    patterns | list + split (pipelines/text_inputs.py: one element per file, or per part of a big
    file) | Reshuffle | read + clean (per element) | line dedup (Common Crawl) | filters | dedup
        -> text-clean/<source>/part-NNNNN.parquet (DOCUMENT) + manifest (funnel in `summary`)
        -> text-clean-rejects/<source>/part-NNNNN.parquet (REJECT) + manifest

The funnel counts documents and UTF-8 bytes leaving each stage per source ("read" also counts the
records and compressed file bytes that went in), so every dropped document is accounted for in
the rejects under the stage that dropped it. The filter step is pipelines/text_filters.py, the
funnel's sums and summary pipelines/text_funnel.py.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Iterable

import apache_beam as beam

from jamdata.config import Config
from jamdata.io import absolute
from jamdata.manifest import build_manifest, output_dir, read_manifest, write_manifest
from jamdata.text.clean import CleanOptions, clean_records
from jamdata.text.readers import ReadOptions, is_reject, read_file
from jamdata.text.readers.common import order_key
from pipelines.common import ShardsFromBytes, WriteShards, parquet_shard_writer
from pipelines.line_dedup import AssignGroups, GroupLineDedup
from pipelines.text_inputs import InputFile, InputPattern, ListInputs, file_bytes, plan_patterns
from pipelines import progress
from pipelines.options import pipeline_options
from pipelines.text_clean_settings import clean_settings
from pipelines.text_filters import ApplyFilters, check_filters
from pipelines.text_funnel import (
    FILTER_COUNTS,
    PASSED_OVER,
    CountDocs,
    format_funnel,
    funnel_from_counts,
    nbytes,
    passed_over_from_counts,
    summary_lines,
)
from jamdata.stage import Stage, StageContext
from schemas.records import DOCUMENT, REJECT, document_row

log = logging.getLogger(__name__)


def _source(r: dict) -> str:
    return r["source"]


def _text_bytes(d: dict) -> int:
    return nbytes(d["text"])


def _reject_bytes(r: dict) -> int:
    return 64 + sum(len(str(r.get(k) or "").encode("utf-8")) for k in ("id", "reason", "snippet", "file"))


# -- Beam steps ------------------------------------------------------------------------------------
class ReadAndClean(beam.DoFn):
    """One raw file or part of one -> cleaned documents, REJECTs (tag "rejects") and its funnel
    counts (tag "counts": ((source, stage, measure), value)). A file with a line-dedup group
    (Common Crawl) goes out as read, as (group, doc) (tag "grouped"), to be cleaned and counted
    after the group's line dedup (pipelines/line_dedup.py)."""

    def __init__(self, ropts: ReadOptions, copts: CleanOptions):
        self.ropts, self.copts = ropts, copts

    def _site(self, f: InputFile):
        """A Wikipedia dump's own namespace names (its siteinfo), so that `Kategorie:` and
        `Файл:` links go as `Category:` ones do; None for other formats or an unreadable head
        (the reader reports the file; pages then use their URL's language)."""
        if f.fmt != "wiki_xml":
            return None
        from jamdata.text.wikisite import read_siteinfo

        try:
            return read_siteinfo(f.path, self.copts.wiki_drop_sections)
        except Exception:
            return None

    def process(self, f: InputFile):
        n = {"records": 0, "read_docs": 0, "read_bytes": 0, "clean_docs": 0, "clean_bytes": 0}
        passed_over: dict[str, int] = {}

        def counted(records: Iterable[dict]):
            for rec in records:
                n["records"] += 1
                if not is_reject(rec):
                    n["read_docs"] += 1
                    size = nbytes(rec["text"])
                    n["read_bytes"] += size
                    progress.count("documents")
                    progress.count("bytes", size)
                yield rec

        records = counted(read_file(f.path, f.fmt, f.source, self.ropts, f.id_path, passed_over, f.split))
        group = f.group
        copts = replace(self.copts, line_dedup_min_docs=0) if group else self.copts
        for rec in records if group else clean_records(records, f.fmt, copts, self._site(f)):
            if is_reject(rec):
                yield beam.pvalue.TaggedOutput("rejects", rec)
            elif group:
                yield beam.pvalue.TaggedOutput("grouped", (group, rec))
            else:
                n["clean_docs"] += 1
                n["clean_bytes"] += nbytes(rec["text"])
                yield rec
        s = f.source
        for key, value in [
            (("read", "docs_in"), n["records"]),
            (("read", "bytes_in"), file_bytes(f)),
            (("read", "docs_out"), n["read_docs"]),
            (("read", "bytes_out"), n["read_bytes"]),
            (("clean", "docs_out"), n["clean_docs"]),
            (("clean", "bytes_out"), n["clean_bytes"]),
        ]:
            yield beam.pvalue.TaggedOutput("counts", ((s, *key), value))
        for kind, value in sorted(passed_over.items()):
            yield beam.pvalue.TaggedOutput("counts", ((s, PASSED_OVER, kind), value))


def apply_dedup(docs, dedup_cfg: dict):
    """Exact + MinHash + book-overlap dedup (pipelines/text_dedup.py): (kept docs, REJECTs)."""
    from pipelines.text_dedup import TextDedup

    return docs | "Dedup" >> TextDedup(Config(json.loads(json.dumps(dedup_cfg)), "text.clean.dedup"))


def reject_key(r: dict) -> str:
    return f"{r['id']}|{r['stage']}|{r['offset']}|{r['reason']}"


def _document_writer(out_dir: str, name: str, docs: list[dict]) -> list[dict]:
    """The DOCUMENT shard writer: the one place where a document's metadata dict becomes the
    column's JSON text (schemas.records.document_row)."""
    return parquet_shard_writer(DOCUMENT, "source")(out_dir, name, [document_row(d) for d in docs])


def _write_per_source(
    records, label: str, out_dir: str, schema, key_fn, shards: int, shard_bytes: int, size_fn, seed: int
):
    """Parquet shards per source, sorted by `key_fn`: `shards` each, or (0) as many as the source's
    size in `shard_bytes` needs (pipelines/common.ShardsFromBytes)."""
    counts = None if shards else records | f"{label}ShardCounts" >> ShardsFromBytes(shard_bytes, size_fn, _source)
    write_fn = _document_writer if schema is DOCUMENT else parquet_shard_writer(schema, "source")
    return (
        records
        | f"Key{label}" >> beam.Map(lambda r: (key_fn(r), r))
        | f"Write{label}"
        >> WriteShards(
            out_dir,
            write_fn,
            shards or 1,
            group_of=_source,
            seed=seed,
            shards_of=counts,
        )
    )


def build_pipeline(
    p: beam.Pipeline,
    patterns: list[InputPattern],
    settings: tuple,
    docs_dir: str,
    rejects_dir: str,
    config: dict,
    seed: int = 0,
):
    ropts, copts, filters_cfg, dedup_cfg, shards, reject_shards, shard_bytes, split_bytes = settings
    # line dedup over groups of files, or within each file (pipelines/line_dedup.py); bounded per
    # element either way. `line_dedup_min_docs` 0 or 1 turns it off
    grouping = copts.line_dedup_min_docs > 1
    files = (
        p
        | "Patterns" >> beam.Create(patterns)
        | "Inputs" >> ListInputs(split_bytes, AssignGroups(copts.line_dedup_group_files) if grouping else None)
    )
    read = (
        files
        | "SpreadFiles" >> beam.Reshuffle()
        | "ReadClean"
        >> beam.ParDo(ReadAndClean(ropts, copts)).with_outputs("rejects", "counts", "grouped", main="docs")
    )
    cleaned, clean_rejects, clean_counts = read.docs, [read.rejects], [read.counts]
    if grouping:
        grouped_docs, group_rejects = read.grouped | "GroupLineDedup" >> GroupLineDedup(copts)
        cleaned = (read.docs, grouped_docs) | "AllCleaned" >> beam.Flatten()
        clean_rejects.append(group_rejects)
        clean_counts.append(grouped_docs | "CountGroupCleaned" >> CountDocs("clean"))
    filtered = cleaned | "Filter" >> beam.ParDo(ApplyFilters(filters_cfg)).with_outputs(
        "rejects", "counts", main="docs"
    )
    kept, dedup_rejects = apply_dedup(filtered.docs, dedup_cfg)

    doc_shards = _write_per_source(kept, "Docs", docs_dir, DOCUMENT, order_key, shards, shard_bytes, _text_bytes, seed)
    rejects = (*clean_rejects, filtered.rejects, dedup_rejects) | "AllRejects" >> beam.Flatten()
    reject_shard_infos = _write_per_source(
        rejects, "Rejects", rejects_dir, REJECT, reject_key, reject_shards, shard_bytes, _reject_bytes, seed
    )
    reject_counts = (
        rejects
        | "RejectKey" >> beam.Map(lambda r: ((r["source"], r["stage"]), 1))
        | "CountRejects" >> beam.CombinePerKey(sum)
    )
    counts = (
        (
            *clean_counts,
            filtered.counts,
            filtered.docs | "CountFiltered" >> CountDocs("filter"),
            kept | "CountDeduped" >> CountDocs("dedup"),
        )
        | "AllCounts" >> beam.Flatten()
        | "SumCounts" >> beam.CombinePerKey(sum)
        | "CountList" >> beam.combiners.ToList()
    )
    # the manifest's input list, in the driver's former order: by (source, path, format)
    inputs = (
        files
        | "InputNames" >> beam.Map(lambda f: (f.source, f.path, f.fmt))
        | "OneNamePerFile" >> beam.Distinct()
        | "InputList" >> beam.combiners.ToList()
        | "SortInputs" >> beam.Map(lambda names: [path for _, path, _ in sorted(names)])
    )

    def write_manifests(count_list, doc_infos, reject_infos, rejected, inputs):
        funnel = funnel_from_counts([c for c in count_list if c[0][1] not in (PASSED_OVER, FILTER_COUNTS)])
        by_stage: dict = {}
        for (source, stage), n in sorted(rejected):
            by_stage.setdefault(source, {})[stage] = n
        summary = {"funnel": funnel, "rejected": by_stage}
        passed = passed_over_from_counts(count_list)
        if passed:
            summary[PASSED_OVER] = passed
        by_filter = passed_over_from_counts(count_list, FILTER_COUNTS)
        if by_filter:
            summary[FILTER_COUNTS] = by_filter
        write_manifest(
            rejects_dir, build_manifest("rejects", reject_infos, config, None, {"rejected": by_stage}, inputs)
        )
        write_manifest(docs_dir, build_manifest("documents", doc_infos, config, None, summary, inputs))
        return docs_dir

    return counts | "WriteManifests" >> beam.Map(
        write_manifests,
        beam.pvalue.AsList(doc_shards),
        beam.pvalue.AsList(reject_shard_infos),
        beam.pvalue.AsList(reject_counts),
        beam.pvalue.AsSingleton(inputs),
    )


def run(
    config: Config, docs_dir: str, rejects_dir: str, workers: int = 1, beam_args: list[str] | None = None, log_fn=print
) -> dict:
    """Run the text-clean pipeline; returns the documents manifest."""
    text_cfg = config.section("text")
    patterns = plan_patterns(text_cfg)  # checked here; listed inside the pipeline
    settings = clean_settings(text_cfg)
    check_filters(settings[2], sorted({p.source for p in patterns}))
    seed = int(config.section("run").get("seed", int, default=0))
    record = {"text": {"sources": text_cfg.section("sources").to_dict(), "clean": text_cfg.section("clean").to_dict()}}
    docs_dir, rejects_dir = str(docs_dir), str(rejects_dir)

    def go():
        with progress.Pipeline("text-clean", options=pipeline_options(workers, beam_args or [])) as p:
            build_pipeline(p, patterns, settings, docs_dir, rejects_dir, record, seed)

    docs_dir, rejects_dir = absolute(docs_dir), absolute(rejects_dir)
    with output_dir(docs_dir), output_dir(rejects_dir):  # old manifests go first, local or remote
        go()
    manifest = read_manifest(docs_dir)
    log_fn(format_funnel(manifest["summary"]["funnel"]))
    for source, counts in sorted(manifest["summary"].get(FILTER_COUNTS, {}).items()):
        log_fn(f"{source:<12} filters: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return manifest


def run_stage(ctx: StageContext) -> list[str]:
    docs_dir, rejects_dir = str(ctx.path("text-clean")), str(ctx.path("text-clean-rejects"))
    manifest = run(ctx.config, docs_dir, rejects_dir, ctx.workers, ctx.beam_args)
    return [*summary_lines(manifest, docs_dir), f"rejects in {rejects_dir}"]


def stage_settings(ctx: StageContext) -> dict:
    text = ctx.config.section("text")
    return {"seed": ctx.seed, "inputs": plan_patterns(text), "clean": clean_settings(text)}


STAGE = Stage("text-clean", run_stage, outputs=("text-clean", "text-clean-rejects"), settings=stage_settings)
