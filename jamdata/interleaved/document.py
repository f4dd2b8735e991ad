"""The interleaved document: the one structure every source converts to.

A document is an ordered list of segments, each text or image, each with a role that templates
use to decide which tokens are training targets. Images are carried as references (a path, a
store entry or inline bytes) and only loaded when the document is tokenized.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

TEXT, IMAGE = "text", "image"
MODALITIES = (TEXT, IMAGE)
INSTRUCTION, RESPONSE, CONTEXT = "instruction", "response", "context"
ROLES = (INSTRUCTION, RESPONSE, CONTEXT)


class RejectedDocument(ValueError):
    """A source record that cannot become a sample; `reason` goes into the rejects dataset."""

    def __init__(self, reason: str, snippet: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.snippet = snippet[:200]


@dataclass(frozen=True)
class ImageRef:
    """Where an image comes from. `ref` is what the layout records (path, URL or 'inline');
    `path` is an fsspec path or `tar://MEMBER::TARFILE`; `data` holds inline bytes."""

    ref: str
    path: str | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class Segment:
    modality: str
    role: str
    text: str | None = None
    image: ImageRef | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"segment modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.role not in ROLES:
            raise ValueError(f"segment role must be one of {ROLES}, got {self.role!r}")
        if (self.modality == TEXT) != (self.text is not None) or (self.modality == IMAGE) != (self.image is not None):
            raise ValueError("a text segment carries text only, an image segment an image only")

    @classmethod
    def text_of(cls, role: str, text: str) -> "Segment":
        return cls(TEXT, role, text=text)

    @classmethod
    def image_of(cls, role: str, image: ImageRef) -> "Segment":
        return cls(IMAGE, role, image=image)


@dataclass
class Document:
    """`dropped` lists parts left out while reading (e.g. an unresolvable image) as
    (part id, reason): they become rejects so nothing vanishes silently."""

    key: str
    source: str
    segments: list[Segment]
    file: str = ""
    offset: int | None = None
    loss: str | None = None  # per-source loss policy override ("response" | "all")
    dropped: list[tuple[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return sum(s.modality == IMAGE for s in self.segments)


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_key(*parts: str) -> str:
    """Webdataset keys may not contain '.' or '/': keep a readable, deterministic form."""
    return "-".join(_UNSAFE.sub("_", str(p)).strip("_") or "x" for p in parts)[:120]
