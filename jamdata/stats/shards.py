"""Per-shard statistics for every dataset kind the pipelines write (the map side of the report).

`shard_stats(kind, path, vocab)` returns {metric key: aggregate}; keys are `<group>/<metric>` where
group is the text source (or `all`). Pure and independent of other shards, so they run in parallel.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jamdata.io import open_url
from jamdata.stats import aggregate as agg
from jamdata.vocab import JointVocab
from schemas.records import split_reason


def _documents(path: str) -> dict:
    import pyarrow.parquet as pq

    with open_url(path, "rb") as f:  # never pq.read_table(URL): pyarrow's own S3 client ignores storage options
        t = pq.read_table(f, columns=["id", "source", "text", "language", "quality_score", "metadata"])
    out: dict = {}
    sources = t.column("source").to_pylist()
    texts = t.column("text").to_pylist()
    ids = t.column("id").to_pylist()
    langs = t.column("language").to_pylist()
    quality = t.column("quality_score").to_pylist()
    metas = [_model_scores(m) for m in t.column("metadata").to_pylist()]
    for src in sorted(set(sources)):
        idx = [i for i, s in enumerate(sources) if s == src]
        chars = [len(texts[i]) for i in idx]
        nbytes = [len(texts[i].encode("utf-8")) for i in idx]
        out[f"{src}/chars"] = agg.dist(chars)
        out[f"{src}/bytes"] = agg.dist(nbytes)
        out[f"{src}/language"] = agg.counter(langs[i] or "unknown" for i in idx)
        out[f"{src}/examples"] = agg.examples((ids[i], texts[i][:300]) for i in idx)  # what it looks like
        q = [quality[i] for i in idx if quality[i] is not None]
        if q:
            out[f"{src}/quality_score"] = agg.dist(q, unit=True)  # a score in [0, 1]: linear bins
        # the model filters' per-document values (docs/text-filters.md): CCNet perplexity buckets
        # and the reference-page classifier's score, when those filters ran
        buckets = [metas[i]["perplexity_bucket"] for i in idx if "perplexity_bucket" in metas[i]]
        if buckets:
            out[f"{src}/perplexity_bucket"] = agg.counter(buckets)
        pps = [metas[i]["perplexity"] for i in idx if isinstance(metas[i].get("perplexity"), (int, float))]
        if pps:
            out[f"{src}/perplexity"] = agg.dist(pps)
        probs = [metas[i]["quality_prob"] for i in idx if isinstance(metas[i].get("quality_prob"), (int, float))]
        if probs:
            out[f"{src}/reference_score"] = agg.dist(probs, unit=True)
    return out


def _model_scores(metadata: str | None) -> dict:
    """The model filters' values kept in a document's metadata (empty when they did not run)."""
    try:
        meta = json.loads(metadata or "{}")
    except ValueError:
        return {}
    if not isinstance(meta, dict):
        return {}
    return {k: meta[k] for k in ("perplexity", "perplexity_bucket", "quality_prob") if k in meta}


def _rejects(path: str) -> dict:
    import pyarrow.parquet as pq

    with open_url(path, "rb") as f:
        t = pq.read_table(f).to_pylist()
    out: dict = {}
    for r in t:
        # grouped by `stage: code` (see schemas.records.split_reason): the detail, which holds
        # numbers, ids and URLs, goes into the examples, so one cause is one row however it varies
        code, detail = split_reason(r["reason"])
        reason = f"{r['stage']}: {code}"
        snippet = (r.get("snippet") or "")[:200]
        out = agg.merge_maps(
            out,
            {
                f"{r['source']}/rejects": agg.counter([reason]),
                f"{r['source']}/reject_stage": agg.counter([r["stage"]]),
                f"{r['source']}/reject_examples/{reason}": agg.examples(
                    [(r["id"], detail[:200] + (f" — {snippet}" if snippet else ""))]
                ),
            },
        )
    return out


def _text_tokens(path: str, group: str) -> dict:
    from jamdata.formats.megatron import read_index

    lengths = read_index(path).sequence_lengths
    return {f"{group}/tokens": agg.dist(lengths.astype(np.int64))}


def _tar_samples(path: str):
    from jamdata.formats.wds import iter_samples

    for s in iter_samples(path):
        yield s.key, s.decoded()


def _image_caption(path: str, vocab: JointVocab | None) -> dict:
    caption_chars, caption_tokens, widths, heights, lengths, orders = [], [], [], [], [], []
    code_arrays = []
    for _, d in _tar_samples(path):
        meta = d.get("json", {})
        caption_chars.append(len(meta.get("caption", "")))
        caption_tokens.append(int(np.asarray(d.get("caption_ids.npy", [])).size))
        if meta.get("width"):
            widths.append(meta["width"])
        if meta.get("height"):
            heights.append(meta["height"])
        orders.append(meta.get("order", "unknown"))
        lengths.append(int(np.asarray(d["tokens.npy"]).size))
        if "image_codes.npy" in d:
            code_arrays.append(np.asarray(d["image_codes.npy"]).ravel())
    n_codes = vocab.n_image_codes if vocab else int(max((a.max() for a in code_arrays), default=0)) + 1
    out = {
        "all/caption_chars": agg.dist(caption_chars),
        "all/caption_tokens": agg.dist(caption_tokens),
        "all/width": agg.dist(widths),
        "all/height": agg.dist(heights),
        "all/tokens": agg.dist(lengths),
        "all/order": agg.counter(orders),
    }
    out["all/codes"] = agg.codes(np.concatenate(code_arrays) if code_arrays else np.zeros(0, np.int64), n_codes)
    return out


def _interleaved(path: str, vocab: JointVocab | None) -> dict:
    images, segments, lengths, loss, sources = [], [], [], [], []
    for _, d in _tar_samples(path):
        tokens = np.asarray(d["tokens.npy"])
        mask = np.asarray(d.get("loss_mask.npy", np.ones_like(tokens)))
        meta = d.get("json", {})
        segs = meta.get("segments", [])
        segments.append(len(segs))
        if vocab is not None:
            images.append(int((tokens == vocab.boi_id).sum()))
        else:
            images.append(sum(1 for s in segs if s.get("modality") == "image"))
        lengths.append(int(tokens.size))
        loss.append(int(mask.astype(bool).sum()))
        sources.append(meta.get("source", "unknown"))
    return {
        "all/images_per_sample": agg.dist(images),
        "all/segments_per_sample": agg.dist(segments),
        "all/tokens": agg.dist(lengths),
        "all/loss_tokens": agg.dist(loss),
        "all/source": agg.counter(sources),
    }


def shard_stats(kind: str, path: str, group: str | None = None, vocab: JointVocab | None = None) -> dict:
    """Statistics of one shard; unknown files (e.g. the .bin of an .idx) give nothing."""
    suffix = Path(path).suffix
    if kind == "documents" and suffix == ".parquet":
        return _documents(path)
    if kind == "rejects" and suffix == ".parquet":
        return _rejects(path)
    if kind == "text_tokens" and suffix == ".idx":
        return _text_tokens(path, group or "all")
    if kind == "image_caption" and suffix == ".tar":
        return _image_caption(path, vocab)
    if kind == "interleaved" and suffix == ".tar":
        return _interleaved(path, vocab)
    return {}


def json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o))


def dumps(obj) -> str:
    return json.dumps(obj, default=json_default, sort_keys=True, indent=2)
