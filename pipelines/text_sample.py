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
depend on the runner, the worker count or the input order.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import apache_beam as beam
import numpy as np

from jamdata.config import Config, ConfigError
from jamdata.io import absolute, atomic_write, exists, fs_and_path, join, read_bytes, stable_hash
from jamdata.manifest import MANIFEST, build_manifest, output_dir, read_manifest, write_manifest
from jamdata.text import sampling
from jamdata.text.sampling import PlanError, SourceDecision
from jamdata.text.tokenizer import TextTokenizer
from jamdata.vocab import JointVocab, VocabMismatchError
from jamdata.settings import load_settings, setting
from jamdata.stage import Stage
from pipelines import progress
from pipelines.clean_input import clean_shards, read_texts, row_groups, text_bytes_estimate
from pipelines.options import pipeline_options
from pipelines.token_parts import WriteTokenPart, part_of, plan_parts, shard_number

LLAMA_SHARES = {"commoncrawl": 67.0, "c4": 15.0, "wikipedia": 4.5, "books": 4.5, "arxiv": 2.5}
LLAMA_EPOCHS = {"commoncrawl": 1.10, "c4": 1.06, "wikipedia": 2.45, "books": 2.23, "arxiv": 1.06}
HF_DIR = "text-tokens-hf"
PLAN_FILE = ".plan.json"


# -- settings ------------------------------------------------------------------------------------
def n_image_codes(cfg: Config) -> int:
    return int(cfg.number("vqvae.codebook_size", default=8192, lo=1))


@dataclass(frozen=True)
class SampleSection:
    """The `text.sample` section (docs/text-sample.md): the token budget, shares and shards."""

    budget_tokens: int = setting(30_000_000_000, "text tokens to write over all sources", lo=1)
    shares: dict = setting(dict(LLAMA_SHARES), "source -> share of the budget (renormalised)")
    epochs: dict = setting(dict(LLAMA_EPOCHS), "source -> most epochs a source may be repeated (default 1.0)")
    shard_tokens: int = setting(1_000_000_000, "tokens per .bin/.idx shard", lo=1)
    part_tokens: int = setting(50_000_000, "each shard written as parts of about this many tokens", lo=1)
    seed: int | None = setting(None, "seed of the sample (default: run.seed)")
    batch_docs: int = setting(256, "documents tokenized per call", lo=1)
    count: str = setting("estimate", "how available tokens are counted", choices=("exact", "estimate"))
    estimate_sample_bytes: int = setting(20_000_000, "text bytes tokenized to estimate tokens per byte", lo=1)
    export_hf: bool = setting(False, "also write a Hugging Face parquet export")
    append: bool = setting(False, "add shards to an existing text-tokens dataset")
    input: str | None = setting(None, "text-clean dataset (default: the run's)")
    tokenizer: str | None = setting(None, "tokenizer dataset or .model (default: the run's)")


@dataclass
class SampleSettings:
    budget: int
    shares: dict[str, float]
    max_epochs: dict[str, float]
    shard_tokens: int
    part_tokens: int
    seed: int
    batch_docs: int
    count: str
    estimate_sample_bytes: int
    export_hf: bool
    append: bool
    input: str | None
    tokenizer: str | None
    config: dict = field(default_factory=dict)

    @property
    def targets(self) -> dict[str, int]:
        return sampling.targets(self.budget, self.shares)

    def shards_for(self, source: str) -> int:
        return max(1, math.ceil(self.targets[source] / self.shard_tokens))


def sample_settings(cfg: Config) -> SampleSettings:
    sec = cfg.section("text.sample")
    t = load_settings(SampleSection, sec)
    shares, epochs = t.shares, t.epochs
    for name, table in (("shares", shares), ("epochs", epochs)):
        for src, v in table.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(
                    f"text.sample.{name}.{src}", f"must be a non-negative number, got {v!r}", source=cfg.source
                )
    for src in epochs:
        if src not in shares:
            raise ConfigError(
                f"text.sample.epochs.{src}", "source has no share", allowed=sorted(shares), source=cfg.source
            )
    if not sum(shares.values()):
        raise ConfigError("text.sample.shares", "all shares are zero", source=cfg.source)
    return SampleSettings(
        budget=t.budget_tokens,
        shares={k: float(v) for k, v in shares.items()},
        max_epochs={s: float(epochs.get(s, 1.0)) for s in shares},
        shard_tokens=t.shard_tokens,
        part_tokens=t.part_tokens,
        seed=cfg.get("run.seed", int, default=0) if t.seed is None else t.seed,
        batch_docs=t.batch_docs,
        count=t.count,
        estimate_sample_bytes=t.estimate_sample_bytes,
        export_hf=t.export_hf,
        append=t.append,
        input=t.input,
        tokenizer=t.tokenizer,
        config=sec.to_dict(),
    )


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
class TokenizeUnit(beam.DoFn):
    """(source, parquet file, row group) -> (source, rank, id, token bytes) per document."""

    def __init__(self, tokenizer: str, codes: int, seed: int, batch: int):
        self.tokenizer, self.codes, self.seed, self.batch = tokenizer, codes, seed, batch

    def setup(self):
        self.tok = TextTokenizer(self.tokenizer, self.codes)

    def process(self, unit):
        source, path, rg = unit
        table = read_texts(path, rg)
        ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
        for i in range(0, len(texts), self.batch):
            flat, lengths = self.tok.encode_documents(texts[i : i + self.batch])
            progress.count("documents", len(lengths))
            progress.count("tokens", int(sum(lengths)))
            data = flat.tobytes()
            item = flat.dtype.itemsize
            ends = np.cumsum(lengths) * item
            start = 0
            for doc_id, end in zip(ids[i : i + self.batch], ends.tolist()):
                yield source, sampling.doc_rank(self.seed, source, doc_id), doc_id, data[start:end]
                start = end


