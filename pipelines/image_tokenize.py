"""Image-caption collections -> VQ-tokenized webdataset tars (+ rejects).

Beam graph:
    files -> Reshuffle -> read samples (tar / jsonl / parquet) -> [unreadable -> rejects]
          -> Prepare: decode + preprocess, tokenize the caption
             [undecodable, too small, empty caption ... -> a small stub that keeps its key]
          -> RunInference (jamdata.image.inference: batches of exactly images.batch_size,
             one model per worker process shared by its threads, device cpu | cuda | auto)
          -> (key, encoded sample or stub) -> GroupByKey by sample key
          -> per key, in (file, offset) order: drop duplicate keys of one file (a key that several
             input files use is kept once per file, prefixed by a stable id of the file), emit
             samples and the stubs' rejects
          -> WriteShards (tars) -> WriteManifest
Only codes, caption ids and metadata are shuffled, never image bytes, and no step holds more than
one batch of decoded images. Every batch is padded to images.batch_size, so an image's codes do
not depend on its batch-mates: outputs are identical for any worker count, runner and bundling.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import apache_beam as beam
import numpy as np

from jamdata.config import ConfigError
from jamdata.image.settings import DEFAULT_MAX_CAPTION_CHARS, ImageSettings  # noqa: F401 (re-exported)
from jamdata.io import InputPolicy, absolute, expand_inputs, fs_and_path, join, sha256_file, stable_hash
from jamdata.manifest import read_manifest, ManifestError
from jamdata.stage import Stage, StageContext
from jamdata.vocab import VocabMismatchError
from schemas import records
from pipelines.common import WriteManifest, WriteShards
from pipelines import progress
from pipelines.image_shards import STAGE_NAME, reject_writer, summarize_rejects, summarize_samples, tar_writer
from pipelines.options import pipeline_options

log = logging.getLogger(__name__)


def _not_memory_notice(record: logging.LogRecord) -> bool:
    """Beam 2.77's RunInference imports `resource` together with its model manager, which needs
    scipy (not a dependency here); without it, every model load warns that RunInference cannot
    measure its memory: a note about its own metric, not about the job."""
    return "Resource module is not available" not in record.getMessage()


logging.getLogger().addFilter(_not_memory_notice)


def _reject(rec, reason: str, detail: str) -> tuple[str, dict]:
    rid = f"{rec.key}@{Path(rec.file).name}:{rec.offset}"
    return rid, records.reject(rid, "image_caption", STAGE_NAME, reason, detail[:300], rec.file, int(rec.offset))


def _caption_too_long(rec, max_chars: int) -> str | None:
    """A caption far beyond any sequence length is a broken record (e.g. a whole web page pasted
    into the caption field), not a sample to tokenize."""
    n = len(rec.caption or "")
    return f"caption has {n} characters, more than images.max_caption_chars {max_chars}" if n > max_chars else None


class _ReadSource(beam.DoFn):
    def __init__(self, fields: dict, policy: InputPolicy, max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS):
        self.fields, self.policy, self.max_caption_chars = fields, policy, max_caption_chars

    def process(self, path: str):
        from jamdata.image.sources import read_source

        for rec in read_source(path, self.fields, self.policy):
            if rec.error:
                yield beam.pvalue.TaggedOutput("rejects", _reject(rec, *rec.error))
            elif too_long := _caption_too_long(rec, self.max_caption_chars):
                yield beam.pvalue.TaggedOutput("rejects", _reject(rec, "caption_too_long", too_long))
            else:
                yield rec


def collection_id(file: str) -> str:
    """A short id of an input file that is the same on every run and machine for the same path."""
    return f"{stable_hash('collection', file):016x}"[:10]


def assign_keys(records):
    """(record with its output key, first holder or None) in key order. A key seen again in the
    same file is a true duplicate (second value: the record that holds it). A key that another
    input file already holds (two img2dataset collections both numbered from 000000000) is kept,
    prefixed with the collection id of its file; the first file in path order keeps the plain
    key, so a single collection's keys never change."""
    holders: dict[str, dict[str, object]] = {}
    for rec in sorted(records, key=lambda r: (r.key, r.file, r.offset)):
        files = holders.setdefault(rec.key, {})
        if rec.file in files:
            yield rec, files[rec.file]
            continue
        files[rec.file] = rec
        if len(files) > 1:
            rec = dataclasses.replace(rec, key=f"{collection_id(rec.file)}_{rec.key}")
        yield rec, None


@dataclass(frozen=True)
class Item:
    """One input sample after preprocessing: what crosses the shuffle (no pixels, no image bytes).
    A sample that cannot be used still travels as a stub with its `reject`, because it holds
    its key against later duplicates exactly like a good one."""

    key: str
    original_key: str
    file: str
    offset: int
    caption: str = ""
    url: str | None = None
    width: int = 0
    height: int = 0
    caption_ids: tuple[int, ...] = ()
    codes: np.ndarray | None = None
    check: tuple[int, int] | None = None  # (codes checked against fp32, codes that differ)
    reject: tuple[str, str] | None = None  # (reason, detail)


