"""The CM3 causal-masked objective as a pure, invertible transform on token sequences.

    x = <s> a b c <break> <boi> i1 i2 i3 <eoi> d e </s>
    -> <s> a <mask:0> <break> <boi> i1 <mask:1> <eoi> d e <mask:0> b c <mask:1> i2 i3 </s>

n ~ clamp(Poisson(lam), 1, max_spans) spans are drawn inside *regions*: maximal runs of content
tokens of one modality (text pieces, or the codes of one image). Special tokens (`<s>`, `</s>`,
`<break>`, `<boi>`, `<eoi>`) are never masked, so no span crosses a modality or image boundary.
Spans are numbered in document order; each is replaced by its `<mask:i>` placeholder and appended
(after the same `<mask:i>` as sentinel) at the end, before a trailing `</s>` if there is one.
Output length = input length + 2n. The loss mask is zero at placeholders; moved tokens keep their
own loss value and each sentinel takes the value of its span's first token.

Randomness: a numpy Generator seeded with `stable_hash(key, seed=seed)`, so a sample is masked the
same way on every machine, run and worker count. Span length ~ Uniform[1, min(max_span_len, free
run)], placed uniformly over the free positions of the regions; when the regions have fewer free
positions than spans, fewer spans are drawn (`n_spans` in the result says how many).

`CM3Config(whole_images=True)` (what the loader uses at batch time) masks an image only whole: each
draw first picks uniformly one of the regions that still have room (a text region, or an image not
yet masked); an image is then masked entirely (all its codes, whatever `max_span_len`; its `<boi>`
and `<eoi>` stay in place), a text region as above. `cm3_transform(..., rng=g)` draws from the
given Generator instead of the key's own (the loader redraws each epoch that way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

import numpy as np

from jamdata.io import stable_hash
from jamdata.vocab import JointVocab

MAX_SPANS = 16


@dataclass(frozen=True)
class CM3Config:
    lam: float = 1.0
    max_spans: int = MAX_SPANS
    max_span_len: int = 64
    seed: int = 0
    whole_images: bool = False  # an image's codes are masked all together or not at all

    def __post_init__(self) -> None:
        if not 1 <= self.max_spans <= MAX_SPANS:
            raise ValueError(f"cm3 max_spans must be in [1, {MAX_SPANS}] (there are {MAX_SPANS} <mask:i> tokens)")
        if self.lam <= 0 or self.max_span_len < 1:
            raise ValueError("cm3 lambda must be > 0 and max_span_len >= 1")


@dataclass
class CM3Result:
    tokens: np.ndarray  # int32
    loss_mask: np.ndarray | None  # uint8 or None when none was given
    spans: list[tuple[int, int]]  # (start, length) in the input sequence, document order

    @property
    def n_spans(self) -> int:
        return len(self.spans)


def draw_span_count(rng: np.random.Generator, lam: float, max_spans: int) -> int:
    """The documented distribution: clamp(Poisson(lam), 1, max_spans)."""
    return int(min(max(rng.poisson(lam), 1), max_spans))


def regions(tokens: np.ndarray, vocab: JointVocab) -> list[tuple[int, int]]:
    """(start, end) of maximal runs of maskable tokens of one modality (text or image codes)."""
    mod = vocab.modality(np.asarray(tokens)).astype(np.int8)  # 0 text, 1 special, 2 image
    if len(mod) == 0:
        return []
    change = np.flatnonzero(np.diff(mod)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(mod)]])
    keep = mod[starts] != 1
    return [(int(a), int(b)) for a, b in zip(starts[keep], ends[keep])]


def _mask_ids(vocab: JointVocab) -> np.ndarray:
    return np.asarray([vocab.mask_id(i) for i in range(MAX_SPANS)])


def choose_spans(
    tokens: np.ndarray, vocab: JointVocab, rng: np.random.Generator, cfg: CM3Config
) -> list[tuple[int, int]]:
    n = draw_span_count(rng, cfg.lam, cfg.max_spans)
    free = np.zeros(len(tokens), dtype=bool)
    for a, b in regions(tokens, vocab):
        free[a:b] = True
    spans: list[tuple[int, int]] = []
    for _ in range(n):
        candidates = np.flatnonzero(free)
        if len(candidates) == 0:
            break
        start = int(candidates[rng.integers(len(candidates))])
        run = 1
        while start + run < len(free) and free[start + run] and run < cfg.max_span_len:
            run += 1
        length = int(rng.integers(1, run + 1))
        spans.append((start, length))
        free[start : start + length] = False
        # keep spans apart: a position right after a span may not start another directly
        # adjacent one in the same region (two placeholders side by side would still invert, but
        # an adjacent span is indistinguishable from a longer one for the objective)
        if start + length < len(free):
            free[start + length] = False
        if start > 0:
            free[start - 1] = False
    return sorted(spans)


def choose_spans_whole_images(
    tokens: np.ndarray, vocab: JointVocab, rng: np.random.Generator, cfg: CM3Config
) -> list[tuple[int, int]]:
    """Spans where an image is one indivisible unit: a region is drawn first (uniformly among
    those with room), then a text span inside it as in `choose_spans`, or the whole image."""
    n = draw_span_count(rng, cfg.lam, cfg.max_spans)
    regs = regions(tokens, vocab)
    is_image = [int(tokens[a]) >= vocab.image_offset for a, _ in regs]
    free = np.zeros(len(tokens), dtype=bool)
    for a, b in regs:
        free[a:b] = True
    spans: list[tuple[int, int]] = []
    for _ in range(n):
        open_ = [i for i, (a, b) in enumerate(regs) if (free[a] if is_image[i] else free[a:b].any())]
        if not open_:
            break
        i = open_[int(rng.integers(len(open_)))]
        a, b = regs[i]
        if is_image[i]:
            start, length = a, b - a
        else:
            candidates = np.flatnonzero(free[a:b]) + a
            start = int(candidates[rng.integers(len(candidates))])
            run = 1
            while start + run < b and free[start + run] and run < cfg.max_span_len:
                run += 1
            length = int(rng.integers(1, run + 1))
        spans.append((start, length))
        free[start : start + length] = False
        if start + length < len(free):  # keep spans apart, as in choose_spans
            free[start + length] = False
        if start > 0:
            free[start - 1] = False
    return sorted(spans)


def cm3_transform(
    tokens: np.ndarray,
    vocab: JointVocab,
    key: str,
    cfg: CM3Config = CM3Config(),
    loss_mask: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> CM3Result:
    tokens = np.asarray(tokens)
    masks = _mask_ids(vocab)
    if np.isin(tokens, masks).any():
        raise ValueError(f"sample {key!r} already contains <mask:i> tokens (masked twice?)")
    if rng is None:
        rng = np.random.default_rng(stable_hash(key, seed=cfg.seed))
    spans = (choose_spans_whole_images if cfg.whole_images else choose_spans)(tokens, vocab, rng, cfg)
    has_eos = len(tokens) > 0 and tokens[-1] == vocab.eos_id
    body_end = len(tokens) - 1 if has_eos else len(tokens)
    lm = np.ones(len(tokens), np.uint8) if loss_mask is None else np.asarray(loss_mask, np.uint8)
    if len(lm) != len(tokens):
        raise ValueError("loss_mask and tokens differ in length")
    out_t: list[np.ndarray] = []
    out_m: list[np.ndarray] = []
    tail_t: list[np.ndarray] = []
    tail_m: list[np.ndarray] = []
    pos = 0
    for i, (s, n) in enumerate(spans):
        out_t += [tokens[pos:s], masks[i : i + 1]]
        out_m += [lm[pos:s], np.zeros(1, np.uint8)]
        tail_t += [masks[i : i + 1], tokens[s : s + n]]
        tail_m += [lm[s : s + 1], lm[s : s + n]]
        pos = s + n
    out_t += [tokens[pos:body_end]] + tail_t + [tokens[body_end:]]
    out_m += [lm[pos:body_end]] + tail_m + [lm[body_end:]]
    new_t = np.concatenate([np.asarray(a, np.int64) for a in out_t]).astype(np.int32)
    new_m = np.concatenate([np.asarray(a, np.uint8) for a in out_m])
    return CM3Result(new_t, new_m if loss_mask is not None else None, spans)


@overload
def cm3_inverse(tokens: np.ndarray, vocab: JointVocab, loss_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def cm3_inverse(
    tokens: np.ndarray, vocab: JointVocab, loss_mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]: ...
def cm3_inverse(
    tokens: np.ndarray, vocab: JointVocab, loss_mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Undo `cm3_transform` exactly (tokens and, when given, the loss mask). Also decodes a
    generated sequence, as long as every placeholder has its sentinel."""
    tokens = np.asarray(tokens)
    lm = None if loss_mask is None else np.asarray(loss_mask, np.uint8)
    masks = _mask_ids(vocab)
    where = np.flatnonzero(np.isin(tokens, masks))
    if len(where) == 0:
        return tokens.astype(np.int32), lm
    if len(where) % 2:
        raise ValueError(f"odd number of <mask:i> tokens ({len(where)}): not a CM3 sequence")
    n = len(where) // 2
    place, sent = where[:n], where[n:]
    idx = [int(np.flatnonzero(masks == tokens[p])[0]) for p in place]
    if idx != list(range(n)) or [int(np.flatnonzero(masks == tokens[p])[0]) for p in sent] != idx:
        raise ValueError("placeholders and sentinels must be <mask:0..n-1> in order, once each")
    has_eos = tokens[-1] == vocab.eos_id and len(tokens) - 1 > sent[-1]
    tail_end = len(tokens) - 1 if has_eos else len(tokens)
    bounds = list(sent) + [tail_end]
    out_t: list[np.ndarray] = []
    out_m: list[np.ndarray] = []
    pos = 0
    for i, p in enumerate(place):
        span = slice(bounds[i] + 1, bounds[i + 1])
        out_t += [tokens[pos:p], tokens[span]]
        if lm is not None:
            out_m += [lm[pos:p], lm[span]]
        pos = p + 1
    out_t += [tokens[pos : sent[0]], tokens[tail_end:]]
    if lm is not None:
        out_m += [lm[pos : sent[0]], lm[tail_end:]]
    orig = np.concatenate(out_t).astype(np.int32)
    return orig, (np.concatenate(out_m).astype(np.uint8) if lm is not None else None)
