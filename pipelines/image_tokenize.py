"""Image-caption collections -> VQ-tokenized webdataset tars (+ rejects), and the VQ-VAE stage.

Beam graph:
    files -> Reshuffle -> read samples (tar / jsonl / parquet) -> [unreadable -> rejects]
          -> (stable_hash(key) % encode_groups, raw) -> GroupByKey
          -> per group, sorted by key: drop duplicate keys of one file (a key that several input
             files use is kept once per file, prefixed by a stable id of the file), decode +
             preprocess, encode in batches with the VQ-VAE (loaded once per worker in setup),
             tokenize captions
          -> WriteShards (tars) -> WriteManifest
Batches are formed from a group sorted by key, so the same images always share a batch and the
codes are identical for any worker count.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import apache_beam as beam
import numpy as np

from jamdata.config import Config, ConfigError
from jamdata.io import (DEFAULT_MAX_INPUT_BYTES, InputPolicy, absolute, expand_inputs, fs_and_path, join, sha256_file,
                        stable_hash)
from jamdata.manifest import describe_shard, output_dir, read_manifest, ManifestError
from jamdata.vocab import VocabMismatchError
from pipelines.common import WriteManifest, WriteShards, parquet_shard_writer
from pipelines import progress
from pipelines.options import pipeline_options
from schemas.records import REJECT

log = logging.getLogger(__name__)
STAGE = "images"
IMAGES_KEYS = ["inputs", "resolution", "min_size", "max_aspect", "max_pixels", "jpeg_draft",
               "image_first_ratio", "batch_size", "encode_groups", "num_shards", "fields",
               "torch_threads", "channels_last", "input_roots", "allow_schemes", "max_image_bytes",
               "max_caption_chars", "verify"]
DEFAULT_MAX_CAPTION_CHARS = 4096


@dataclass
class ImageSettings:
    inputs: list[str] = field(default_factory=list)
    resolution: int | None = None     # default: the VQ-VAE's resolution
    min_size: int = 64
    max_aspect: float = 3.0
    max_pixels: int = 64 * 1024 * 1024
    jpeg_draft: bool = True
    image_first_ratio: float = 0.5
    batch_size: int = 32
    encode_groups: int = 16
    num_shards: int = 1
    fields: dict = field(default_factory=dict)
    torch_threads: int = 1
    channels_last: bool = False
    input_roots: list[str] = field(default_factory=list)    # where table rows may name image files
    allow_schemes: list[str] = field(default_factory=list)  # URL schemes rows may fetch (none)
    max_image_bytes: int = DEFAULT_MAX_INPUT_BYTES
    max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS
    verify: str = "sha256"  # how the VQ-VAE is checked against its dataset's manifest: sha256 | size
    seed: int = 0

    def input_policy(self) -> InputPolicy:
        """What image files the rows of a jsonl/parquet input may name (its own directory is
        added per file by the reader)."""
        return InputPolicy(tuple(self.input_roots), tuple(s.lower() for s in self.allow_schemes),
                           self.max_image_bytes)

    @classmethod
    def from_config(cls, cfg: Config, seed: int = 0) -> "ImageSettings":
        sec = cfg.section("images")
        sec.check_keys(IMAGES_KEYS)
        inputs = sec.get("inputs", (list, str), default=[])
        fields_ = sec.get("fields", dict, default={})
        for k in fields_:
            if k not in ("image_field", "caption_field", "key_field"):
                raise ConfigError(f"images.fields.{k}", "unknown key", ["image_field", "caption_field", "key_field"])
        res = sec.get("resolution", (int, type(None)), default=None)
        roots = sec.get("input_roots", (list, str), default=[])
        schemes = sec.get("allow_schemes", (list, str), default=[])
        return cls(
            inputs=[inputs] if isinstance(inputs, str) else list(inputs),
            resolution=res,
            min_size=int(sec.number("min_size", 64, lo=1)),
            max_aspect=float(sec.number("max_aspect", 3.0, lo=1.0)),
            max_pixels=int(sec.number("max_pixels", 64 * 1024 * 1024, lo=1)),
            jpeg_draft=sec.get("jpeg_draft", bool, default=True),
            image_first_ratio=float(sec.number("image_first_ratio", 0.5, lo=0.0, hi=1.0)),
            batch_size=int(sec.number("batch_size", 32, lo=1)),
            encode_groups=int(sec.number("encode_groups", 16, lo=1)),
            num_shards=int(sec.number("num_shards", 1, lo=1)),
            fields=fields_,
            torch_threads=int(sec.number("torch_threads", 1, lo=1)),
            channels_last=sec.get("channels_last", bool, default=False),
            input_roots=[roots] if isinstance(roots, str) else [str(r) for r in roots],
            allow_schemes=[schemes] if isinstance(schemes, str) else [str(x) for x in schemes],
            max_image_bytes=int(sec.number("max_image_bytes", DEFAULT_MAX_INPUT_BYTES, lo=1)),
            max_caption_chars=int(sec.number("max_caption_chars", DEFAULT_MAX_CAPTION_CHARS, lo=1)),
            verify=sec.choice("verify", ["sha256", "size"], default="sha256"),
            seed=seed,
        )


def _reject(rec, reason: str, detail: str) -> tuple[str, dict]:
    rid = f"{rec.key}@{Path(rec.file).name}:{rec.offset}"
    return rid, {"id": rid, "source": "image_caption", "stage": STAGE, "reason": reason,
                 "snippet": detail[:300], "file": rec.file, "offset": int(rec.offset)}


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


class _EncodeGroup(beam.DoFn):
    """Decode, preprocess and encode one hash group; the model and tokenizer load once per worker."""

    def __init__(self, vqvae_dir: str, tokenizer: str, s: ImageSettings):
        self.vqvae_dir, self.tokenizer, self.s = vqvae_dir, tokenizer, s

    def setup(self):
        import torch

        from jamdata.image.vqvae import load_vqvae
        from jamdata.text.tokenizer import TextTokenizer

        torch.set_num_threads(self.s.torch_threads)
        self.model = load_vqvae(self.vqvae_dir, verify=self.s.verify)
        if self.s.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.tok = TextTokenizer(self.tokenizer, self.model.n_embed)
        self.resolution = self.s.resolution or self.model.resolution

    def process(self, element):
        import torch

        from jamdata.image.preprocess import ImageRejected, preprocess_image
        from jamdata.image.samples import choose_order, sample_fields

        s = self.s
        _, records = element
        ready = []
        for rec, holder in assign_keys(records):
            if holder is not None:
                yield beam.pvalue.TaggedOutput("rejects", _reject(
                    rec, "duplicate_key", f"key {rec.key!r} already taken by {holder.file} offset {holder.offset}"))
                continue
            caption = (rec.caption or "").strip()
            if not caption:
                yield beam.pvalue.TaggedOutput("rejects", _reject(rec, "empty_caption", "no caption text"))
                continue
            try:
                arr, info = preprocess_image(rec.image or b"", self.resolution, s.min_size, s.max_aspect,
                                             s.max_pixels, s.jpeg_draft)
            except ImageRejected as e:
                yield beam.pvalue.TaggedOutput("rejects", _reject(rec, e.reason, e.detail))
                continue
            ready.append((rec, caption, arr, info))
        for i in range(0, len(ready), s.batch_size):
            chunk = ready[i:i + s.batch_size]
            x = torch.from_numpy(np.stack([c[2] for c in chunk]))
            if s.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            codes = self.model.encode(x).numpy()
            progress.count("images", len(chunk))
            ids = self.tok.encode_batch([c[1] for c in chunk])
            for (rec, caption, _, info), c, cid in zip(chunk, codes, ids):
                order = choose_order(rec.key, s.seed, s.image_first_ratio)
                meta = {"caption": caption, "url": rec.meta.get("url"), "width": info["width"],
                        "height": info["height"], "original_key": rec.original_key,
                        "source": Path(rec.file).name}
                yield rec.key, {"key": rec.key, "fields": sample_fields(meta, c, cid, self.tok.vocab, order)}


def _tar_writer(n_codes: int):
    def write(out_dir: str, name: str, records: list[dict]) -> list[dict]:
        from jamdata.formats.wds import TarShardWriter

        rel = f"{name}.tar"
        hist = np.zeros(n_codes, dtype=np.int64)
        tokens = image_tokens = caption_tokens = 0
        orders: Counter = Counter()
        with TarShardWriter(f"{out_dir}/{rel}") as w:
            for r in records:
                f = r["fields"]
                w.write(r["key"], f)
                hist += np.bincount(f["image_codes.npy"].reshape(-1).astype(np.int64), minlength=n_codes)
                tokens += int(f["tokens.npy"].size)
                image_tokens += int(f["image_codes.npy"].size)
                caption_tokens += int(f["caption_ids.npy"].size)
                orders[f["json"]["order"]] += 1
        summary = {"image_tokens": image_tokens, "caption_tokens": caption_tokens, "orders": dict(orders),
                   "codebook_hist": hist.tolist()}
        return [describe_shard(out_dir, rel, records=len(records), tokens=tokens, summary=summary).to_dict()]

    return write


def _summarize_samples(extra: dict, n_codes: int):
    def summarize(shards: list[dict]) -> dict:
        hist = np.zeros(n_codes, dtype=np.int64)
        orders: Counter = Counter()
        image_tokens = caption_tokens = 0
        for s in shards:
            summ = s.get("summary", {})
            # the histogram moves from each shard row into the dataset summary (one copy)
            hist += np.asarray(summ.pop("codebook_hist", np.zeros(n_codes)), dtype=np.int64)
            orders.update(summ.get("orders", {}))
            image_tokens += summ.get("image_tokens", 0)
            caption_tokens += summ.get("caption_tokens", 0)
        used = int((hist > 0).sum())
        p = hist / max(1, hist.sum())
        ppl = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())) if hist.sum() else 0.0
        return {**extra, "samples": int(sum(s.get("records") or 0 for s in shards)),
                "tokens": int(sum(s.get("tokens") or 0 for s in shards)), "image_tokens": image_tokens,
                "caption_tokens": caption_tokens, "orders": dict(sorted(orders.items())),
                "codes_used": used, "codebook_perplexity": round(ppl, 2), "codebook_histogram": hist.tolist()}

    return summarize


def _reject_writer():
    base = parquet_shard_writer(REJECT)

    def write(out_dir: str, name: str, records: list[dict]) -> list[dict]:
        infos = base(out_dir, name, records)
        infos[0]["summary"] = {"reasons": dict(sorted(Counter(r["reason"] for r in records).items()))}
        return infos

    return write


def _summarize_rejects(shards: list[dict]) -> dict:
    reasons: Counter = Counter()
    for s in shards:
        reasons.update(s.get("summary", {}).get("reasons", {}))
    return {"stage": STAGE, "rejects": int(sum(reasons.values())), "reasons": dict(sorted(reasons.items()))}


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
        raise VocabMismatchError(f"{tokenizer} has joint vocabulary {fp} but text tokenizer + {vocab.n_image_codes} "
                                 f"image codes give {vocab.fingerprint}: "
                                 + rebuild_advice(tokenizer, built, vocab.n_image_codes))


def tokenize_images(inputs: Iterable[str], out: str, rejects_out: str, vqvae_dir: str, tokenizer: str,
                    settings: ImageSettings, workers: int = 1, beam_args: Iterable[str] = (),
                    config: dict | None = None) -> dict:
    """Run the pipeline; returns the image-caption manifest summary."""
    from jamdata.image.vqvae import load_vqvae
    from jamdata.text.tokenizer import TextTokenizer

    files = expand_inputs(list(inputs))
    vqvae_dir, tokenizer = absolute(vqvae_dir), absolute(tokenizer)  # workers resolve relative paths elsewhere
    model = load_vqvae(vqvae_dir, verify=settings.verify)  # fail here, not in a worker, if the checkpoint is bad
    vocab = TextTokenizer(tokenizer, model.n_embed).vocab
    check_vocab_against(tokenizer, vocab)
    resolution = settings.resolution or model.resolution
    if resolution % model.downsample_factor:
        raise ConfigError("images.resolution", f"{resolution} is not a multiple of the VQ-VAE's "
                          f"downsampling factor {model.downsample_factor}")
    fs, p = fs_and_path(vqvae_dir)
    ckpt = join(vqvae_dir, "vqvae.ckpt") if fs.isdir(p) else vqvae_dir
    extra = {"vqvae": vqvae_dir, "vqvae_sha256": sha256_file(ckpt),
             "vqvae_params": model.params, "resolution": resolution,
             "grid": list(model.grid(resolution)), "tokenizer": str(tokenizer)}
    cfg = {"images": dict(config or {}), "settings": {**settings.__dict__, "inputs": files}}
    del model
    n_codes = vocab.n_image_codes
    groups, seed = settings.encode_groups, settings.seed
    with output_dir(out) as out_p, output_dir(rejects_out) as rej_p:
        with progress.Pipeline("images", options=pipeline_options(workers, list(beam_args))) as p:
            read = (p | "Files" >> beam.Create(files) | "SpreadFiles" >> beam.Reshuffle()
                    | "Read" >> beam.ParDo(_ReadSource(settings.fields, settings.input_policy(),
                                                       settings.max_caption_chars))
                    .with_outputs("rejects", main="records"))
            encoded = (read.records
                       | "Group" >> beam.Map(lambda r: (stable_hash("encode-group", r.key, seed=seed) % groups, r))
                       | "GroupForBatches" >> beam.GroupByKey()
                       | "Encode" >> beam.ParDo(_EncodeGroup(str(vqvae_dir), str(tokenizer), settings))
                       .with_outputs("rejects", main="samples"))
            (encoded.samples
             | "WriteTars" >> WriteShards(str(out_p), _tar_writer(n_codes), settings.num_shards, seed=seed)
             | "ManifestTars" >> WriteManifest(str(out_p), "image_caption", cfg, vocab,
                                               _summarize_samples(extra, n_codes), files))
            ((read.rejects, encoded.rejects) | "AllRejects" >> beam.Flatten()
             | "WriteRejects" >> WriteShards(str(rej_p), _reject_writer(), 1, seed=seed)
             | "ManifestRejects" >> WriteManifest(str(rej_p), "rejects", cfg, None, _summarize_rejects, files))
    return read_manifest(out)["summary"] | {"rejects": read_manifest(rejects_out)["summary"]}


# -- main-job stage ---------------------------------------------------------------------------------
def run_stage(ctx) -> list[str]:
    seed = int(ctx.config.section("run").get("seed", int, default=0))
    settings = ImageSettings.from_config(ctx.config, seed)
    if not settings.inputs:
        raise ConfigError("images.inputs", "missing (image-caption tars, jsonl or parquet files)")
    out, rej = str(ctx.path("image-caption")), str(ctx.path("image-caption-rejects"))
    s = tokenize_images(settings.inputs, out, rej, str(ctx.path("vqvae")), str(ctx.path("tokenizer")), settings,
                        ctx.workers, ctx.beam_args, ctx.config.section("images").to_dict())
    return [f"{s['samples']} samples, {s['tokens']} tokens ({s['image_tokens']} image, {s['caption_tokens']} caption), "
            f"{s['codes_used']} codes used -> {out}",
            f"{s['rejects']['rejects']} rejected {s['rejects']['reasons']} -> {rej}"]
