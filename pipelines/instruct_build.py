"""Beam glue for the interleaved (instruction-tuning) builder: files -> documents -> dedup by key
-> VQ-tokenized, templated samples -> webdataset tars + manifest, and rejects -> parquet + manifest.

The logic lives in jamdata.interleaved.build; this module only distributes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import apache_beam as beam

from jamdata.config import Config
from jamdata.formats.wds import TarShardWriter
from jamdata.io import absolute, exists, join
from jamdata.interleaved.build import BuildSpec, SampleBuilder, read_records, reject
from jamdata.manifest import describe_shard, output_dir, read_manifest
from jamdata.vocab import JointVocab
from pipelines.common import WriteManifest, WriteShards, parquet_shard_writer
from pipelines import progress
from pipelines.options import pipeline_options
from jamdata.stage import Stage, StageContext
from schemas.records import REJECT


def load_vocab(tokenizer: str, n_image_codes: int) -> JointVocab:
    """The tokenizer dataset's own vocabulary when it has a manifest, else built from the model."""
    from jamdata.text.tokenizer import TextTokenizer

    tok = TextTokenizer(tokenizer, n_image_codes)
    if exists(join(tokenizer, "manifest.json")):
        vocab = read_manifest(tokenizer).get("vocab")
        if vocab:
            return JointVocab.from_dict(vocab)
    return tok.vocab


class _Read(beam.DoFn):
    def __init__(self, spec: BuildSpec):
        self.spec = spec

    def process(self, item):
        idx, path = item
        for kind, value in read_records(self.spec, idx, path):
            yield beam.pvalue.TaggedOutput(kind, value)


def _first_of_key(kv):
    """Duplicate keys (same article id / same mmc4 url): keep the first by (file, offset)."""
    key, docs = kv
    docs = sorted(docs, key=lambda d: (d.file, d.offset or 0))
    yield docs[0]
    for d in docs[1:]:
        yield beam.pvalue.TaggedOutput(
            "reject",
            reject(
                f"{key}@{Path(d.file).name}:{d.offset}",
                d.source,
                f"duplicate key {key!r} (first seen in {docs[0].file} at {docs[0].offset})",
                file=d.file,
                offset=d.offset,
            ),
        )


class _Build(beam.DoFn):
    def __init__(self, spec: BuildSpec, tokenizer: str, vqvae: str, n_image_codes: int):
        self.spec, self.tokenizer, self.vqvae, self.n_image_codes = spec, tokenizer, vqvae, n_image_codes

    def setup(self):
        from jamdata.interleaved.images import VQEncoder
        from jamdata.text.tokenizer import TextTokenizer

        tok = TextTokenizer(self.tokenizer, self.n_image_codes)
        vocab = load_vocab(self.tokenizer, self.n_image_codes)
        enc = VQEncoder(self.vqvae, verify=self.spec.verify)
        self.builder = SampleBuilder(self.spec, vocab, tok.encode, enc, self.spec.image_resolution or enc.resolution)

    def process(self, doc):
        sample, rejects = self.builder.build(doc)
        progress.count("samples")
        for r in rejects:
            yield beam.pvalue.TaggedOutput("reject", r)
        if sample is not None:
            yield sample


def tar_shard_writer(out_dir: str, name: str, records: list[dict]) -> list[dict]:
    rel = f"{name}.tar"
    summary: dict[str, Any] = {"sources": {}, "images": 0, "targets": 0, "truncated": 0, "cm3": 0}
    tokens = 0
    with TarShardWriter(f"{out_dir}/{rel}") as w:
        for r in records:
            w.write(r["key"], r["fields"])
            s = r["stats"]
            summary["sources"][s["source"]] = summary["sources"].get(s["source"], 0) + 1
            for k in ("images", "targets", "truncated", "cm3"):
                summary[k] += s[k]
            tokens += s["tokens"]
    return [describe_shard(out_dir, rel, records=len(records), tokens=tokens, summary=summary).to_dict()]


def summarize(shards: list[dict]) -> dict:
    total: dict[str, Any] = {"sources": {}, "images": 0, "targets": 0, "truncated": 0, "cm3": 0}
    for sh in shards:
        s = sh.get("summary", {})
        for src, n in s.get("sources", {}).items():
            total["sources"][src] = total["sources"].get(src, 0) + n
        for k in ("images", "targets", "truncated", "cm3"):
            total[k] += s.get(k, 0)
    return total


def summarize_rejects(shards: list[dict]) -> dict:
    return {"records": sum(s.get("records") or 0 for s in shards)}


