"""Streaming training images for the VQ-VAE: never the whole collection in memory.

`ImageStream` reads the inputs (tars / jsonl / parquet through `read_source`) record by record,
epoch after epoch. Records are dealt to data-parallel ranks by their index in the epoch
(`index % world_size == rank`), pass a bounded shuffle buffer (seeded by seed, epoch and rank),
and only then are decoded, so the position in the stream is just (epoch, records taken from the
buffer): resuming replays that many raw records through the buffer without decoding any image.
The file order is reshuffled each epoch (seeded). Records whose key hashes into the hold-out
share are never trained on; `holdout_images` collects the first of them for evaluation (a
bounded number, decoded once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from jamdata.image.preprocess import ImageRejected, preprocess_image
from jamdata.image.sources import RawRecord, read_source
from jamdata.io import InputError, stable_hash

HOLDOUT_SALT = "vqvae-holdout"


class NoTrainingImages(InputError):
    """The inputs hold no usable training image (every record rejected, or none at all)."""


@dataclass
class Position:
    """Where a rank's stream stands: `taken` raw records of `epoch` have left the shuffle buffer."""

    epoch: int = 0
    taken: int = 0

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "taken": self.taken}

    @classmethod
    def from_dict(cls, d: dict) -> "Position":
        return cls(int(d["epoch"]), int(d["taken"]))


def held_out(key: str, every: int) -> bool:
    """Every `every`-th key (by a stable hash) is held out of training; 0: none."""
    return every > 0 and stable_hash(HOLDOUT_SALT, key) % every == 0


def shuffled(items: Iterator, buffer: int, rng: np.random.Generator) -> Iterator:
    """Bounded shuffle: keep `buffer` items, emit a random one as each new item arrives."""
    pool: list = []
    for item in items:
        if len(pool) < buffer:
            pool.append(item)
            continue
        i = int(rng.integers(len(pool)))
        pool[i], item = item, pool[i]
        yield item
    while pool:
        yield pool.pop(int(rng.integers(len(pool))))


class ImageStream:
    """Endless stream of preprocessed training images (float32 [3,R,R] in [-1,1]) for one rank."""

    def __init__(
        self,
        files: list[str],
        resolution: int,
        *,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        rank: int = 0,
        world_size: int = 1,
        holdout_every: int = 0,
        min_size: int = 16,
        max_aspect: float = 4.0,
        max_images: int = 0,
        fields: dict | None = None,
    ):
        self.files, self.resolution, self.seed = list(files), resolution, seed
        self.buffer, self.rank, self.world = max(1, shuffle_buffer), rank, world_size
        self.holdout_every, self.min_size, self.max_aspect = holdout_every, min_size, max_aspect
        self.max_images, self.fields = max_images, fields or {}
        self.position = Position()
        self.rejects: list[dict] = []  # unusable records met in the first epoch (this rank)
        self.usable = 0  # usable training images met in the first epoch (this rank)

    def _raw(self, epoch: int) -> Iterator[RawRecord]:
        order = (
            np.random.default_rng([self.seed, epoch, 7]).permutation(len(self.files))
            if epoch
            else range(len(self.files))
        )
        index = 0
        for f in order:
            for rec in read_source(self.files[f], self.fields):
                if held_out(rec.key, self.holdout_every):
                    continue
                if self.max_images and index >= self.max_images:
                    return
                if index % self.world == self.rank:
                    yield rec
                index += 1

    def _decode(self, rec: RawRecord, first_epoch: bool) -> np.ndarray | None:
        try:
            if rec.error:
                raise ImageRejected(*rec.error)
            arr, _ = preprocess_image(rec.image or b"", self.resolution, self.min_size, self.max_aspect)
        except ImageRejected as e:
            if first_epoch:
                self.rejects.append({"key": rec.key, "file": rec.file, "reason": e.reason, "detail": e.detail})
            return None
        if first_epoch:
            self.usable += 1
        return arr

    def __iter__(self) -> Iterator[np.ndarray]:
        """Images from `self.position` on; `self.position` follows what has been yielded."""
        while True:
            pos = self.position
            rng = np.random.default_rng([self.seed, pos.epoch, self.rank, 1])
            got = False
            for n, rec in enumerate(shuffled(self._raw(pos.epoch), self.buffer, rng)):
                if n < pos.taken:
                    continue  # resuming: replay the buffer without decoding
                self.position = Position(pos.epoch, n + 1)
                arr = self._decode(rec, pos.epoch == 0)
                if arr is not None:
                    got = True
                    yield arr
            if not got and pos.taken == 0:
                raise NoTrainingImages(
                    ", ".join(self.files[:3]) + (" ..." if len(self.files) > 3 else ""),
                    f"no usable training images for rank {self.rank} of {self.world} ({len(self.rejects)} rejected)",
                )
            self.position = Position(pos.epoch + 1, 0)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Stacked [B,3,R,R] batches; `self.position` is exact after each batch is yielded."""
        it = iter(self)
        while True:
            yield np.stack([next(it) for _ in range(batch_size)])


def holdout_images(
    files: list[str],
    resolution: int,
    n: int,
    holdout_every: int,
    *,
    min_size: int = 16,
    max_aspect: float = 4.0,
    fields: dict | None = None,
) -> np.ndarray:
    """The first `n` usable held-out images of the inputs (or, without a hold-out share, the first
    `n` usable images, which are then also trained on) -> float32 [n',3,R,R]."""
    out: list[np.ndarray] = []
    for path in files:
        for rec in read_source(path, fields or {}):
            if len(out) >= n:
                break
            if rec.error or (holdout_every and not held_out(rec.key, holdout_every)):
                continue
            try:
                out.append(preprocess_image(rec.image or b"", resolution, min_size, max_aspect)[0])
            except ImageRejected:
                continue
    return np.stack(out) if out else np.zeros((0, 3, resolution, resolution), np.float32)
