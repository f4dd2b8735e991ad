"""Run-level warnings: what a run did that is legal but almost certainly not what was meant.

Each check reads only the manifests (so `--fast` reports them too) and yields one warning dict
`{"code", "dataset", "source", "message"}`; the code is stable (tests and scripts match on it),
the message tells a person what happened and what to change. They go into stats.json, the
report's manifest, the top of report.html and the console summary of `jamdata stats` / `run`.

Checks: a source that read no document (often a wrong declared `format`), records passed over
by type (WARC request/metadata records...), a sample over or under its token budget by more than
one document, a clean source left out of the sample, a tokenizer without byte fallback or with
more than UNK_LIMIT `<unk>` on a sample, a tokenizer dataset whose image-code count was assumed
(no `vqvae` section), a dataset name given twice.
"""

from __future__ import annotations

from typing import Sequence

UNK_LIMIT = 0.01  # share of <unk> tokens on a sample above which the tokenizer is flagged


def _warn(code: str, dataset: str, source: str | None, message: str) -> dict:
    return {"code": code, "dataset": dataset, "source": source, "message": message}


def _declared_formats(manifest: dict, source: str) -> list[str]:
    sources = ((manifest.get("config") or {}).get("text") or {}).get("sources") or {}
    inputs = (sources.get(source) or {}).get("inputs") or []
    return sorted({str(i.get("format")) for i in inputs if isinstance(i, dict) and i.get("format")})


def _configured_sources(manifest: dict) -> list[str]:
    return sorted(((manifest.get("config") or {}).get("text") or {}).get("sources") or {})


def _kinds(passed: dict) -> str:
    return ", ".join(f"{k}={v:,}" for k, v in sorted(passed.items(), key=lambda kv: (-kv[1], kv[0])))


def documents_warnings(name: str, manifest: dict) -> list[dict]:
    """A configured source that read nothing, and records passed over, from the cleaning funnel."""
    summary = manifest.get("summary") or {}
    funnel = summary.get("funnel")
    if not isinstance(funnel, dict) or not all(
        isinstance(r, dict) and isinstance(r.get("read"), dict) for r in funnel.values()
    ):
        return []  # not the text-clean funnel ({source: {stage: counts}})
    passed_over = summary.get("passed_over") or {}
    rejected = summary.get("rejected") or {}
    out = []
    for src in sorted(set(funnel) | set(_configured_sources(manifest))):
        read = (funnel.get(src) or {}).get("read") or {}
        passed = passed_over.get(src) or {}
        formats = ", ".join(_declared_formats(manifest, src)) or "?"
        if not read.get("docs_out"):
            n_rej = sum((rejected.get(src) or {}).values())
            if passed:
                why = (
                    f"the declared format ({formats}) matched no record: {sum(passed.values()):,} records "
                    f"were passed over ({_kinds(passed)})"
                )
                code = "format_matched_nothing"
            elif n_rej:
                why = f"all {n_rej:,} records were rejected while reading (see the rejects table)"
                code = "source_read_nothing"
            else:
                why = f"its inputs held nothing the declared format ({formats}) reads"
                code = "source_read_nothing"
            out.append(
                _warn(
                    code,
                    name,
                    src,
                    f"source {src} read 0 documents: {why}; check text.sources.{src}.inputs (format and paths)",
                )
            )
        elif passed:
            out.append(
                _warn(
                    "records_passed_over",
                    name,
                    src,
                    f"source {src}: {sum(passed.values()):,} raw records are not documents and were "
                    f"passed over ({_kinds(passed)})",
                )
            )
    return out