def build(
    spec: BuildSpec,
    out: str,
    rejects_out: str,
    tokenizer: str,
    vqvae: str,
    n_image_codes: int,
    workers: int = 1,
    beam_args: list[str] | None = None,
) -> dict:
    """Run the pipeline; returns the samples manifest."""
    from jamdata.interleaved.images import VQEncoder
    from jamdata.vocab import VocabMismatchError

    files = spec.input_files()
    tokenizer, vqvae = absolute(tokenizer), absolute(vqvae)  # in the driver: workers resolve relative paths elsewhere
    vocab = load_vocab(tokenizer, n_image_codes)
    codes = VQEncoder(vqvae, verify=spec.verify).n_codes  # a missing, damaged or mismatched model fails here
    if codes != vocab.n_image_codes:
        from jamdata.vocab import rebuild_advice

        raise VocabMismatchError(
            f"the VQ-VAE {vqvae} has {codes} codes but the joint vocabulary expects "
            f"{vocab.n_image_codes}: " + rebuild_advice(str(tokenizer), vocab.n_image_codes, codes)
        )
    config = dict(spec.config, template=spec.template.to_dict(), tokenizer=str(tokenizer), vqvae=str(vqvae))
    with output_dir(out) as out_path, output_dir(rejects_out) as rej_path:
        with progress.Pipeline("instruct", options=pipeline_options(workers, beam_args or [])) as p:
            read = (
                p
                | "Files" >> beam.Create(files)
                | "SpreadFiles" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(_Read(spec)).with_outputs("doc", "reject")
            )
            dedup = (
                read.doc
                | "KeyDocs" >> beam.Map(lambda d: (d.key, d))
                | "GroupKeys" >> beam.GroupByKey()
                | "Dedup" >> beam.FlatMap(_first_of_key).with_outputs("reject", main="doc")
            )
            built = (
                dedup.doc
                | "SpreadDocs" >> beam.Reshuffle()
                | "Build"
                >> beam.ParDo(_Build(spec, tokenizer, vqvae, n_image_codes)).with_outputs("reject", main="sample")
            )
            (
                built.sample
                | "KeySamples" >> beam.Map(lambda s: (s["key"], s))
                | "WriteSamples" >> WriteShards(str(out_path), tar_shard_writer, spec.num_shards, seed=spec.seed)
                | "SamplesManifest"
                >> WriteManifest(str(out_path), "interleaved", config, vocab, summarize, inputs=[f for _, f in files])
            )
            rejects = (read.reject, dedup.reject, built.reject) | "AllRejects" >> beam.Flatten()
            (
                rejects
                | "KeyRejects" >> beam.Map(lambda r: (json.dumps(r, sort_keys=True), r))
                | "WriteRejects" >> WriteShards(str(rej_path), parquet_shard_writer(REJECT), 1)
                | "RejectsManifest"
                >> WriteManifest(
                    str(rej_path), "rejects", config, None, summarize_rejects, inputs=[f for _, f in files]
                )
            )
    return read_manifest(str(out))


def run_from_config(
    cfg: Config,
    out: str,
    rejects_out: str,
    tokenizer: str,
    vqvae: str,
    workers: int = 1,
    beam_args: list[str] | None = None,
) -> list[str]:
    seed = cfg.section("run").get("seed", int, 0)
    section = cfg.section("instruct")
    spec = BuildSpec.from_config(section, seed=seed)
    n_codes = cfg.section("vqvae").get("codebook_size", int, 8192)
    manifest = build(spec, out, rejects_out, tokenizer, vqvae, n_codes, workers, beam_args)
    n_rej = read_manifest(rejects_out)["totals"]["records"]
    s = manifest["summary"]
    return [
        f"{manifest['totals']['records']} interleaved samples "
        f"({', '.join(f'{k} {v}' for k, v in sorted(s['sources'].items()))}), "
        f"{manifest['totals']['tokens']} tokens of which {s['targets']} targets, {s['images']} images, "
        f"{s['cm3']} CM3-masked, {s['truncated']} truncated -> {out}",
        f"{n_rej} rejects -> {rejects_out}",
    ]


def run_stage(ctx: StageContext) -> list[str]:
    """Reads the run's tokenizer and VQ-VAE datasets unless `instruct.tokenizer` / `instruct.vqvae`
    (or the command's --tokenizer / --vqvae) name others."""
    section = ctx.config.section("instruct")
    tokenizer = ctx.paths.get("tokenizer") or section.get("tokenizer", str, str(ctx.path("tokenizer")))
    vqvae = ctx.paths.get("vqvae") or section.get("vqvae", str, str(ctx.path("vqvae")))
    return run_from_config(
        ctx.config,
        str(ctx.path("instruct")),
        str(ctx.path("instruct-rejects")),
        tokenizer,
        vqvae,
        ctx.workers,
        ctx.beam_args,
    )


def stage_settings(ctx: StageContext) -> dict:
    return {
        "instruct": BuildSpec.from_config(ctx.config.section("instruct"), seed=ctx.seed),
        "codebook_size": ctx.config.section("vqvae").get("codebook_size", int, 8192),
    }


STAGE = Stage(
    "instruct",
    run_stage,
    outputs=("instruct", "instruct-rejects"),
    inputs=("tokenizer", "vqvae"),
    settings=stage_settings,
)
