"""The joint text+image vocabulary: text pieces, then special tokens, then image codes.

Layout (ids are global):
    [0, text_size)                       SentencePiece pieces, unchanged
    [special_offset, image_offset)       SPECIAL_TOKENS in the listed order
    [image_offset, image_offset + codes) VQ-VAE codebook entries 0..codes-1

The fingerprint hashes the whole layout (including the SentencePiece model bytes), so two
datasets made with different tokenizers can never be mixed silently.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
from jamdata.errors import UserError

SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>",
    "<s>",
    "</s>",
    "<break>",
    "<boi>",
    "<eoi>",
) + tuple(f"<mask:{i}>" for i in range(16))

TEXT, SPECIAL, IMAGE = "text", "special", "image"


class VocabMismatchError(UserError, ValueError):
    """Two datasets (or a dataset and a tokenizer) disagree on the joint vocabulary."""


@dataclass(frozen=True)
class JointVocab:
    text_size: int
    text_model_sha256: str
    n_image_codes: int = 8192
    specials: tuple[str, ...] = SPECIAL_TOKENS
    _special_index: dict = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_special_index", {s: i for i, s in enumerate(self.specials)})
        if len(self._special_index) != len(self.specials):
            raise ValueError("duplicate special tokens")

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_sentencepiece(cls, model_path: str, n_image_codes: int = 8192) -> "JointVocab":
        import sentencepiece as spm

        from jamdata.io import open_url

        with open_url(model_path, "rb") as f:
            proto = f.read()
        sp = spm.SentencePieceProcessor(model_proto=proto)
        return cls(sp.get_piece_size(), hashlib.sha256(proto).hexdigest(), n_image_codes)

    def to_dict(self) -> dict:
        return {
            "text_size": self.text_size,
            "text_model_sha256": self.text_model_sha256,
            "n_image_codes": self.n_image_codes,
            "specials": list(self.specials),
            "special_offset": self.special_offset,
            "image_offset": self.image_offset,
            "size": self.size,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "JointVocab":
        v = cls(d["text_size"], d["text_model_sha256"], d["n_image_codes"], tuple(d["specials"]))
        if "fingerprint" in d and d["fingerprint"] != v.fingerprint:
            raise VocabMismatchError(
                f"vocab description fingerprint {d['fingerprint']} does not match its layout ({v.fingerprint})"
            )
        return v

    # -- layout ------------------------------------------------------------------------
    @property
    def special_offset(self) -> int:
        return self.text_size

    @property
    def image_offset(self) -> int:
        return self.text_size + len(self.specials)

    @property
    def size(self) -> int:
        return self.image_offset + self.n_image_codes

    @property
    def dtype(self) -> np.dtype:
        """Smallest unsigned dtype that holds every id (what token shards store)."""
        return np.dtype(np.uint16) if self.size <= 65536 else np.dtype(np.int32)

    @property
    def fingerprint(self) -> str:
        layout = json.dumps(
            [self.text_size, self.text_model_sha256, list(self.specials), self.n_image_codes],
            separators=(",", ":"),
        )
        return "jv1-" + hashlib.sha256(layout.encode()).hexdigest()[:24]

    # -- ids ---------------------------------------------------------------------------
    def special_id(self, name: str) -> int:
        try:
            return self.special_offset + self._special_index[name]
        except KeyError:
            raise KeyError(f"unknown special token {name!r}; known: {', '.join(self.specials)}") from None

    @property
    def pad_id(self) -> int:
        return self.special_id("<pad>")

    @property
    def bos_id(self) -> int:
        return self.special_id("<s>")

    @property
    def eos_id(self) -> int:
        return self.special_id("</s>")

    @property
    def break_id(self) -> int:
        return self.special_id("<break>")

    @property
    def boi_id(self) -> int:
        return self.special_id("<boi>")

    @property
    def eoi_id(self) -> int:
        return self.special_id("<eoi>")

    def mask_id(self, i: int) -> int:
        return self.special_id(f"<mask:{i}>")

    def image_ids(self, codes: np.ndarray | Iterable[int]) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= self.n_image_codes):
            raise ValueError(f"image code out of range [0, {self.n_image_codes})")
        return codes + self.image_offset

    def image_codes(self, ids: np.ndarray | Iterable[int]) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < self.image_offset or ids.max() >= self.size):
            raise ValueError("id outside the image range")
        return ids - self.image_offset

    def modality(self, ids: np.ndarray) -> np.ndarray:
        """Per-token modality code: 0 text, 1 special, 2 image (vectorised)."""
        ids = np.asarray(ids)
        return (ids >= self.special_offset).astype(np.int8) + (ids >= self.image_offset).astype(np.int8)

    def to_local(self, token_id: int) -> tuple[str, int]:
        if not 0 <= token_id < self.size:
            raise ValueError(f"id {token_id} outside the joint vocabulary of size {self.size}")
        if token_id < self.special_offset:
            return TEXT, token_id
        if token_id < self.image_offset:
            return SPECIAL, token_id - self.special_offset
        return IMAGE, token_id - self.image_offset

    def to_global(self, modality: str, local_id: int) -> int:
        limits = {
            TEXT: (0, self.text_size),
            SPECIAL: (self.special_offset, len(self.specials)),
            IMAGE: (self.image_offset, self.n_image_codes),
        }
        if modality not in limits:
            raise ValueError(f"modality must be one of {sorted(limits)}, got {modality!r}")
        base, n = limits[modality]
        if not 0 <= local_id < n:
            raise ValueError(f"{modality} id {local_id} outside [0, {n})")
        return base + local_id

    def token_name(self, token_id: int) -> str:
        modality, local = self.to_local(token_id)
        if modality == SPECIAL:
            return self.specials[local]
        return f"<img:{local}>" if modality == IMAGE else f"<text:{local}>"


DEFAULT_IMAGE_CODES = 8192  # image codes assumed when a config has no `vqvae` section


def rebuild_advice(tokenizer: str, built_codes: int | None, vqvae_codes: int) -> str:
    """What to do when a tokenizer dataset and the VQ-VAE disagree on the number of image codes:
    the joint vocabulary lives in the tokenizer dataset, so it is the one to rebuild."""
    built = f"was built for {built_codes} image codes" if built_codes else "was built for other image codes"
    return (
        f"the tokenizer dataset {tokenizer} {built} but the VQ-VAE has {vqvae_codes}; rebuild the tokenizer "
        f"dataset with `vqvae: {{codebook_size: {vqvae_codes}}}` in the config (`jamdata run --stage tokenizer "
        f"--force`), then re-run the stages that tokenize with it (text-sample, images, instruct)"
    )


def check_same_vocab(named: dict[str, str | None]) -> str:
    """Refuse to combine datasets whose vocab fingerprints differ; returns the common one.

    `named` maps a dataset name (its path) to its fingerprint. Datasets without tokens (None) are
    ignored."""
    seen = {name: fp for name, fp in named.items() if fp is not None}
    distinct = sorted(set(seen.values()))
    if len(distinct) > 1:
        first = next(iter(seen.items()))
        other = next((n, f) for n, f in seen.items() if f != first[1])
        raise VocabMismatchError(
            f"datasets use different joint vocabularies: {first[0]} has {first[1]} but "
            f"{other[0]} has {other[1]}; re-tokenize one of them with the other's tokenizer"
        )
    return distinct[0] if distinct else ""