class HistogramFn(beam.CombineFn):
    def create_accumulator(self):
        return np.zeros(sampling.N_BUCKETS, dtype=np.int64)

    def add_input(self, acc, item):
        rank, n = item
        acc[sampling.bucket_of(rank)] += n
        return acc

    def merge_accumulators(self, accs):
        accs = list(accs)
        out = accs[0].copy()
        for a in accs[1:]:
            out += a
        return out

    def extract_output(self, acc):
        return acc


@dataclass(frozen=True)
class Decision:
    """A source's sampling decision plus its partial-epoch cutoff (None: none of the boundary bucket)."""

    d: SourceDecision
    cutoff: tuple[int, str] | None
    max_epochs: float
    feasible: bool
    message: str = ""


def _decide(kv, targets: dict[str, int], max_epochs: dict[str, float]):
    source, hist = kv
    try:
        return source, sampling.decide(source, targets.get(source, 0), hist, max_epochs.get(source, 1.0))
    except PlanError as e:
        return source, str(e)


def _cutoff(kv, decisions):
    source, items = kv
    d = decisions[source]
    if isinstance(d, str) or d.boundary_bucket < 0:
        return source, None
    return source, sampling.partial_cutoff(items, d.boundary_remaining)


def _in_boundary(doc, decisions) -> bool:
    d = decisions.get(doc[0])
    return (
        not isinstance(d, str)
        and d is not None
        and d.boundary_bucket >= 0
        and sampling.bucket_of(doc[1]) == d.boundary_bucket
    )


def _emit(doc, decisions, cutoffs, parts, n_shards, seed):
    source, rank, doc_id, payload = doc
    d = decisions.get(source)
    if d is None or isinstance(d, str):
        return
    for epoch in range(sampling.copies(d, cutoffs.get(source), rank, doc_id)):
        key = sampling.sample_key(epoch, rank, doc_id)
        shard = stable_hash(source, key, seed=seed) % n_shards[source]
        yield (source, shard, part_of(parts[source], epoch, rank)), (key, payload)


def source_summary(shards: list[dict], decisions: dict, s: SampleSettings) -> dict:
    per: dict[str, dict] = {}
    for src in s.shares:
        per[src] = {
            "target": s.targets[src],
            "tokens": 0,
            "documents": 0,
            "unique_documents": None,
            "available": 0,
            "max_epochs": s.max_epochs[src],
            "epochs_used": 0.0,
            "full_epochs": 0,
            "shards": 0,
            "parts": 0,
        }
    shard_ids: dict[str, set] = {}
    for sh in shards:
        if sh["path"].endswith(".idx"):
            row = per.setdefault(sh["group"], {"target": 0, "tokens": 0, "documents": 0})
            row["tokens"] += sh["tokens"]
            row["documents"] += sh["records"]
            row["parts"] = row.get("parts", 0) + 1
            shard_ids.setdefault(sh["group"], set()).add(shard_number(sh["path"]))
            row["shards"] = len(shard_ids[sh["group"]])
    for src, d in decisions.items():
        if isinstance(d, str) or src not in per:
            continue
        row = per[src]
        row.update(
            available=d.available,
            full_epochs=d.full_epochs,
            epochs_used=round(row["tokens"] / d.available, 6) if d.available else 0.0,
        )
        row["error"] = row["tokens"] - row["target"]
    return per


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
                decisions = hists | "Decide" >> beam.Map(_decide, targets, s.max_epochs)
                dec_side = beam.pvalue.AsDict(decisions)
                cutoffs = (
                    docs
                    | "Boundary" >> beam.Filter(_in_boundary, dec_side)
                    | "BoundaryItems" >> beam.Map(lambda d: (d[0], (d[1], d[2], len(d[3]) // vocab.dtype.itemsize)))
                    | "GroupBoundary" >> beam.GroupByKey()
                    | "Cutoff" >> beam.Map(_cutoff, dec_side)
                )
                cut_side = beam.pvalue.AsDict(cutoffs)
                parts = beam.pvalue.AsDict(
                    hists | "PartRanges" >> beam.Map(plan_parts, targets, s.max_epochs, n_shards, s.part_tokens)
                )
                shards = (
                    docs
                    | "Copies" >> beam.FlatMap(_emit, dec_side, cut_side, parts, n_shards, s.seed)
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
