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
from jamdata.interleaved.document import IMAGE, TEXT, Document, RejectedDocument
from jamdata.interleaved.images import ImageEncoder, load_pixels
from jamdata.interleaved.sources import (FORMATS, ImageStore, conversation_document, howto_document,
                                         iter_raw, mmc4_document)
from jamdata.interleaved.template import LOSS_POLICIES, Template, encode_document
from jamdata.io import DEFAULT_MAX_INPUT_BYTES, InputPolicy, absolute, expand_inputs, parent_dir, stable_hash
from jamdata.vocab import JointVocab

STAGE = "instruct"
SECTION_KEYS = ("sources", "template", "cm3", "image_resolution", "image_min_size", "image_max_bytes",
                "max_text_chars", "num_shards", "tokenizer", "vqvae", "seed", "verify")
SOURCE_KEYS = ("format", "paths", "loss", "image_store", "min_images", "on_bad_image", "input_roots")
DEFAULT_MAX_TEXT_CHARS = 100_000
CM3_KEYS = ("sources", "rate", "lambda", "max_spans", "max_span_len", "seed")
RECORD_SUFFIXES = (".json", ".jsonl")
COMPRESSION_SUFFIXES = ("", ".gz", ".zst", ".bz2", ".xz")


def reject(id_: str, source: str, reason: str, snippet: str = "", file: str = "",
           offset: int | None = None) -> dict:
    return {"id": id_, "source": source, "stage": STAGE, "reason": reason, "snippet": snippet[:200],
            "file": file, "offset": offset}


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
        cfg.check_keys(SECTION_KEYS)
        raw_sources = cfg.get("sources", list)
        if not raw_sources:
            raise ConfigError(cfg._key("sources"), "needs at least one source")
        sources = []
        for i, raw in enumerate(raw_sources):
            s = Config(raw, cfg._key(f"sources.{i}"), cfg.source)
            s.check_keys(SOURCE_KEYS)
            fmt = s.choice("format", list(FORMATS))
            paths = s.get("paths", (str, list))
            roots = s.get("input_roots", (str, list), [])
            store = s.get("image_store", str, None)
            if store:
                check_image_store(s._key("image_store"), store, s.source)
            sources.append(SourceSpec(  # local paths absolute here, in the driver (workers run elsewhere)
                fmt, tuple([paths] if isinstance(paths, str) else paths),
                s.choice("loss", list(LOSS_POLICIES)) if s.has("loss") else ("all" if fmt == "mmc4" else None),
                absolute(store) if store else None,
                int(s.number("min_images", 1 if fmt == "mmc4" else 0, lo=0)),
                s.choice("on_bad_image", ["reject", "drop"], "drop" if fmt == "mmc4" else "reject"),
                tuple(absolute(r) for r in ([roots] if isinstance(roots, str) else [str(r) for r in roots]))))
        template = Template.from_config(cfg.section("template"))
        c = cfg.section("cm3")
        c.check_keys(CM3_KEYS)
        cm3_sources = tuple(c.get("sources", list, []))
        for name in cm3_sources:
            if name not in FORMATS:
                raise ConfigError(c._key("sources"), f"got {name!r}", allowed=FORMATS, source=cfg.source)
        cm3 = CM3Config(lam=float(c.number("lambda", 1.0, lo=1e-6)),
                        max_spans=int(c.number("max_spans", MAX_SPANS, lo=1, hi=MAX_SPANS)),
                        max_span_len=int(c.number("max_span_len", 64, lo=1)),
                        seed=int(c.number("seed", seed)))
        res = cfg.get("image_resolution", int, None)
        return cls(tuple(sources), template, cm3 if cm3_sources else None, cm3_sources,
                   float(c.number("rate", 1.0, lo=0.0, hi=1.0)), res,
                   int(cfg.number("image_min_size", 16, lo=1)),
                   int(cfg.number("image_max_bytes", DEFAULT_MAX_INPUT_BYTES, lo=1)),
                   int(cfg.number("max_text_chars", DEFAULT_MAX_TEXT_CHARS, lo=1)),
                   int(cfg.number("num_shards", 1, lo=1)), int(cfg.number("seed", seed)), cfg.to_dict(),
                   verify=cfg.choice("verify", ["sha256", "size"], "sha256"))

    def input_files(self) -> list[tuple[int, str]]:
        out = []
        for i, src in enumerate(self.sources):
            files = [f for f in expand_inputs(list(src.paths)) if is_record_file(f)]
            if not files:
                raise FileNotFoundError(f"instruct source {i} ({src.format}): no .json/.jsonl files in "
                                        f"{', '.join(src.paths)}")
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
    raise ConfigError(key, f"image store {store} {what}: give the directory (or .tar) holding the "
                           "downloaded images, or remove image_store", source=source)


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
        if seg.modality == TEXT and len(seg.text) > max_chars:
            return (f"text_too_long: segment {i} has {len(seg.text)} characters, more than "
                    f"instruct.max_text_chars {max_chars}")
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

    def __init__(self, spec: BuildSpec, vocab: JointVocab, encode_text: Callable[[str], list[int]],
                 encoder: ImageEncoder, resolution: int):
        if encoder.n_codes != vocab.n_image_codes:
            from jamdata.vocab import VocabMismatchError

            from jamdata.vocab import rebuild_advice

            raise VocabMismatchError(f"the VQ-VAE has {encoder.n_codes} codes but the joint vocabulary expects "
                                     f"{vocab.n_image_codes}: "
                                     + rebuild_advice("in use", vocab.n_image_codes, encoder.n_codes))
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
        keep = []
        policy = src.input_policy(doc.file, self.spec.image_max_bytes)
        for i, seg in enumerate(doc.segments):
            if seg.modality == IMAGE:
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
        cm3 = self.uses_cm3(doc)
        t = self.spec.template
        budget = t.max_len - (2 * self.spec.cm3.max_spans if cm3 else 0)
        try:
            enc = encode_document(doc, t, self.vocab, self.encode_text, codes, budget)
        except RejectedDocument as e:
            return None, rejects + [rej(e.reason)]
        if enc.dropped:  # the sample is kept; what was cut off is recorded, not silently lost
            n_img = sum(d["modality"] == IMAGE for d in enc.dropped)
            n_txt = sum(d["tokens"] for d in enc.dropped if d["modality"] != IMAGE)
            refs = ", ".join(d["image_ref"] for d in enc.dropped if d["image_ref"])
            rejects.append(rej(f"truncated to {budget} tokens: dropped {n_img} image segment(s) and "
                               f"{n_txt} text tokens from the end", "truncation", refs))
        tokens, mask = enc.tokens, enc.loss_mask
        layout = {"key": doc.key, "source": doc.source, "file": posixpath.basename(doc.file),
                  "offset": doc.offset, "loss": doc.loss or t.loss, "max_len": t.max_len,
                  **enc.layout(), "cm3": None}
        if cm3:
            res = cm3_transform(tokens, self.vocab, doc.key, self.spec.cm3, mask)
            tokens, mask = res.tokens, res.loss_mask
            layout["cm3"] = {"spans": [list(s) for s in res.spans], "lambda": self.spec.cm3.lam,
                             "seed": self.spec.cm3.seed}
            layout["n_tokens"] = int(len(tokens))
            layout["n_targets"] = int(mask.sum())
        if doc.meta.get("title"):
            layout["title"] = doc.meta["title"]
        if doc.meta.get("url"):
            layout["url"] = doc.meta["url"]
        stats = {"source": doc.source, "tokens": int(len(tokens)), "targets": int(mask.sum()),
                 "images": doc.n_images - sum(d["modality"] == IMAGE for d in enc.dropped),
                 "truncated": int(bool(enc.dropped)), "cm3": int(cm3)}
        fields = {"tokens.npy": tokens.astype(np.int32), "loss_mask.npy": mask.astype(np.uint8), "json": layout}
        return {"key": doc.key, "fields": fields, "stats": stats}, rejects


def interleaved_record(fields: dict) -> dict:
    """A decoded tar sample as a row of schema INTERLEAVED (schemas/records.py), e.g. for parquet
    exports. Segment positions refer to the sequence before CM3 masking (see docs/instruct.md)."""
    layout = fields["json"]
    seg_fields = ("modality", "role", "text", "image_ref", "start", "length")
    return {"key": layout["key"], "source": layout["source"],
            "segments": [{k: s.get(k) for k in seg_fields} for s in layout["segments"]],
            "tokens": np.asarray(fields["tokens.npy"]).astype(np.int32).tolist(),
            "loss_mask": np.asarray(fields["loss_mask.npy"]).astype(np.uint8).tolist()}
