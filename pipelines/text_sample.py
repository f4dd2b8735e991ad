"""Stage `text-sample`: clean documents + the tokenizer (pipelines/tokenizer_train.py) -> the token
budget sampled by share/epochs into Megatron `.bin/.idx` shards, one dataset per source; each shard
written as bounded parts (pipelines/token_parts.py).

Beam graph of `text-sample`:
    (source, file, row group) units -> tokenize in batches -> (source, rank, id, token bytes)
      ├─ token histogram per source over hash buckets -> decision (epochs, boundary bucket)
      │                                                 and part ranges (cells of the key space)
      ├─ boundary-bucket docs per source -> partial-epoch cutoff
      └─ copies per doc -> (source, shard, part) groups -> .bin/.idx (+ HF parquet) -> manifest
Every choice is a function of (seed, source, id) and per-source totals, so the bytes written do not
depend on the runner, the worker count or the input order. The settings are
pipelines/text_sample_settings.py, the Beam steps pipelines/text_sample_steps.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import apache_beam as beam

from jamdata.config import Config
from jamdata.io import absolute, atomic_write, exists, fs_and_path, join, read_bytes
from jamdata.manifest import MANIFEST, build_manifest, output_dir, read_manifest, write_manifest
from jamdata.text import sampling
from jamdata.text.sampling import PlanError
from jamdata.text.tokenizer import TextTokenizer
from jamdata.vocab import JointVocab, VocabMismatchError
from jamdata.stage import Stage
from pipelines import progress
from pipelines.clean_input import clean_shards, read_texts, row_groups, text_bytes_estimate
from pipelines.options import pipeline_options
from pipelines.text_sample_settings import SampleSettings, n_image_codes, sample_settings
from pipelines.text_sample_steps import HistogramFn, TokenizeUnit, cutoff, decide, emit, in_boundary, source_summary
from pipelines.token_parts import WriteTokenPart, plan_parts, shard_number

HF_DIR = "text-tokens-hf"
PLAN_FILE = ".plan.json"


# -- tokenizer ---------------------------------------------------------------------------------
def load_tokenizer(path: str, codes: int) -> TextTokenizer:
    """A tokenizer file or dataset; a dataset's manifest must agree with the configured image codes."""
    tok = TextTokenizer(path, codes)
    if exists(join(path, MANIFEST)):
        fp = read_manifest(path)["vocab_fingerprint"]
        if fp and fp != tok.vocab.fingerprint:
            raise VocabMismatchError(
                f"{path}/{MANIFEST} has vocab {fp} but {tok.path} with vqvae.codebook_size={codes} "
                f"gives {tok.vocab.fingerprint}; re-run the tokenizer stage"
            )
    return tok


# -- planner -------------------------------------------------------------------------------------
def count_available(
    files: dict[str, list[str]], tok: TextTokenizer, mode: str, sample_bytes: int, batch: int = 256
) -> dict[str, tuple[int, bool, float | None]]:
    """Tokens per source: counted (tokenize everything) or estimated (text bytes from parquet
    footers x tokens/byte measured on the first `sample_bytes` of the source)."""
    out = {}
    for source, paths in files.items():
        tokens = nbytes = 0
        complete = True
        for path in paths:
            for rg in range(row_groups(path)):
                texts = read_texts(path, rg, ("text",)).column("text").to_pylist()
                for i in range(0, len(texts), batch):
                    chunk = texts[i : i + batch]
                    tokens += int(tok.encode_documents(chunk)[1].sum())
                    nbytes += sum(len(t.encode("utf-8")) for t in chunk)
                if mode == "estimate" and nbytes >= sample_bytes:
                    complete = False
                    break
            if not complete:
                break
        if complete:
            out[source] = (tokens, False, tokens / nbytes if nbytes else None)
        else:
            tpb = tokens / nbytes
            est = sum(text_bytes_estimate(p) for p in paths)
            out[source] = (int(round(est * tpb)), True, tpb)
    return out