def _stub(rec, reason: str, detail: str) -> Item:
    return Item(rec.key, rec.original_key, rec.file, rec.offset, reject=(reason, detail))


class _Prepare(beam.DoFn):
    """Record -> (Item, (image array, check in fp32?)) for RunInference, or a stub Item."""

    def __init__(self, tokenizer: str, n_codes: int, resolution: int, s: ImageSettings):
        self.tokenizer, self.n_codes, self.resolution, self.s = tokenizer, n_codes, resolution, s

    def setup(self):
        from jamdata.text.tokenizer import TextTokenizer

        self.tok = TextTokenizer(self.tokenizer, self.n_codes)

    def process(self, rec):
        from jamdata.image.preprocess import ImageRejected, preprocess_image

        s = self.s
        caption = (rec.caption or "").strip()
        if not caption:
            yield beam.pvalue.TaggedOutput("stubs", _stub(rec, "empty_caption", "no caption text"))
            return
        try:
            arr, info = preprocess_image(
                rec.image or b"", self.resolution, s.min_size, s.max_aspect, s.max_pixels, s.jpeg_draft
            )
        except ImageRejected as e:
            yield beam.pvalue.TaggedOutput("stubs", _stub(rec, e.reason, e.detail))
            return
        check = (
            s.precision != "fp32" and stable_hash("precision-check", rec.key, seed=s.seed) < s.check_fraction * 2.0**64
        )
        item = Item(
            rec.key,
            rec.original_key,
            rec.file,
            rec.offset,
            caption,
            rec.meta.get("url"),
            info["width"],
            info["height"],
            tuple(self.tok.encode(caption)),
        )
        yield item, (arr, check)


def _encoded(element) -> Item:
    item, result = element
    codes, check = result.inference
    progress.count("images")
    return dataclasses.replace(item, codes=codes, check=check)


class _Resolve(beam.DoFn):
    """All items of one sample key -> samples (key, tar record) and rejects."""

    def __init__(self, vocab, s: ImageSettings):
        self.vocab, self.s = vocab, s

    def process(self, element):
        from jamdata.image.samples import choose_order, sample_fields

        _, items = element
        for item, holder in assign_keys(items):
            if holder is not None:
                yield beam.pvalue.TaggedOutput(
                    "rejects",
                    _reject(
                        item, "duplicate_key", f"key {item.key!r} already taken by {holder.file} offset {holder.offset}"
                    ),
                )
            elif item.reject is not None:
                yield beam.pvalue.TaggedOutput("rejects", _reject(item, *item.reject))
            else:
                order = choose_order(item.key, self.s.seed, self.s.image_first_ratio)
                meta = {
                    "caption": item.caption,
                    "url": item.url,
                    "width": item.width,
                    "height": item.height,
                    "original_key": item.original_key,
                    "source": Path(item.file).name,
                }
                fields = sample_fields(meta, item.codes, list(item.caption_ids), self.vocab, order)
                yield item.key, {"key": item.key, "fields": fields, "check": item.check}


def check_vocab_against(tokenizer: str, vocab) -> None:
    """In the main job the tokenizer dataset records the joint vocabulary; ours must agree."""
    fs, p = fs_and_path(tokenizer)
    if not fs.isdir(p):
        return
    try:
        fp = read_manifest(tokenizer).get("vocab_fingerprint")
    except ManifestError:
        return
    if fp and fp != vocab.fingerprint:
        from jamdata.vocab import rebuild_advice

        built = (read_manifest(tokenizer).get("vocab") or {}).get("n_image_codes")
        raise VocabMismatchError(
            f"{tokenizer} has joint vocabulary {fp} but text tokenizer + {vocab.n_image_codes} "
            f"image codes give {vocab.fingerprint}: " + rebuild_advice(tokenizer, built, vocab.n_image_codes)
        )


def encode_handler(vqvae_dir: str, s: ImageSettings):
    """The keyed RunInference model handler for these settings."""
    from apache_beam.ml.inference.base import KeyedModelHandler

    from jamdata.image.inference import VQEncodeHandler

    return KeyedModelHandler(
        VQEncodeHandler(
            vqvae_dir,
            batch_size=s.batch_size,
            device=s.device,
            precision=s.precision,
            verify=s.verify,
            torch_threads=s.torch_threads,
            channels_last=s.channels_last,
        )
    )


