"""The `images:` config section as one typed class: keys, defaults, bounds and parsing.

`pipelines/image_tokenize.py` runs the stage from it; docs/config-reference.md is generated from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from jamdata.config import Config, ConfigError
from jamdata.io import DEFAULT_MAX_INPUT_BYTES, InputPolicy
from jamdata.settings import load_settings, setting

DEFAULT_MAX_CAPTION_CHARS = 4096
DEVICES = ("cpu", "cuda", "auto")
PRECISIONS = ("fp32", "fp16", "bf16")
FIELD_KEYS = ("image_field", "caption_field", "key_field")
# keys that existed once; a config that still sets one is told why it went, not just "unknown key"
GONE_KEYS = {
    "encode_groups": "no longer used: images are decoded and encoded in fixed batches of images.batch_size "
    "by Beam's RunInference before any shuffle, so there are no encode groups; remove it",
}


@dataclass
class ImageSettings:
    """The `images` section (docs/images.md): image-caption collections to VQ-tokenized tars."""

    inputs: list[str] = setting(
        [], "image-caption collections: img2dataset tars, jsonl or parquet (globs, URLs)", one_or_many=True
    )
    resolution: int | None = setting(None, "image side in pixels (default: the VQ-VAE's)", lo=1)
    min_size: int = setting(64, "smallest image side accepted", lo=1)
    max_aspect: float = setting(3.0, "most extreme aspect ratio accepted", lo=1.0)
    max_pixels: int = setting(64 * 1024 * 1024, "most pixels a header may declare (checked before decoding)", lo=1)
    jpeg_draft: bool = setting(True, "let JPEG decode at a reduced size when the image is much larger")
    image_first_ratio: float = setting(0.5, "share of samples with the image before the caption", lo=0.0, hi=1.0)
    batch_size: int = setting(32, "images per forward pass; the last batch of a bundle is padded to it", lo=1)
    num_shards: int = setting(1, "output tar shards", lo=1)
    fields: dict = setting({}, "column/extension names of the inputs", keys=FIELD_KEYS)
    torch_threads: int = setting(1, "torch threads per worker", lo=1)
    channels_last: bool = setting(False, "NHWC convolutions")
    device: str = setting("cpu", "where the encoder runs (auto: cuda when the worker has one)", choices=DEVICES)
    precision: str = setting("fp32", "autocast of the encoder, on CUDA only", choices=PRECISIONS)
    check_fraction: float = setting(
        0.02, "share of images (by key hash) also encoded in fp32 under fp16/bf16", lo=0.0, hi=1.0
    )
    max_code_mismatch: float = setting(
        0.05, "above this share of checked codes differing, the job fails", lo=0.0, hi=1.0
    )
    input_roots: list[str] = setting([], "where table rows may name image files", one_or_many=True)
    allow_schemes: list[str] = setting([], "URL schemes rows may fetch (none)", one_or_many=True)
    max_image_bytes: int = setting(DEFAULT_MAX_INPUT_BYTES, "largest image file read", lo=1)
    max_caption_chars: int = setting(DEFAULT_MAX_CAPTION_CHARS, "longest caption accepted", lo=1)
    verify: str = setting(
        "sha256", "how the VQ-VAE is checked against its dataset's manifest", choices=("sha256", "size")
    )
    seed: int = field(default=0, metadata={"internal": True})  # run.seed

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError("images.device", f"got {self.device!r}", DEVICES)
        if self.precision not in PRECISIONS:
            raise ConfigError("images.precision", f"got {self.precision!r}", PRECISIONS)

    def input_policy(self) -> InputPolicy:
        """What image files the rows of a jsonl/parquet input may name (its own directory is
        added per file by the reader)."""
        return InputPolicy(tuple(self.input_roots), tuple(s.lower() for s in self.allow_schemes), self.max_image_bytes)

    @classmethod
    def from_config(cls, cfg: Config, seed: int = 0) -> "ImageSettings":
        sec = cfg.section("images")
        for key, why in GONE_KEYS.items():
            if key in sec.data:
                raise ConfigError(f"images.{key}", why, source=sec.source)
        return dataclasses.replace(load_settings(cls, sec), seed=seed)
