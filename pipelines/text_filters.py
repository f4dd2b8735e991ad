"""The text-clean stage's filter step: each document's source's filter chain (`text.clean.filters`,
jamdata/text/filters), the fields the filters return added to the document's columns or its
metadata dict, and a REJECT for each document a filter drops."""

from __future__ import annotations

import json
from typing import Any

import apache_beam as beam

from jamdata.config import Config
from pipelines.text_funnel import FILTER_COUNTS

COUNTED_FIELDS = {"pii_emails": "pii emails masked", "pii_ips": "pii ips masked"}
DOC_COLUMNS = ("language", "language_score", "quality_score")


def check_filters(filters_cfg: dict, sources: list[str]) -> None:
    """Build every source's filter chain once here, so a config mistake fails before the job
    starts, with the key named, instead of inside a worker."""
    from jamdata.text.filters import build_filter_chain

    for source in sources:
        build_filter_chain(Config(json.loads(json.dumps(filters_cfg)), "text.clean.filters"), source)


class ApplyFilters(beam.DoFn):
    """The filter chain of each document's source (from `text.clean.filters`). Also counts, per
    source (tag "counts"), the documents each filter dropped and the PII each masked."""

    def __init__(self, filters_cfg: dict):
        self.filters_cfg = filters_cfg

    def setup(self):
        self.chains: dict[str, Any] = {}

    def _chain(self, source: str):
        if source not in self.chains:
            from jamdata.text.filters import build_filter_chain

            cfg = Config(json.loads(json.dumps(self.filters_cfg)), "text.clean.filters")
            self.chains[source] = build_filter_chain(cfg, source)
        return self.chains[source]

    def process(self, doc: dict):
        from jamdata.text.filters import apply_chain
        from jamdata.text.readers import make_reject

        verdict, failed = apply_chain(doc["text"], self._chain(doc["source"]))
        fields = dict(verdict.fields or {})
        for key, label in COUNTED_FIELDS.items():
            if fields.get(key):
                yield beam.pvalue.TaggedOutput("counts", ((doc["source"], FILTER_COUNTS, label), int(fields[key])))
        if not verdict.keep:
            yield beam.pvalue.TaggedOutput("counts", ((doc["source"], FILTER_COUNTS, f"{failed} dropped"), 1))
            meta = doc.get("metadata") or {}
            yield beam.pvalue.TaggedOutput(
                "rejects",
                make_reject(
                    doc["source"],
                    "filter",
                    f"{failed}: {verdict.reason}" if verdict.reason else str(failed),
                    doc["text"],
                    meta.get("file"),
                    meta.get("offset"),
                    id=doc["id"],
                ),
            )
            return
        out = {**doc, "text": verdict.text}
        extra = {}
        for k, v in fields.items():
            if k in DOC_COLUMNS:
                out[k] = None if v is None else (str(v) if k == "language" else float(v))
            else:
                extra[k] = v
        if extra:
            out["metadata"] = {**out["metadata"], **extra}
        if not out["text"].strip():
            yield beam.pvalue.TaggedOutput(
                "rejects", make_reject(doc["source"], "filter", "empty after filters", None, None, None, id=doc["id"])
            )
            return
        yield out
