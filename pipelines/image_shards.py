"""What the images stage writes: webdataset tars of samples, reject parquet, and the figures their
manifests carry (codebook histogram, orders, and the fp16/bf16 check against fp32)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from jamdata.errors import UserError
from jamdata.manifest import describe_shard
from pipelines.common import parquet_shard_writer
from schemas.records import REJECT

STAGE_NAME = "images"


class CodeMismatchError(UserError):
    """Reduced-precision encoding changed more codes than `images.max_code_mismatch` allows."""


def tar_writer(n_codes: int):
    def write(out_dir: str, name: str, records: list[dict]) -> list[dict]:
        from jamdata.formats.wds import TarShardWriter

        rel = f"{name}.tar"
        hist = np.zeros(n_codes, dtype=np.int64)
        tokens = image_tokens = caption_tokens = 0
        checked = [0, 0, 0]  # images, codes, codes differing from fp32
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
                if r.get("check") is not None:
                    checked = [checked[0] + 1, checked[1] + r["check"][0], checked[2] + r["check"][1]]
        summary = {
            "image_tokens": image_tokens,
            "caption_tokens": caption_tokens,
            "orders": dict(orders),
            "codebook_hist": hist.tolist(),
            "precision_check": checked,
        }
        return [describe_shard(out_dir, rel, records=len(records), tokens=tokens, summary=summary).to_dict()]

    return write


def precision_summary(checked: list[int], precision: str, bound: float) -> dict:
    """The dataset's fp32 check; raises CodeMismatchError when too many codes differ (so the
    manifest is never written and no later stage reads the dataset)."""
    images, codes, differ = checked
    rate = differ / codes if codes else 0.0
    if rate > bound:
        raise CodeMismatchError(
            f"images.precision {precision}: {differ} of {codes} codes ({rate:.2%}) in {images} images checked "
            f"against fp32 differ, more than images.max_code_mismatch {bound:.2%}; use precision fp32 "
            "(or bf16 instead of fp16), or raise the bound"
        )
    return {
        "precision": precision,
        "checked_images": images,
        "checked_codes": codes,
        "differing_codes": differ,
        "differing_rate": round(rate, 6),
        "bound": bound,
    }


def summarize_samples(extra: dict, n_codes: int, precision: str = "fp32", bound: float = 1.0):
    def summarize(shards: list[dict]) -> dict:
        hist = np.zeros(n_codes, dtype=np.int64)
        orders: Counter = Counter()
        image_tokens = caption_tokens = 0
        checked = [0, 0, 0]
        for s in shards:
            summ = s.get("summary", {})
            # the histogram moves from each shard row into the dataset summary (one copy)
            hist += np.asarray(summ.pop("codebook_hist", np.zeros(n_codes)), dtype=np.int64)
            orders.update(summ.get("orders", {}))
            image_tokens += summ.get("image_tokens", 0)
            caption_tokens += summ.get("caption_tokens", 0)
            checked = [a + b for a, b in zip(checked, summ.get("precision_check", [0, 0, 0]))]
        used = int((hist > 0).sum())
        p = hist / max(1, hist.sum())
        ppl = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())) if hist.sum() else 0.0
        return {
            **extra,
            "samples": int(sum(s.get("records") or 0 for s in shards)),
            "tokens": int(sum(s.get("tokens") or 0 for s in shards)),
            "image_tokens": image_tokens,
            "caption_tokens": caption_tokens,
            "orders": dict(sorted(orders.items())),
            "codes_used": used,
            "codebook_perplexity": round(ppl, 2),
            "precision_check": precision_summary(checked, precision, bound),
            "codebook_histogram": hist.tolist(),
        }

    return summarize


def reject_writer():
    base = parquet_shard_writer(REJECT)

    def write(out_dir: str, name: str, records: list[dict]) -> list[dict]:
        infos = base(out_dir, name, records)
        infos[0]["summary"] = {"reasons": dict(sorted(Counter(r["reason"] for r in records).items()))}
        return infos

    return write


def summarize_rejects(shards: list[dict]) -> dict:
    reasons: Counter = Counter()
    for s in shards:
        reasons.update(s.get("summary", {}).get("reasons", {}))
    return {"stage": STAGE_NAME, "rejects": int(sum(reasons.values())), "reasons": dict(sorted(reasons.items()))}
