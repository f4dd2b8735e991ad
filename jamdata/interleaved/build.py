"""From config + raw files to finished samples: the engine-free core of `jamdata instruct build`.

`read_records` turns one input file into documents and rejects; `SampleBuilder.build` turns one
document into the fields of a webdataset sample (`tokens.npy`, `loss_mask.npy`, `json`) plus
rejects for parts it left out. The Beam pipeline only distributes these calls.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from jamdata.config import Config, ConfigError
from jamdata.interleaved.cm3 import MAX_SPANS, CM3Config, cm3_transform
from jamdata.interleaved.document import IMAGE, TEXT, Document, RejectedDocument, Segment
from jamdata.interleaved.images import ImageEncoder, load_pixels
from jamdata.interleaved.sources import (
    FORMATS,
    ImageStore,
    conversation_document,
    howto_document,
    iter_raw,
    mmc4_document,
)
from jamdata.interleaved.template import LOSS_POLICIES, Template, encode_document
from jamdata.io import DEFAULT_MAX_INPUT_BYTES, InputPolicy, absolute, expand_inputs, parent_dir, stable_hash
from jamdata.settings import as_plain, load_settings, setting
from jamdata.vocab import JointVocab
from schemas import records

STAGE = "instruct"
DEFAULT_MAX_TEXT_CHARS = 100_000
RECORD_SUFFIXES = (".json", ".jsonl")
COMPRESSION_SUFFIXES = ("", ".gz", ".zst", ".bz2", ".xz")


def reject(id_: str, source: str, reason: str, snippet: str = "", file: str = "", offset: int | None = None) -> dict:
    return records.reject(id_, source, STAGE, reason, snippet[:200], file, offset)


@dataclass(frozen=True)
class SourceSettings:
    """One entry of `instruct.sources`. Unset: `loss` from the template (mmc4: all),
    `min_images` 0 (mmc4: 1), `on_bad_image` reject (mmc4: drop)."""

    format: str = setting(doc="record format", choices=FORMATS)
    paths: list[str] = setting(doc="record files (.json/.jsonl, compressed too) or globs", one_or_many=True)
    loss: str | None = setting(None, "which tokens carry loss, over the template's", choices=(*LOSS_POLICIES, None))
    image_store: str | None = setting(None, "directory or .tar holding the images records name")
    min_images: int | None = setting(None, "documents with fewer stored images are rejected", lo=0)
    on_bad_image: str | None = setting(
        None, "an unusable image rejects the document or is dropped", choices=("reject", "drop", None)
    )
    input_roots: list[str] = setting([], "more directories records may name image files under", one_or_many=True)


@dataclass(frozen=True)
class CM3Settings:
    """`instruct.cm3`: the causally masked transform (CM3) at build time."""

    sources: list[str] = setting([], "formats it applies to (none: off)", choices=FORMATS)
    rate: float = setting(1.0, "share of those documents transformed", lo=0.0, hi=1.0)
    lam: float = setting(1.0, "Poisson mean of the number of spans", lo=1e-6, name="lambda")
    max_spans: int = setting(MAX_SPANS, "most masked spans", lo=1, hi=MAX_SPANS)
    max_span_len: int = setting(64, "most tokens per text span", lo=1)
    seed: int | None = setting(None, "seed of the draws (default: the section's seed)")


@dataclass(frozen=True)
class InstructSettings:
    """The `instruct` section (docs/instruct.md)."""

    sources: list[SourceSettings] = setting(doc="the record sources")
    template: Template = setting(Template())
    cm3: CM3Settings = setting(CM3Settings())
    image_resolution: int | None = setting(None, "image side in pixels (default: the VQ-VAE's)", lo=1)
    image_min_size: int = setting(16, "smallest image side accepted", lo=1)
    image_max_bytes: int = setting(DEFAULT_MAX_INPUT_BYTES, "largest image file accepted", lo=1)
    max_text_chars: int = setting(DEFAULT_MAX_TEXT_CHARS, "longest document text accepted", lo=1)
    num_shards: int = setting(1, "output tar shards", lo=1)
    tokenizer: str | None = setting(None, "tokenizer dataset (default: the run's)")
    vqvae: str | None = setting(None, "VQ-VAE dataset (default: the run's)")
    seed: int | None = setting(None, "seed (default: run.seed)")
    verify: str = setting("sha256", "how the VQ-VAE is checked against its manifest", choices=("sha256", "size"))


@dataclass(frozen=True)
class SourceSpec:
    format: str
    paths: tuple[str, ...]
    loss: str | None = None
    image_store: str | None = None
    min_images: int = 1
    on_bad_image: str = "reject"
    input_roots: tuple[str, ...] = ()  # besides the record file's directory and the image store

    def input_policy(self, record_file: str, max_bytes: int) -> InputPolicy:
        """Where the image files named by a record of `record_file` may be read from: that file's
        directory, the configured roots and the image store; never a web URL."""
        store = (self.image_store,) if self.image_store else ()
        return InputPolicy((parent_dir(record_file),) + tuple(self.input_roots) + store, (), max_bytes)


@dataclass(frozen=True)
class BuildSpec:
    sources: tuple[SourceSpec, ...]
    template: Template = Template()
    cm3: CM3Config | None = None
    cm3_sources: tuple[str, ...] = ()
    cm3_rate: float = 1.0
    image_resolution: int | None = None  # None: the VQ-VAE's own resolution
    image_min_size: int = 16
    image_max_bytes: int = DEFAULT_MAX_INPUT_BYTES
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    num_shards: int = 1
    seed: int = 0
    config: dict = field(default_factory=dict, compare=False)
    verify: str = "sha256"  # how the VQ-VAE is checked against its dataset's manifest: sha256 | size

    @classmethod
    def from_config(cls, cfg: Config, seed: int = 0) -> "BuildSpec":
        s = load_settings(InstructSettings, cfg)
        if not s.sources:
            raise ConfigError(cfg._key("sources"), "needs at least one source", source=cfg.source)
        sources = []
        for i, src in enumerate(s.sources):
            if src.image_store:
                check_image_store(cfg._key(f"sources.{i}.image_store"), src.image_store, cfg.source)
            mmc4 = src.format == "mmc4"
            sources.append(
                SourceSpec(  # local paths absolute here, in the driver (workers run elsewhere)
                    src.format,
                    tuple(src.paths),
                    src.loss or ("all" if mmc4 else None),
                    absolute(src.image_store) if src.image_store else None,
                    (1 if mmc4 else 0) if src.min_images is None else src.min_images,
                    src.on_bad_image or ("drop" if mmc4 else "reject"),
                    tuple(absolute(r) for r in src.input_roots),
                )
            )
        seed = seed if s.seed is None else s.seed
        c = s.cm3
        cm3 = CM3Config(
            lam=c.lam, max_spans=c.max_spans, max_span_len=c.max_span_len, seed=seed if c.seed is None else c.seed
        )
        return cls(
            tuple(sources),
            s.template,
            cm3 if c.sources else None,
            tuple(c.sources),
            c.rate,
            s.image_resolution,
            s.image_min_size,
            s.image_max_bytes,
            s.max_text_chars,
            s.num_shards,
            seed,
            as_plain(s),
            verify=s.verify,
        )

    def input_files(self) -> list[tuple[int, str]]:
        out = []
        for i, src in enumerate(self.sources):
            files = [f for f in expand_inputs(list(src.paths)) if is_record_file(f)]
            if not files:
                raise FileNotFoundError(
                    f"instruct source {i} ({src.format}): no .json/.jsonl files in {', '.join(src.paths)}"
                )
            out += [(i, f) for f in files]
        return out


def is_record_file(path: str) -> bool:
    return any(path.endswith(s + c) for s in RECORD_SUFFIXES for c in COMPRESSION_SUFFIXES)


_STORES: dict[str, ImageStore] = {}


def check_image_store(key: str, store: str, source: str = "") -> None:
    """In the driver, before any worker starts: the configured image store must be a directory
    or a .tar file (a worker would otherwise fail on every document, deep inside the pipeline)."""
    from jamdata.io import fs_and_path

    fs, p = fs_and_path(store)
    if fs.isdir(p) or (store.endswith(".tar") and fs.isfile(p)):
        return
    what = "does not exist" if not fs.exists(p) else "is neither a directory nor a .tar file"
    raise ConfigError(
        key,
        f"image store {store} {what}: give the directory (or .tar) holding the "
        "downloaded images, or remove image_store",
        source=source,
    )


def image_store(path: str | None) -> ImageStore | None:
    """One index per process and store (building it lists the whole store)."""
    if path is None:
        return None
    if path not in _STORES:
        _STORES[path] = ImageStore(path)
    return _STORES[path]


def text_too_long(doc: Document, max_chars: int) -> str | None:
    """Why a document holds a text segment beyond any sequence length (e.g. a whole book pasted
    into one step), or None. Such a segment is never tokenized: it would cost millions of tokens
    only to be cut to `max_len`."""
    for i, seg in enumerate(doc.segments):
        if seg.modality == TEXT and seg.text is not None and len(seg.text) > max_chars:
            return (
                f"text_too_long: segment {i} has {len(seg.text)} characters, more than "
                f"instruct.max_text_chars {max_chars}"
            )
    return None


def read_records(spec: BuildSpec, source_index: int, path: str) -> Iterator[tuple[str, Any]]:
    """('doc', Document) and ('reject', reject row) for every record of one file."""
    src = spec.sources[source_index]
    store = image_store(src.image_store) if src.format == "mmc4" else None
    name = posixpath.basename(path)
    for offset, record, error in iter_raw(path):
        rid = f"{src.format}:{name}:{offset}"
        if error:
            yield "reject", reject(rid, src.format, error, file=path, offset=offset)
            continue
        try:
            if src.format == "howto":
                doc = howto_document(record, path, offset, spec.template)
            elif src.format == "conversation":
                doc = conversation_document(record, path, offset)
            else:
                doc = mmc4_document(record, path, offset, store, src.min_images)
        except RejectedDocument as e:
            yield "reject", reject(rid, src.format, e.reason, e.snippet, path, offset)
            continue
        if too_long := text_too_long(doc, spec.max_text_chars):
            yield "reject", reject(rid, src.format, too_long, file=path, offset=offset)
            continue
        if src.loss:
            doc.loss = src.loss
        doc.meta["source_index"] = source_index
        for part, why in doc.dropped:
            yield "reject", reject(f"{doc.key}/{part}", src.format, why, file=path, offset=offset)
        doc.dropped = []
        yield "doc", doc


class SampleBuilder:
    """Holds the per-process state (tokenizer, image encoder) and builds one sample at a time."""

    def __init__(
        self,
        spec: BuildSpec,
        vocab: JointVocab,
        encode_text: Callable[[str], list[int]],
        encoder: ImageEncoder,
        resolution: int,
    ):
        if encoder.n_codes != vocab.n_image_codes:
            from jamdata.vocab import VocabMismatchError

            from jamdata.vocab import rebuild_advice

            raise VocabMismatchError(
                f"the VQ-VAE has {encoder.n_codes} codes but the joint vocabulary expects "
                f"{vocab.n_image_codes}: " + rebuild_advice("in use", vocab.n_image_codes, encoder.n_codes)
            )
        self.spec, self.vocab, self.encode_text, self.encoder = spec, vocab, encode_text, encoder
        self.resolution = resolution

    def uses_cm3(self, doc: Document) -> bool:
        s = self.spec
        if s.cm3 is None or doc.source not in s.cm3_sources:
            return False
        return (stable_hash(doc.key, "cm3-rate", seed=s.seed) % 1_000_000) / 1_000_000 < s.cm3_rate

    def build(self, doc: Document) -> tuple[dict | None, list[dict]]:
        """-> (sample {key, fields, stats} or None, reject rows)."""
        src = self.spec.sources[doc.meta.get("source_index", 0)]
        rejects: list[dict] = []

        def rej(reason: str, part: str = "", snippet: str = "") -> dict:
            return reject(doc.key + (f"/{part}" if part else ""), doc.source, reason, snippet, doc.file, doc.offset)

        pixels: dict[int, np.ndarray] = {}
        keep: list[Segment] = []
        policy = src.input_policy(doc.file, self.spec.image_max_bytes)
        for i, seg in enumerate(doc.segments):
            if seg.modality == IMAGE and seg.image is not None:
                px = load_pixels(seg.image, self.resolution, self.spec.image_min_size, policy)
                if isinstance(px, str):
                    if src.on_bad_image == "reject":
                        return None, [rej(px)]
                    rejects.append(rej(px, f"seg{i}"))
                    continue
                pixels[len(keep)] = px
            keep.append(seg)
        if len(keep) != len(doc.segments):
            doc = Document(doc.key, doc.source, keep, doc.file, doc.offset, doc.loss, [], doc.meta)
        if doc.n_images < src.min_images:
            return None, rejects + [rej(f"{doc.n_images} usable image(s), need {src.min_images}")]
        order = sorted(pixels)
        codes = dict(zip(order, self.encoder.encode([pixels[i] for i in order]))) if order else {}
        cm3 = self.spec.cm3 if self.uses_cm3(doc) else None
        t = self.spec.template
        budget = t.max_len - (2 * cm3.max_spans if cm3 is not None else 0)
        try:
            enc = encode_document(doc, t, self.vocab, self.encode_text, codes, budget)
        except RejectedDocument as e:
            return None, rejects + [rej(e.reason)]
        if enc.dropped:  # the sample is kept; what was cut off is recorded, not silently lost
            n_img = sum(d["modality"] == IMAGE for d in enc.dropped)
            n_txt = sum(d["tokens"] for d in enc.dropped if d["modality"] != IMAGE)
            refs = ", ".join(d["image_ref"] for d in enc.dropped if d["image_ref"])
            rejects.append(
                rej(
                    f"truncated to {budget} tokens: dropped {n_img} image segment(s) and "
                    f"{n_txt} text tokens from the end",
                    "truncation",
                    refs,
                )
            )
        tokens, mask = enc.tokens, enc.loss_mask
        layout = {
            "key": doc.key,
            "source": doc.source,
            "file": posixpath.basename(doc.file),
            "offset": doc.offset,
            "loss": doc.loss or t.loss,
            "max_len": t.max_len,
            **enc.layout(),
            "cm3": None,
        }
        if cm3 is not None:
            res = cm3_transform(tokens, self.vocab, doc.key, cm3, mask)
            assert res.loss_mask is not None  # a mask was given, so one comes back
            tokens, mask = res.tokens, res.loss_mask
            layout["cm3"] = {"spans": [list(s) for s in res.spans], "lambda": cm3.lam, "seed": cm3.seed}
            layout["n_tokens"] = int(len(tokens))
            layout["n_targets"] = int(mask.sum())
        if doc.meta.get("title"):
            layout["title"] = doc.meta["title"]
        if doc.meta.get("url"):
            layout["url"] = doc.meta["url"]
        stats = {
            "source": doc.source,
            "tokens": int(len(tokens)),
            "targets": int(mask.sum()),
            "images": doc.n_images - sum(d["modality"] == IMAGE for d in enc.dropped),
            "truncated": int(bool(enc.dropped)),
            "cm3": int(cm3 is not None),
        }
        fields = {"tokens.npy": tokens.astype(np.int32), "loss_mask.npy": mask.astype(np.uint8), "json": layout}
        return {"key": doc.key, "fields": fields, "stats": stats}, rejects


def interleaved_record(fields: dict) -> dict:
    """A decoded tar sample as a row of schema INTERLEAVED (schemas/records.py), e.g. for parquet
    exports. Segment positions refer to the sequence before CM3 masking (see docs/instruct.md)."""
    layout = fields["json"]
    seg_fields = ("modality", "role", "text", "image_ref", "start", "length")
    return {
        "key": layout["key"],
        "source": layout["source"],
        "segments": [{k: s.get(k) for k in seg_fields} for s in layout["segments"]],
        "tokens": np.asarray(fields["tokens.npy"]).astype(np.int32).tolist(),
        "loss_mask": np.asarray(fields["loss_mask.npy"]).astype(np.uint8).tolist(),
    }
