"""Sampling from a trained JAM model: text continuation and text -> image with classifier-free guidance.

    model, info = load_exported(export_dir)
    out = generate_text(model, vocab, prompt_ids, Sampling(seed=1), image_codes=256)
    codes = generate_image(model, vocab, caption_ids, Sampling(seed=1, guidance=3.0), image_codes=256)

Token layout (jamdata/image/samples.py): an image is `<boi>` + exactly `grid_h * grid_w` image
codes (row-major) + `<eoi>`; a caption-first sample is `caption <break> <boi> codes <eoi> </s>`.

- Every `<boi>` the model samples opens an image block: the next `image_codes` tokens are drawn
  from the image codes only, then `<eoi>` is written, so every block is well-formed and decodes
  with the run's VQ-VAE. Outside a block image codes, `<eoi>` and `<pad>` cannot be drawn. A block
  that is open when `max_new_tokens` runs out is finished anyway, and a prompt that ends inside a
  block (`... <boi> code code`) is continued to a whole image.
- Text -> image follows CM3leon's classifier-free guidance: a conditional stream (`caption <break>
  <boi>`) and an unconditional one (the caption replaced by one `<mask:0>` token) are decoded
  together in one batch and share every sampled code; the logits are
  uncond + guidance * (cond - uncond) (guidance 1 = no guidance), then temperature, top-k, top-p.
- Seeded: one `torch.Generator` per call, so the same seed, model and prompt give the same tokens.
- No KV cache: each step runs the model on the whole prefix (the backbone and the cross blocks
  take whole sequences). At the demo's sizes (a 16x16 grid) a picture takes seconds on a CPU; a
  cache would thread past keys/values through `Backbone.layer` and `CrossBlock` and is the first
  thing to add for 1024-code images on a 7B model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from jamdata.errors import UserError
from jamdata.vocab import JointVocab


class GenerateError(UserError, ValueError):
    """A generation request that cannot be served (bad settings, prompt, or model files)."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off (nucleus sampling)
    seed: int = 0
    guidance: float = 3.0  # classifier-free guidance scale for images (1: none)
    max_new_tokens: int = 64  # text mode; an open image block is always finished

    def __post_init__(self) -> None:
        checks = [
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_k", self.top_k >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("guidance", self.guidance >= 0, ">= 0"),
            ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise GenerateError(f"--{name.replace('_', '-')} must be {want}, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """[..., V] logits with everything outside the top-k and the top-p nucleus set to -inf (the
    most likely token always stays)."""
    out = logits.float().clone()
    if top_k and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ranked above each one
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def pick(logits: torch.Tensor, s: Sampling, generator: torch.Generator) -> int:
    """One token id from [V] logits (already restricted with -inf)."""
    if s.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(filter_logits(logits / s.temperature, s.top_k, s.top_p), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def last_logits(model: torch.nn.Module, rows: list[list[int]], pad_id: int) -> torch.Tensor:
    """Logits [N, V] at the last position of each row. Rows of different lengths are left-padded;
    the padding is its own document (segment -1), so positions and attention of each row are
    exactly those of the row alone."""
    width = max(len(r) for r in rows)
    device = next(model.parameters()).device
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    seg = torch.full((len(rows), width), -1, dtype=torch.int32)
    for i, r in enumerate(rows):
        tokens[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        seg[i, width - len(r) :] = 0
    logits = model(tokens.to(device), segment_ids=seg.to(device))
    return logits[:, -1].float().cpu()


def _image_range(vocab: JointVocab) -> slice:
    return slice(vocab.image_offset, vocab.image_offset + vocab.n_image_codes)


def _outside_image_mask(vocab: JointVocab) -> torch.Tensor:
    """True where a token may not be drawn outside an image block."""
    bad = torch.zeros(vocab.size, dtype=torch.bool)
    bad[_image_range(vocab)] = True
    bad[[vocab.eoi_id, vocab.pad_id]] = True
    return bad


def _check(model: torch.nn.Module, vocab: JointVocab, prompt: list[int]) -> None:
    if not prompt:
        raise GenerateError("the prompt is empty (no tokens to condition on)")
    bad = [t for t in prompt if not 0 <= t < vocab.size]
    if bad:
        raise GenerateError(f"prompt token {bad[0]} outside the vocabulary of {vocab.size}")
    limit = _max_len(model)
    if limit is not None and len(prompt) >= limit:
        raise GenerateError(f"the prompt has {len(prompt)} tokens; the model reads at most {limit}")


def _max_len(model: torch.nn.Module) -> int | None:
    cfg = getattr(model, "cfg", None)
    cfg = getattr(cfg, "backbone", cfg)
    return getattr(cfg, "max_seq_len", None)


def generate_text(
    model: torch.nn.Module, vocab: JointVocab, prompt: list[int], s: Sampling, image_codes: int
) -> list[int]:
    """New tokens after `prompt` until `</s>` or `max_new_tokens`; image blocks (opened by a
    sampled `<boi>`) hold exactly `image_codes` codes and end with `<eoi>` (`image_codes=0`: no
    image can be opened)."""
    _check(model, vocab, prompt)
    gen = torch.Generator().manual_seed(s.seed)
    outside = _outside_image_mask(vocab)
    if image_codes == 0:
        outside[vocab.boi_id] = True
    codes = _image_range(vocab)
    limit = _max_len(model)
    out: list[int] = []
    remaining = _open_block(prompt, vocab, image_codes)  # codes still to draw in the open image block
    while remaining is not None or len(out) < s.max_new_tokens:
        if remaining == 0:
            out.append(vocab.eoi_id)
            remaining = None
            continue
        if limit is not None and len(prompt) + len(out) >= limit:
            if remaining is not None:
                raise GenerateError(
                    f"an image block does not fit in the model's {limit} positions; "
                    "shorten the prompt or --max-new-tokens"
                )
            break
        logits = last_logits(model, [prompt + out], vocab.pad_id)[0]
        if remaining is not None:
            masked = torch.full_like(logits, float("-inf"))
            masked[codes] = logits[codes]
            logits = masked
        else:
            logits = logits.masked_fill(outside, float("-inf"))
        t = pick(logits, s, gen)
        out.append(t)
        if remaining is not None:
            remaining -= 1
        elif t == vocab.boi_id:
            remaining = image_codes
        elif t == vocab.eos_id:
            break
    return out


def _open_block(prompt: list[int], vocab: JointVocab, image_codes: int) -> int | None:
    """Codes still missing when the prompt ends inside an image block (it is continued), else None."""
    boi = max((i for i, t in enumerate(prompt) if t == vocab.boi_id), default=-1)
    if boi < 0 or vocab.eoi_id in prompt[boi:]:
        return None
    if image_codes == 0:
        raise GenerateError("the prompt ends inside an image block, but there is no VQ-VAE to decode it")
    have = len(prompt) - boi - 1
    if have > image_codes:
        raise GenerateError(f"the prompt's open image block has {have} codes; an image has {image_codes}")
    return image_codes - have


def unconditional_prompt(vocab: JointVocab) -> list[int]:
    """The unconditional stream's prefix: the caption replaced by one mask token."""
    return [vocab.mask_id(0), vocab.break_id, vocab.boi_id]


def generate_image(
    model: torch.nn.Module, vocab: JointVocab, caption: list[int], s: Sampling, image_codes: int
) -> list[int]:
    """`image_codes` image codes (0-based, row-major) for `caption`, with classifier-free guidance."""
    cond = list(caption) + [vocab.break_id, vocab.boi_id]
    _check(model, vocab, cond)
    limit = _max_len(model)
    if limit is not None and len(cond) + image_codes > limit:
        raise GenerateError(
            f"caption ({len(caption)} tokens) + {image_codes} image codes exceed the model's {limit} positions"
        )
    uncond = unconditional_prompt(vocab)
    gen = torch.Generator().manual_seed(s.seed)
    codes = _image_range(vocab)
    drawn: list[int] = []
    for _ in range(image_codes):
        ids = [c + vocab.image_offset for c in drawn]
        if s.guidance == 1.0:
            logits = last_logits(model, [cond + ids], vocab.pad_id)[0, codes]
        else:
            both = last_logits(model, [cond + ids, uncond + ids], vocab.pad_id)[:, codes]
            logits = both[1] + s.guidance * (both[0] - both[1])
        drawn.append(pick(logits, s, gen))
    return drawn


def image_blocks(tokens: list[int], vocab: JointVocab) -> list[list[int]]:
    """The codes of every `<boi> ... <eoi>` block, checking that each is well-formed."""
    blocks, open_at = [], None
    for i, t in enumerate(tokens):
        if t == vocab.boi_id:
            if open_at is not None:
                raise GenerateError(f"<boi> at {i} inside the image block opened at {open_at}")
            open_at = i
        elif t == vocab.eoi_id:
            if open_at is None:
                raise GenerateError(f"<eoi> at {i} without <boi>")
            block = tokens[open_at + 1 : i]
            if any(not vocab.image_offset <= c < vocab.size for c in block):
                raise GenerateError(f"a non-image token inside the image block opened at {open_at}")
            blocks.append([c - vocab.image_offset for c in block])
            open_at = None
    if open_at is not None:
        raise GenerateError(f"the image block opened at {open_at} is never closed")
    return blocks