def sample_warnings(name: str, manifest: dict, clean: dict | None) -> list[dict]:
    """Budget over/undershoot beyond one document per source; clean sources left out of the plan."""
    summary = manifest.get("summary") or {}
    sources = summary.get("sources")
    if not isinstance(sources, dict):
        return []
    out = []
    slack = 0.0
    for src, row in sorted(sources.items()):
        tokens, target, docs = row.get("tokens") or 0, row.get("target") or 0, row.get("documents") or 0
        per_doc = tokens / docs if docs else 0.0
        slack += per_doc
        if target and tokens - target > max(per_doc, 1):
            out.append(
                _warn(
                    "budget_overshoot",
                    name,
                    src,
                    f"source {src}: {tokens:,} tokens sampled for a target of {target:,} "
                    f"({tokens / target:.1f}×; one document is about {per_doc:,.0f} tokens)",
                )
            )
        elif target and target - tokens > max(per_doc, 1):
            out.append(
                _warn(
                    "budget_undershoot",
                    name,
                    src,
                    f"source {src}: {tokens:,} tokens sampled for a target of {target:,} "
                    f"({tokens / target:.0%}; the source or its epochs limit ran out)",
                )
            )
    budget = summary.get("budget_tokens")
    total = sum((r.get("tokens") or 0) for r in sources.values())
    if budget and abs(total - budget) > max(slack, 1):
        word = "over" if total > budget else "under"
        out.append(
            _warn(
                f"budget_{word}shoot",
                name,
                None,
                f"the sample holds {total:,} tokens for a budget of {budget:,} ({total / budget:.1f}×)",
            )
        )
    if clean:
        funnel = (clean.get("summary") or {}).get("funnel") or {}
        for src, stages in sorted(funnel.items()):
            kept = list(stages.values())[-1].get("docs_out") if stages else 0
            if kept and src not in sources:
                out.append(
                    _warn(
                        "source_not_sampled",
                        name,
                        src,
                        f"source {src} has {kept:,} clean documents but no share in text.sample.shares, "
                        "so none is in the sample; give it a share (or 0 to leave it out knowingly)",
                    )
                )
    return out


def tokenizer_warnings(name: str, manifest: dict) -> list[dict]:
    summary = manifest.get("summary") or {}
    out = []
    if summary.get("byte_fallback") is False:
        out.append(
            _warn(
                "no_byte_fallback",
                name,
                None,
                "the tokenizer has no byte fallback: every character outside its pieces becomes <unk> "
                "and is lost (CJK text, emoji, rare scripts); train one with byte_fallback "
                "(`jamdata tokenizer train`) or use a model that has it",
            )
        )
    if summary.get("image_codes_assumed"):
        codes = ((manifest.get("vocab") or {}).get("n_image_codes")) or "the default number of"
        out.append(
            _warn(
                "image_codes_assumed",
                name,
                None,
                f"the config has no vqvae.codebook_size, so the joint vocabulary assumes {codes} image "
                "codes; if the VQ-VAE has another codebook size, set it and rebuild this tokenizer dataset",
            )
        )
    share = summary.get("unk_share")
    if isinstance(share, (int, float)) and share > UNK_LIMIT:
        out.append(
            _warn(
                "unk_tokens",
                name,
                None,
                f"{share:.1%} of the tokens of a sample of the clean text are <unk> "
                f"(limit {UNK_LIMIT:.0%}): that text is lost in training",
            )
        )
    return out


def run_warnings(info: dict[str, dict], shadowed: Sequence[tuple[str, str, str]] = ()) -> list[dict]:
    """Every warning over the inspected datasets (collect.inspect_datasets); `shadowed`: (name,
    kept-as name, path) of datasets whose name another dataset already had."""
    out = [
        _warn("dataset_shadowed", kept, None, f"two datasets are named {name}; the one at {path} is reported as {kept}")
        for name, kept, path in shadowed
    ]
    by_parent: dict[str, dict] = {}
    for entry in info.values():
        m = entry.get("manifest")
        if m and m.get("kind") == "documents" and (m.get("summary") or {}).get("funnel") is not None:
            by_parent[entry["path"].rstrip("/").rsplit("/", 1)[0]] = m
    for name, entry in info.items():
        m = entry.get("manifest")
        if not m:
            continue
        kind = m.get("kind")
        if kind == "documents":
            out += documents_warnings(name, m)
        elif kind == "text_tokens":
            out += sample_warnings(name, m, by_parent.get(entry["path"].rstrip("/").rsplit("/", 1)[0]))
        elif kind == "tokenizer":
            out += tokenizer_warnings(name, m)
    return out


def format_warnings(warnings: list[dict]) -> list[str]:
    """Console lines, one per warning."""
    return [f"warning [{w['code']}] {w['dataset']}: {w['message']}" for w in warnings]
