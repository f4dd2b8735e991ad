"""The `images:` config section as one typed class: keys, defaults, bounds and parsing.

`pipelines/image_tokenize.py` runs the stage from it; docs/images.md lists the same keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from jamdata.config import Config, ConfigError
from jamdata.io import DEFAULT_MAX_INPUT_BYTES, InputPolicy

DEFAULT_MAX_CAPTION_CHARS = 4096
DEVICES = ("cpu", "cuda", "auto")
PRECISIONS = ("fp32", "fp16", "bf16")
IMAGES_KEYS = ["inputs", "resolution", "min_size", "max_aspect", "max_pixels", "jpeg_draft",
               "image_first_ratio", "batch_size", "num_shards", "fields", "torch_threads", "channels_last",
               "device", "precision", "check_fraction", "max_code_mismatch", "input_roots", "allow_schemes",
               "max_image_bytes", "max_caption_chars", "verify"]
# keys that existed once; a config that still sets one is told why it went, not just "unknown key"
GONE_KEYS = {
    "encode_groups": "no longer used: images are decoded and encoded in fixed batches of images.batch_size "
                     "by Beam's RunInference before any shuffle, so there are no encode groups; remove it",
}


@dataclass
class ImageSettings:
    inputs: list[str] = field(default_factory=list)
    resolution: int | None = None     # default: the VQ-VAE's resolution
    min_size: int = 64
    max_aspect: float = 3.0
    max_pixels: int = 64 * 1024 * 1024
    jpeg_draft: bool = True
    image_first_ratio: float = 0.5
    batch_size: int = 32              # images per forward pass; the last batch of a bundle is padded to it
    num_shards: int = 1
    fields: dict = field(default_factory=dict)
    torch_threads: int = 1
    channels_last: bool = False
    device: str = "cpu"               # cpu | cuda | auto (cuda when the worker has one)
    precision: str = "fp32"           # fp32 | fp16 | bf16: autocast of the encoder on CUDA only
    check_fraction: float = 0.02      # share of images (by key hash) also encoded in fp32 under fp16/bf16
    max_code_mismatch: float = 0.05   # above this share of checked codes differing, the job fails
    input_roots: list[str] = field(default_factory=list)    # where table rows may name image files
    allow_schemes: list[str] = field(default_factory=list)  # URL schemes rows may fetch (none)
    max_image_bytes: int = DEFAULT_MAX_INPUT_BYTES
    max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS
    verify: str = "sha256"  # how the VQ-VAE is checked against its dataset's manifest: sha256 | size
    seed: int = 0

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError("images.device", f"got {self.device!r}", DEVICES)
        if self.precision not in PRECISIONS:
            raise ConfigError("images.precision", f"got {self.precision!r}", PRECISIONS)

    def input_policy(self) -> InputPolicy:
        """What image files the rows of a jsonl/parquet input may name (its own directory is
        added per file by the reader)."""
        return InputPolicy(tuple(self.input_roots), tuple(s.lower() for s in self.allow_schemes),
                           self.max_image_bytes)

    @classmethod
    def from_config(cls, cfg: Config, seed: int = 0) -> "ImageSettings":
        sec = cfg.section("images")
        for key, why in GONE_KEYS.items():
            if key in sec.data:
                raise ConfigError(f"images.{key}", why, source=sec.source)
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
            num_shards=int(sec.number("num_shards", 1, lo=1)),
            fields=fields_,
            torch_threads=int(sec.number("torch_threads", 1, lo=1)),
            channels_last=sec.get("channels_last", bool, default=False),
            device=sec.choice("device", DEVICES, default="cpu"),
            precision=sec.choice("precision", PRECISIONS, default="fp32"),
            check_fraction=float(sec.number("check_fraction", 0.02, lo=0.0, hi=1.0)),
            max_code_mismatch=float(sec.number("max_code_mismatch", 0.05, lo=0.0, hi=1.0)),
            input_roots=[roots] if isinstance(roots, str) else [str(r) for r in roots],
            allow_schemes=[schemes] if isinstance(schemes, str) else [str(x) for x in schemes],
            max_image_bytes=int(sec.number("max_image_bytes", DEFAULT_MAX_INPUT_BYTES, lo=1)),
            max_caption_chars=int(sec.number("max_caption_chars", DEFAULT_MAX_CAPTION_CHARS, lo=1)),
            verify=sec.choice("verify", ["sha256", "size"], default="sha256"),
            seed=seed,
        )