def make_plan(cfg: Config, run_dir: str) -> tuple[list[sampling.SourcePlan], SampleSettings]:
    s = sample_settings(cfg)
    files = clean_shards(s.input or join(run_dir, "text-clean"))
    tok = load_tokenizer(tokenizer_path(cfg, run_dir, s), n_image_codes(cfg))
    avail = count_available(files, tok, s.count, s.estimate_sample_bytes, s.batch_docs)
    return sampling.build_plan(s.budget, s.shares, s.max_epochs, avail), s


def tokenizer_path(cfg: Config, run_dir: str, s: SampleSettings) -> str:
    return s.tokenizer or join(str(run_dir), "tokenizer")


# -- Beam pieces ---------------------------------------------------------------------------------
# -- the stage -----------------------------------------------------------------------------------
def run_stage(ctx) -> list[str]:
    cfg: Config = ctx.config
    s = sample_settings(cfg)
    clean = absolute(s.input or ctx.path("text-clean"))  # absolute in the driver: workers run elsewhere
    files = clean_shards(clean)
    tok_path = absolute(tokenizer_path(cfg, ctx.run_dir, s))
    tok = load_tokenizer(tok_path, n_image_codes(cfg))
    vocab = tok.vocab
    targets = s.targets
    missing = {src: t for src, t in targets.items() if t > 0 and src not in files}
    if missing:
        sampling.check_plan([sampling.SourcePlan(src, 0, s.max_epochs[src], t, 0, False) for src, t in missing.items()])
    out = str(ctx.path("text-tokens"))
    hf_out = str(ctx.path(HF_DIR)) if s.export_hf else None
    previous, hf_previous = [], []
    offsets: dict[str, int] = {}
    if s.append and exists(join(out, MANIFEST)):
        old = read_manifest(out)
        if old["vocab_fingerprint"] != vocab.fingerprint:
            raise VocabMismatchError(
                f"cannot append to {out}/{MANIFEST} (vocab {old['vocab_fingerprint']}) with tokenizer "
                f"{tok.path} (vocab {vocab.fingerprint}); use the same tokenizer or a new output directory"
            )
        previous = old["shards"]
        if hf_out and exists(join(hf_out, MANIFEST)):
            hf_previous = read_manifest(hf_out)["shards"]
        for sh in previous:
            src = sh.get("group")
            num = shard_number(sh["path"])
            offsets[src] = max(offsets.get(src, 0), num + 1)

    units = [(src, path, rg) for src, paths in files.items() for path in paths for rg in range(row_groups(path))]
    n_shards = {src: s.shards_for(src) for src in s.shares}
    for src in files:
        n_shards.setdefault(src, 1)
    with output_dir(out, clean=not s.append):
        hf_ctx = output_dir(hf_out, clean=not s.append) if hf_out else None
        if hf_ctx:
            hf_ctx.__enter__()
        try:
            plan_path = f"{out}/{PLAN_FILE}"
            with progress.Pipeline("text-sample", options=pipeline_options(ctx.workers, ctx.beam_args)) as p:
                docs = (
                    p
                    | "Units" >> beam.Create(units)
                    | "Spread" >> beam.Reshuffle()
                    | "Tokenize" >> beam.ParDo(TokenizeUnit(tok_path, vocab.n_image_codes, s.seed, s.batch_docs))
                )
                hists = (
                    docs
                    | "RankTokens" >> beam.Map(lambda d: (d[0], (d[1], len(d[3]) // vocab.dtype.itemsize)))
                    | "Histogram" >> beam.CombinePerKey(HistogramFn())
                )
                decisions = hists | "Decide" >> beam.Map(decide, targets, s.max_epochs)
                dec_side = beam.pvalue.AsDict(decisions)
                cutoffs = (
                    docs
                    | "Boundary" >> beam.Filter(in_boundary, dec_side)
                    | "BoundaryItems" >> beam.Map(lambda d: (d[0], (d[1], d[2], len(d[3]) // vocab.dtype.itemsize)))
                    | "GroupBoundary" >> beam.GroupByKey()
                    | "Cutoff" >> beam.Map(cutoff, dec_side)
                )
                cut_side = beam.pvalue.AsDict(cutoffs)
                parts = beam.pvalue.AsDict(
                    hists | "PartRanges" >> beam.Map(plan_parts, targets, s.max_epochs, n_shards, s.part_tokens)
                )
                shards = (
                    docs
                    | "Copies" >> beam.FlatMap(emit, dec_side, cut_side, parts, n_shards, s.seed)
                    | "GroupPart" >> beam.GroupByKey()
                    | "WritePart" >> beam.ParDo(WriteTokenPart(out, hf_out, vocab.dtype.str, offsets))
                )
                (
                    shards
                    | "CollectShards" >> beam.combiners.ToList()
                    | "Finish"
                    >> beam.Map(
                        _finish,
                        dec_side,
                        cut_side,
                        out,
                        hf_out,
                        plan_path,
                        s,
                        vocab,
                        (previous, hf_previous),
                        [clean, tok_path],
                    )
                )
            result = json.loads(read_bytes(plan_path))
            fs, plan_p = fs_and_path(plan_path)
            fs.rm(plan_p)
        finally:
            if hf_ctx:
                hf_ctx.__exit__(None, None, None)
    if result.get("errors"):
        raise PlanError("impossible plan: " + "; ".join(result["errors"]))
    lines = []
    for src, row in result["sources"].items():
        lines.append(
            f"{src}: {row['tokens']:,} tokens (target {row['target']:,}, {row['error']:+,}), "
            f"{row['documents']:,} docs, {row['epochs_used']:.3f} epochs of {row['available']:,}"
        )
    lines.append(f"wrote {out} ({result['total_tokens']:,} tokens, vocab {vocab.fingerprint})")
    from jamdata.stats.warnings import format_warnings, sample_warnings

    clean_manifest = read_manifest(clean) if exists(join(clean, MANIFEST)) else None
    return lines + format_warnings(sample_warnings("text-tokens", read_manifest(out), clean_manifest))


def _finish(
    shards, decisions, cutoffs, out, hf_out, plan_path, s: SampleSettings, vocab: JointVocab, previous_shards, inputs
):
    previous, hf_previous = previous_shards
    errors = sorted(d.split("impossible plan: ", 1)[-1] for d in decisions.values() if isinstance(d, str))
    tok_shards = [{k: v for k, v in sh.items() if k != "_ds"} for sh in shards if sh["_ds"] == "tokens"]
    hf_shards = [{k: v for k, v in sh.items() if k != "_ds"} for sh in shards if sh["_ds"] == "hf"]
    per = source_summary(tok_shards, decisions, s)
    for src, row in per.items():
        row.setdefault("error", row["tokens"] - row["target"])
    if not errors:
        summary = {
            "sources": per,
            "budget_tokens": s.budget,
            "seed": s.seed,
            "tokenizer": {"fingerprint": vocab.fingerprint, "model_sha256": vocab.text_model_sha256},
            "dtype": vocab.dtype.name,
            "decisions": {
                src: {**asdict(d), "cutoff": list(cutoffs.get(src) or []) or None}
                for src, d in sorted(decisions.items())
                if not isinstance(d, str)
            },
        }
        if previous:
            summary["appended_to"] = len(previous)
        write_manifest(out, build_manifest("text_tokens", previous + tok_shards, s.config, vocab, summary, inputs))
        if hf_out:
            write_manifest(
                hf_out,
                build_manifest(
                    "text_tokens",
                    hf_previous + hf_shards,
                    {**s.config, "format": "hf-parquet"},
                    vocab,
                    {"sources": per, "format": "hf-parquet"},
                    inputs,
                ),
            )
    result = {"errors": errors, "sources": per, "total_tokens": sum(r["tokens"] for r in per.values())}
    with atomic_write(plan_path, "w") as f:
        json.dump(result, f, sort_keys=True)
    return plan_path


STAGE = Stage(
    "text-sample",
    run_stage,
    outputs=("text-tokens",),
    inputs=("text-clean", "tokenizer"),
    settings=lambda ctx: {"seed": ctx.seed, "sample": sample_settings(ctx.config)},
)
