"""Minimum length and the per-document quality score."""

from __future__ import annotations

import math
import re

from jamdata.text.filters.base import Verdict
from jamdata.text.filters.words import split_words


# Scripts written without spaces between words: Han, Hiragana, Katakana, Hangul syllables, Thai,
# Lao, Khmer, Myanmar, Tibetan
_UNSPACED = re.compile(
    "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
    "\u0e00-\u0eff\u1780-\u17ff\u1000-\u109f\u0f00-\u0fff\U00020000-\U0002ffff]"
)


def count_words(text: str) -> int:
    """Whitespace-separated words, where each character of a script written without spaces
    (Chinese, Japanese, Korean, Thai...) counts as one word: a Chinese page is one "word" by
    whitespace, and a character is about one word's worth of text in those scripts."""
    n = len(text.split())
    if text.isascii():
        return n
    unspaced = len(_UNSPACED.findall(text))
    if not unspaced:
        return n
    chunks = sum(1 for w in text.split() if _UNSPACED.search(w))
    return n - chunks + unspaced


class MinLengthFilter:
    """Drop documents shorter than `min_words` words (characters of scripts without spaces count
    one each, see count_words) or `min_chars` characters."""

    name = "min_length"

    def __init__(self, min_words: int = 20, min_chars: int = 0):
        self.min_words, self.min_chars = min_words, min_chars

    def __call__(self, text: str) -> Verdict:
        if len(text.strip()) < self.min_chars:
            return Verdict(False, f"{len(text.strip())} characters < min_chars {self.min_chars}", text)
        if self.min_words:
            n = count_words(text)
            if n < self.min_words:
                return Verdict(False, f"{n} words < min_words {self.min_words}", text)
        return Verdict(True, None, text)


STOP_WORDS = frozenset("the be to of and that have with a in is it for on as was by at this from or an are".split())


def quality_score(text: str) -> float:
    """A cheap linear text-quality score in [0, 1]: higher for prose-like text.

    logistic(w . x) over five signals that separate running prose from boilerplate and lists:
    share of stop words among words, share of alphabetic words, share of lines ending in
    terminal punctuation, mean word length's distance from 4.7 (English prose), and log(words).
    Weights were set by hand on web pages (boilerplate/menus ~0.1-0.3, encyclopedic prose ~0.8-0.95);
    it is stored, never used to drop unless `min_score` is configured."""
    words = split_words(text)
    if not words:
        return 0.0
    alpha = [w for w in words if w.isalpha()]
    n = len(words)
    stop = sum(1 for w in alpha if w.lower() in STOP_WORDS) / n
    alpha_share = len(alpha) / n
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    term = sum(1 for ln in lines if ln[-1] in ".!?\"'") / max(1, len(lines))
    mean_len = sum(map(len, alpha)) / max(1, len(alpha))
    z = -4.0 + 9.0 * stop + 2.5 * alpha_share + 2.0 * term - 0.6 * abs(mean_len - 4.7) + 0.35 * math.log1p(len(alpha))
    return round(1.0 / (1.0 + math.exp(-z)), 4)


class QualityScoreFilter:
    """Stores `quality_score`; drops only when `min_score` is set."""

    name = "quality_score"

    def __init__(self, min_score: float | None = None):
        self.min_score = min_score

    def __call__(self, text: str) -> Verdict:
        s = quality_score(text)
        if self.min_score is not None and s < self.min_score:
            return Verdict(False, f"{s:.3f} < min_score {self.min_score}", text, {"quality_score": s})
        return Verdict(True, None, text, {"quality_score": s})