def tokenize_images(
    inputs: Iterable[str],
    out: str,
    rejects_out: str,
    vqvae_dir: str,
    tokenizer: str,
    settings: ImageSettings,
    workers: int = 1,
    beam_args: Iterable[str] = (),
    config: dict | None = None,
) -> dict:
    """Run the pipeline; returns the image-caption manifest summary."""
    from apache_beam.ml.inference.base import RunInference

    from jamdata.image.vqvae import load_vqvae
    from jamdata.manifest import output_dir
    from jamdata.text.tokenizer import TextTokenizer

    files = expand_inputs(list(inputs))
    vqvae_dir, tokenizer = absolute(vqvae_dir), absolute(tokenizer)  # workers resolve relative paths elsewhere
    model = load_vqvae(vqvae_dir, verify=settings.verify)  # fail here, not in a worker, if the checkpoint is bad
    vocab = TextTokenizer(tokenizer, model.n_embed).vocab
    check_vocab_against(tokenizer, vocab)
    resolution = settings.resolution or model.resolution
    if resolution % model.downsample_factor:
        raise ConfigError(
            "images.resolution",
            f"{resolution} is not a multiple of the VQ-VAE's downsampling factor {model.downsample_factor}",
        )
    fs, local = fs_and_path(vqvae_dir)
    ckpt = join(vqvae_dir, "vqvae.ckpt") if fs.isdir(local) else vqvae_dir
    extra = {
        "vqvae": vqvae_dir,
        "vqvae_sha256": sha256_file(ckpt),
        "vqvae_params": model.params,
        "resolution": resolution,
        "grid": list(model.grid(resolution)),
        "tokenizer": str(tokenizer),
    }
    cfg = {"images": dict(config or {}), "settings": {**settings.__dict__, "inputs": files}}
    n_codes = model.n_embed
    del model
    s, seed = settings, settings.seed
    with output_dir(out) as out_p, output_dir(rejects_out) as rej_p:
        with progress.Pipeline("images", options=pipeline_options(workers, list(beam_args))) as p:
            read = (
                p
                | "Files" >> beam.Create(files)
                | "SpreadFiles" >> beam.Reshuffle()
                | "Read"
                >> beam.ParDo(_ReadSource(s.fields, s.input_policy(), s.max_caption_chars)).with_outputs(
                    "rejects", main="records"
                )
            )
            prepared = read.records | "Prepare" >> beam.ParDo(
                _Prepare(str(tokenizer), n_codes, resolution, s)
            ).with_outputs("stubs", main="images")
            encoded = (
                prepared.images
                | "Encode" >> RunInference(encode_handler(str(vqvae_dir), s))
                | "Codes" >> beam.Map(_encoded)
            )
            resolved = (
                (encoded, prepared.stubs)
                | "AllItems" >> beam.Flatten()
                | "ByKey" >> beam.Map(lambda it: (it.key, it))
                | "GroupByKey" >> beam.GroupByKey()
                | "Resolve" >> beam.ParDo(_Resolve(vocab, s)).with_outputs("rejects", main="samples")
            )
            (
                resolved.samples
                | "WriteTars" >> WriteShards(str(out_p), tar_writer(n_codes), s.num_shards, seed=seed)
                | "ManifestTars"
                >> WriteManifest(
                    str(out_p),
                    "image_caption",
                    cfg,
                    vocab,
                    summarize_samples(extra, n_codes, s.precision, s.max_code_mismatch),
                    files,
                )
            )
            (
                (read.rejects, resolved.rejects)
                | "AllRejects" >> beam.Flatten()
                | "WriteRejects" >> WriteShards(str(rej_p), reject_writer(), 1, seed=seed)
                | "ManifestRejects" >> WriteManifest(str(rej_p), "rejects", cfg, None, summarize_rejects, files)
            )
    return read_manifest(out)["summary"] | {"rejects": read_manifest(rejects_out)["summary"]}


# -- main-job stage ---------------------------------------------------------------------------------
def run_stage(ctx: StageContext) -> list[str]:
    settings = ImageSettings.from_config(ctx.config, ctx.seed)
    if not settings.inputs:
        raise ConfigError("images.inputs", "missing (image-caption tars, jsonl or parquet files)")
    out, rej = str(ctx.path("image-caption")), str(ctx.path("image-caption-rejects"))
    s = tokenize_images(
        settings.inputs,
        out,
        rej,
        str(ctx.path("vqvae")),
        str(ctx.path("tokenizer")),
        settings,
        ctx.workers,
        ctx.beam_args,
        ctx.config.section("images").to_dict(),
    )
    return [
        f"{s['samples']} samples, {s['tokens']} tokens ({s['image_tokens']} image, {s['caption_tokens']} caption), "
        f"{s['codes_used']} codes used -> {out}",
        f"{s['rejects']['rejects']} rejected {s['rejects']['reasons']} -> {rej}",
    ]


STAGE = Stage(
    "images",
    run_stage,
    outputs=("image-caption", "image-caption-rejects"),
    inputs=("tokenizer", "vqvae"),
    settings=lambda ctx: ImageSettings.from_config(ctx.config, ctx.seed),
)
