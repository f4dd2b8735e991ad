"""Image-caption samples in the joint vocabulary, in both CM3leon orders.

    caption_first:  caption ids  <break> <boi> image ids (row-major) <eoi> </s>
    image_first:    <boi> image ids <eoi> <break> caption ids </s>

Which order a sample gets is a seeded stable hash of its key, so it never depends on input order
or worker count. `</s>` ends every sample, as in the text token shards, so packed sequences keep
their document boundaries.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jamdata.io import stable_hash
from jamdata.vocab import JointVocab

CAPTION_FIRST, IMAGE_FIRST = "caption_first", "image_first"


def choose_order(key: str, seed: int, image_first_ratio: float) -> str:
    u = stable_hash("image-order", key, seed=seed) / 2.0**64
    return IMAGE_FIRST if u < image_first_ratio else CAPTION_FIRST


def joint_tokens(caption_ids: np.ndarray, codes: np.ndarray, vocab: JointVocab, order: str) -> np.ndarray:
    image = np.concatenate([[vocab.boi_id], vocab.image_ids(np.asarray(codes).reshape(-1)), [vocab.eoi_id]])
    text = np.asarray(caption_ids, dtype=np.int64)
    brk = np.asarray([vocab.break_id], dtype=np.int64)
    parts = [text, brk, image] if order == CAPTION_FIRST else [image, brk, text]
    return np.concatenate(parts + [np.asarray([vocab.eos_id], dtype=np.int64)]).astype(np.int32)


def split_tokens(tokens: np.ndarray, vocab: JointVocab) -> tuple[np.ndarray, np.ndarray, str]:
    """Inverse of joint_tokens: (caption ids, flat image codes, order)."""
    t = np.asarray(tokens, dtype=np.int64)
    boi = int(np.flatnonzero(t == vocab.boi_id)[0])
    eoi = int(np.flatnonzero(t == vocab.eoi_id)[0])
    codes = vocab.image_codes(t[boi + 1 : eoi])
    if boi == 0:
        return t[eoi + 2 : -1], codes, IMAGE_FIRST
    return t[: boi - 1], codes, CAPTION_FIRST


def sample_fields(
    meta: dict[str, Any], codes: np.ndarray, caption_ids: list[int] | np.ndarray, vocab: JointVocab, order: str
) -> dict[str, Any]:
    """The tar members of one sample (webdataset field name -> value)."""
    codes = np.asarray(codes)
    if codes.max(initial=0) >= 65536:
        raise ValueError("image codes above 65535 do not fit uint16")
    return {
        "json": {**meta, "order": order},
        "image_codes.npy": codes.astype(np.uint16),
        "caption_ids.npy": np.asarray(caption_ids, dtype=np.int32),
        "tokens.npy": joint_tokens(np.asarray(caption_ids), codes, vocab, order),
    }
