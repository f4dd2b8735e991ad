"""Templates: how a document's segments become one joint-vocabulary sequence with a loss mask.

Sequence layout (`<s>` and `</s>` configurable):

    <s> seg_0 [<break>] seg_1 ... seg_k </s>

A text segment is its SentencePiece ids; an image segment is `<boi>` + h*w codes (row-major, at the
joint vocabulary's image offset) + `<eoi>`. `<break>` sits between two segments whenever either of
them is an image, and belongs to the segment after it. Adjacent text segments are simply
concatenated (each is encoded on its own, so a segment never starts inside a word).

Loss mask (1 = the token is a training target): with `loss: response` the tokens of response
segments (with their `<break>`/`<boi>`/`<eoi>`) and the final `</s>`; with `loss: all` every token
except the leading `<s>` (CM3leon-style fine-tuning without prompt masking).

Truncation to `max_len` never cuts an image: segments are dropped whole from the end; the last
text segment that does not fit may be cut at a token boundary (`cut_text`). What was dropped is
recorded in the layout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from jamdata.config import Config, ConfigError
from jamdata.interleaved.document import IMAGE, INSTRUCTION, RESPONSE, TEXT, Document, RejectedDocument, Segment
from jamdata.settings import load_settings, setting
from jamdata.vocab import JointVocab

LOSS_POLICIES = ("response", "all")


@dataclass(frozen=True)
class Template:
    """`instruct.template` (docs/instruct.md): how a document becomes one token sequence."""

    instruction_format: str = setting("How to {title}", "how-to instruction; fields: {title}, {intro}")
    intro_role: str = setting("response", "role of a how-to's intro", choices=("response", "context", "drop"))
    step_format: str = setting("Step {n}: {text}", "how-to step text; fields: {n}, {text}")
    instruction_prefix: str = setting("", "text put before each run of instruction segments")
    response_prefix: str = setting("", "text put before each run of response segments")
    loss: str = setting("response", "which tokens carry loss", choices=LOSS_POLICIES)
    max_len: int = setting(4096, "most tokens per sample", lo=8)
    cut_text: bool = setting(True, "cut the last text segment to fit max_len (else drop it)")
    bos: bool = setting(True, "start with <s>")
    eos: bool = setting(True, "end with </s>")

    def __post_init__(self) -> None:
        for key, fmt, names in (
            ("instruction_format", self.instruction_format, {"title": "", "intro": ""}),
            ("step_format", self.step_format, {"n": 1, "text": ""}),
        ):
            try:
                fmt.format(**names)
            except (KeyError, IndexError, ValueError) as e:
                raise ConfigError(
                    f"instruct.template.{key}", f"bad format {fmt!r} ({e}); fields: {', '.join(names)}"
                ) from None

    @classmethod
    def from_config(cls, cfg: Config) -> "Template":
        return load_settings(cls, cfg)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Encoded:
    tokens: np.ndarray  # int32
    loss_mask: np.ndarray  # uint8, same length
    segments: list[dict]  # layout: modality, role, text, image_ref, start, length (+ h, w)
    dropped: list[dict] = field(default_factory=list)
    truncated_tokens: int = 0

    def layout(self) -> dict:
        return {
            "segments": self.segments,
            "dropped_segments": self.dropped,
            "truncated_tokens": self.truncated_tokens,
            "n_tokens": int(len(self.tokens)),
            "n_targets": int(self.loss_mask.sum()),
        }


def _with_prefixes(doc: Document, template: Template) -> list[Segment]:
    """Insert the configured role prefixes as text segments before each run of a role."""
    prefixes = {INSTRUCTION: template.instruction_prefix, RESPONSE: template.response_prefix}
    out, prev = [], None
    for seg in doc.segments:
        p = prefixes.get(seg.role, "")
        if p and seg.role != prev:
            out.append(Segment.text_of(seg.role, p))
        out.append(seg)
        prev = seg.role
    return out


def encode_document(
    doc: Document,
    template: Template,
    vocab: JointVocab,
    encode_text: Callable[[str], list[int]],
    image_codes: Mapping[int, np.ndarray],
    budget: int | None = None,
) -> Encoded:
    """Tokenize `doc`. `image_codes[i]` is the [h, w] code grid of segment i (original indices,
    before prefixes). `budget` (default `template.max_len`) is the hard length limit."""
    budget = template.max_len if budget is None else budget
    loss_all = (doc.loss or template.loss) == "all"
    segs = _with_prefixes(doc, template)
    orig_index: list[int | None] = []  # None: an inserted prefix (always text)
    j = 0
    for s in segs:  # map back to original segment indices for image_codes
        if j < len(doc.segments) and s is doc.segments[j]:
            orig_index.append(j)
            j += 1
        else:
            orig_index.append(None)

    parts: list[tuple[np.ndarray, int, dict]] = []
    for i, seg in enumerate(segs):
        brk = i > 0 and (seg.modality == IMAGE or segs[i - 1].modality == IMAGE)
        head = [vocab.break_id] if brk else []
        info: dict[str, Any] = {
            "modality": seg.modality,
            "role": seg.role,
            "text": seg.text,
            "image_ref": seg.image.ref if seg.image else None,
        }
        if seg.modality == TEXT:
            assert seg.text is not None  # Segment: a text segment carries text
            ids = np.asarray(head + list(encode_text(seg.text)), dtype=np.int64)
        else:
            oi = orig_index[i]
            assert oi is not None  # prefixes are text: every image segment is one of the document's
            codes = np.asarray(image_codes[oi])
            if codes.ndim != 2:
                raise ValueError(f"image codes must be a [h, w] grid, got shape {codes.shape}")
            info["h"], info["w"] = int(codes.shape[0]), int(codes.shape[1])
            ids = np.concatenate(
                [
                    np.asarray(head + [vocab.boi_id], np.int64),
                    vocab.image_ids(codes.ravel()),
                    np.asarray([vocab.eoi_id], np.int64),
                ]
            )
        target = 1 if (loss_all or seg.role == RESPONSE) else 0
        info["break"] = bool(brk)
        parts.append((ids, target, info))

    fixed = int(template.bos) + int(template.eos)
    total = fixed + sum(len(p[0]) for p in parts)
    dropped: list[dict] = []
    truncated = 0
    if total > budget:
        room = budget - fixed
        kept: list = []
        used = 0
        for k, (ids, target, info) in enumerate(parts):
            if used + len(ids) <= room:
                kept.append((ids, target, info))
                used += len(ids)
                continue
            rest = parts[k:]
            if template.cut_text and info["modality"] == TEXT and room - used > int(info["break"]):
                cut = room - used
                truncated = len(ids) - cut
                kept.append((ids[:cut], target, dict(info, truncated=True)))
                rest = parts[k + 1 :]
                dropped.append(
                    {
                        "modality": TEXT,
                        "role": info["role"],
                        "image_ref": None,
                        "tokens": int(truncated),
                        "partial": True,
                    }
                )
            for ids2, _, info2 in rest:
                dropped.append(
                    {
                        "modality": info2["modality"],
                        "role": info2["role"],
                        "image_ref": info2["image_ref"],
                        "tokens": int(len(ids2)),
                    }
                )
            break
        parts = kept
        if not parts:
            raise RejectedDocument(f"longer than max_len {budget} tokens ({total}) even with only its first segment")
        if not any(t for _, t, _ in parts):
            raise RejectedDocument(
                f"longer than max_len {budget} tokens ({total}): nothing to train on "
                "remains after dropping segments from the end"
            )

    tokens: list[np.ndarray] = []
    mask: list[np.ndarray] = []
    layout: list[dict] = []
    pos = 0
    if template.bos:
        tokens.append(np.asarray([vocab.bos_id], np.int64))
        mask.append(np.zeros(1, np.uint8))
        pos = 1
    for ids, target, info in parts:
        tokens.append(ids)
        mask.append(np.full(len(ids), target, np.uint8))
        layout.append(dict(info, start=pos, length=int(len(ids))))
        pos += len(ids)
    if template.eos:
        tokens.append(np.asarray([vocab.eos_id], np.int64))
        mask.append(np.asarray([1 if (loss_all or any(t for _, t, _ in parts)) else 0], np.uint8))
    out_tokens = np.concatenate(tokens).astype(np.int32)
    out_mask = np.concatenate(mask)
    assert len(out_tokens) <= budget
    return Encoded(out_tokens, out_mask, layout, dropped, truncated)
