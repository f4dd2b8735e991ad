"""The text-clean stage's funnel: documents and UTF-8 bytes leaving each step per source, the
records passed over and the per-filter counts, summed from ((source, step, measure), value) pairs
into the documents manifest's `summary`, and printed from it."""

from __future__ import annotations

import apache_beam as beam

STAGES = ("read", "clean", "filter", "dedup")
PASSED_OVER = "passed_over"  # counts of raw records that are neither documents nor rejects, by kind
FILTER_COUNTS = "filters"  # per filter: documents it dropped, and what it counted (PII masked)


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


class CountDocs(beam.PTransform):
    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage

    def expand(self, docs):
        stage = self.stage
        return (
            docs
            | "Measure"
            >> beam.FlatMap(
                lambda d: [
                    ((d["source"], stage, "docs_out"), 1),
                    ((d["source"], stage, "bytes_out"), nbytes(d["text"])),
                ]
            )
            | "Sum" >> beam.CombinePerKey(sum)
        )


def funnel_from_counts(counts: list[tuple[tuple[str, str, str], int]]) -> dict:
    """{source: {stage: {docs_in, docs_out, bytes_in, bytes_out}}}, each stage's input being the
    previous stage's output (read: raw records and compressed file bytes)."""
    raw: dict = {}
    for (source, stage, measure), value in counts:
        raw.setdefault(source, {}).setdefault(stage, {})[measure] = value
    funnel: dict = {}
    for source in sorted(raw):
        prev = None
        funnel[source] = {}
        for stage in STAGES:
            got = raw[source].get(stage, {})
            row = {
                "docs_in": got.get("docs_in", prev["docs_out"] if prev else 0),
                "bytes_in": got.get("bytes_in", prev["bytes_out"] if prev else 0),
                "docs_out": got.get("docs_out", 0),
                "bytes_out": got.get("bytes_out", 0),
            }
            funnel[source][stage] = row
            prev = row
    return funnel


def passed_over_from_counts(counts: list[tuple[tuple[str, str, str], int]], stage_name: str = PASSED_OVER) -> dict:
    """{source: {kind: records}} for the raw records that are neither documents nor rejects
    (WARC request/metadata records, other Pile subsets...), so they are counted, not lost.
    With `stage_name` FILTER_COUNTS: {source: {"<filter> dropped" / "pii ... masked": n}}."""
    out: dict = {}
    for (source, stage, kind), value in sorted(counts):
        if stage == stage_name:
            out.setdefault(source, {})[kind] = value
    return out


def format_funnel(funnel: dict) -> str:
    lines = [f"{'source':<12} {'stage':<7} {'docs in':>9} {'docs out':>9} {'dropped':>8} {'MB in':>9} {'MB out':>9}"]
    for source, stages in funnel.items():
        for stage in STAGES:
            r = stages[stage]
            lines.append(
                f"{source:<12} {stage:<7} {r['docs_in']:>9} {r['docs_out']:>9} "
                f"{r['docs_in'] - r['docs_out']:>8} {r['bytes_in'] / 1e6:>9.3f} {r['bytes_out'] / 1e6:>9.3f}"
            )
    return "\n".join(lines)


def summary_lines(manifest: dict, docs_dir: str) -> list[str]:
    lines = []
    for source, stages in manifest["summary"]["funnel"].items():
        first, last = stages["read"], stages[STAGES[-1]]
        lines.append(
            f"{source}: {last['docs_out']} documents ({last['bytes_out'] / 1e3:,.1f} kB) kept of "
            f"{first['docs_in']} records read"
        )
    lines.append(f"documents in {docs_dir}")
    from jamdata.stats.warnings import documents_warnings, format_warnings

    return lines + format_warnings(documents_warnings("text-clean", manifest))  # e.g. a source that read nothing
