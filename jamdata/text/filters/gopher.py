"""Gopher quality and repetition heuristics (Rae et al. 2021, Table A1 and section A.1.1).

The thresholds are the published ones; they are computed on word tokens as datatrove computes
them, so decisions match its GopherQualityFilter / GopherRepetitionFilter. The n-gram statistics
are computed on integer word ids with numpy instead of joined strings.
"""

from __future__ import annotations

import re

import numpy as np

from jamdata.text.filters.base import Verdict
from jamdata.text.filters.words import SENTENCE_PUNCT, split_words

SYMBOLS = (
    frozenset(
        "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
        + "".join(map(chr, [*range(0, 9), *range(11, 32), *range(127, 160)]))
    )
    | SENTENCE_PUNCT
)
STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


class GopherQualityFilter:
    name = "gopher_quality"

    def __init__(
        self,
        min_doc_words: int | None = 50,
        max_doc_words: int | None = 100_000,
        min_avg_word_length: float | None = 3,
        max_avg_word_length: float | None = 10,
        max_symbol_word_ratio: float | None = 0.1,
        max_bullet_lines_ratio: float | None = 0.9,
        max_ellipsis_lines_ratio: float | None = 0.3,
        min_alpha_words_ratio: float | None = 0.8,
        min_stop_words: int | None = 2,
        stop_words: list[str] | None = None,
    ):
        self.min_doc_words, self.max_doc_words = min_doc_words, max_doc_words
        self.min_avg, self.max_avg = min_avg_word_length, max_avg_word_length
        self.max_symbol, self.max_bullet, self.max_ellipsis = (
            max_symbol_word_ratio,
            max_bullet_lines_ratio,
            max_ellipsis_lines_ratio,
        )
        self.min_alpha, self.min_stop = min_alpha_words_ratio, min_stop_words
        self.stop_words = frozenset(STOP_WORDS if stop_words is None else stop_words)

    def __call__(self, text: str) -> Verdict:
        words = split_words(text)
        n = len(words)
        lens = [len(w) for w in words if not SYMBOLS.issuperset(w)]
        nw = len(lens)
        if self.min_doc_words and nw < self.min_doc_words:
            return Verdict(False, f"{nw} words < {self.min_doc_words}", text)
        if self.max_doc_words and nw > self.max_doc_words:
            return Verdict(False, f"{nw} words > {self.max_doc_words}", text)
        if not n:
            return Verdict(False, "no words", text)
        avg = sum(lens) / nw if nw else 0.0
        if self.min_avg and avg < self.min_avg:
            return Verdict(False, f"mean word length {avg:.2f} < {self.min_avg}", text)
        if self.max_avg and avg > self.max_avg:
            return Verdict(False, f"mean word length {avg:.2f} > {self.max_avg}", text)
        if self.max_symbol:
            r = text.count("#") / n
            if r > self.max_symbol:
                return Verdict(False, f"hash-to-word ratio {r:.3f} > {self.max_symbol}", text)
            r = (text.count("...") + text.count("…")) / n
            if r > self.max_symbol:
                return Verdict(False, f"ellipsis-to-word ratio {r:.3f} > {self.max_symbol}", text)
        lines = text.splitlines() or [""]
        if self.max_bullet:
            r = sum(1 for s in lines if s.lstrip().startswith(("•", "-"))) / len(lines)
            if r > self.max_bullet:
                return Verdict(False, f"bullet lines {r:.2f} > {self.max_bullet}", text)
        if self.max_ellipsis:
            r = sum(1 for s in lines if s.rstrip().endswith(("...", "…"))) / len(lines)
            if r > self.max_ellipsis:
                return Verdict(False, f"lines ending in an ellipsis {r:.2f} > {self.max_ellipsis}", text)
        if self.min_alpha:
            r = sum(1 for w in words if w.isalpha() or any(c.isalpha() for c in w)) / n
            if r < self.min_alpha:
                return Verdict(False, f"words with a letter {r:.3f} < {self.min_alpha}", text)
        if self.min_stop:
            k = len(self.stop_words.intersection(words))
            if k < self.min_stop:
                return Verdict(False, f"{k} distinct stop word(s) < {self.min_stop}", text)
        return Verdict(True, None, text)


_PARA = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
_M1 = np.uint64(0x9E3779B97F4A7C15)


def _dup_count_chars(parts: list[str]) -> tuple[int, int]:
    seen: set[str] = set()
    dup = chars = 0
    for p in parts:
        if p in seen:
            dup += 1
            chars += len(p)
        else:
            seen.add(p)
    return dup, chars


def _ngram_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """One 64-bit value per n-gram of word ids (exact for distinct n-grams up to hash collisions)."""
    m = len(ids) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = (h ^ ids[k : k + m]) * _M1
            h ^= h >> np.uint64(29)
    return h


def top_ngram_chars(h: np.ndarray, glen: np.ndarray) -> int:
    """len(most common n-gram joined by spaces) * its count; ties go to the first seen."""
    uniq, first, inv, counts = np.unique(h, return_index=True, return_inverse=True, return_counts=True)
    best = counts.max()
    i = first[counts == best].min()
    return int(glen[i]) * int(best)


def dup_ngram_chars(h: np.ndarray, glen: np.ndarray, n: int) -> int:
    """Characters in repeated n-grams, scanning left to right and jumping over a repeat
    (datatrove's find_all_duplicate), visiting only positions whose n-gram occurs twice or more."""
    uniq, inv, counts = np.unique(h, return_inverse=True, return_counts=True)
    multi = np.nonzero(counts[inv] > 1)[0]
    if not len(multi):
        return 0
    seen: set[int] = set()
    idx = total = 0
    hv, gl = h[multi].tolist(), glen[multi].tolist()
    for pos, g, L in zip(multi.tolist(), hv, gl):
        if pos < idx:
            continue
        if g in seen:
            total += L
            idx = pos + n
        else:
            seen.add(g)
            idx = pos + 1
    return total


class GopherRepetitionFilter:
    name = "gopher_repetition"

    def __init__(
        self,
        dup_line_frac: float | None = 0.3,
        dup_para_frac: float | None = 0.3,
        dup_line_char_frac: float | None = 0.2,
        dup_para_char_frac: float | None = 0.2,
        top_n_grams: dict | list | None = None,
        dup_n_grams: dict | list | None = None,
    ):
        self.dup_line_frac, self.dup_para_frac = dup_line_frac, dup_para_frac
        self.dup_line_char_frac, self.dup_para_char_frac = dup_line_char_frac, dup_para_char_frac
        top = top_n_grams if top_n_grams is not None else {2: 0.2, 3: 0.18, 4: 0.16}
        dup = dup_n_grams if dup_n_grams is not None else {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
        self.top = sorted((int(k), float(v)) for k, v in (top.items() if isinstance(top, dict) else top))
        self.dup = sorted((int(k), float(v)) for k, v in (dup.items() if isinstance(dup, dict) else dup))

    def __call__(self, text: str) -> Verdict:
        if not text:
            return Verdict(False, "empty", text)
        L = len(text)
        paras = _PARA.split(text.strip())
        d, c = _dup_count_chars(paras)
        if self.dup_para_frac and d / len(paras) > self.dup_para_frac:
            return Verdict(False, f"duplicate paragraphs {d / len(paras):.2f} > {self.dup_para_frac}", text)
        if self.dup_para_char_frac and c / L > self.dup_para_char_frac:
            return Verdict(False, f"characters in duplicate paragraphs {c / L:.2f} > {self.dup_para_char_frac}", text)
        lines = _LINES.split(text)
        d, c = _dup_count_chars(lines)
        if self.dup_line_frac and d / len(lines) > self.dup_line_frac:
            return Verdict(False, f"duplicate lines {d / len(lines):.2f} > {self.dup_line_frac}", text)
        if self.dup_line_char_frac and c / L > self.dup_line_char_frac:
            return Verdict(False, f"characters in duplicate lines {c / L:.2f} > {self.dup_line_char_frac}", text)
        words = split_words(text)
        if not words:
            return Verdict(True, None, text)
        vocab: dict[str, int] = {}
        ids = np.fromiter((vocab.setdefault(w, len(vocab) + 1) for w in words), dtype=np.uint64, count=len(words))
        wl = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        cum = np.concatenate(([0], np.cumsum(wl)))
        for n, frac in self.top:
            if len(words) < n:
                continue
            h = _ngram_ids(ids, n)
            glen = cum[n:] - cum[:-n] + (n - 1)
            r = top_ngram_chars(h, glen) / L
            if r > frac:
                return Verdict(False, f"top {n}-gram covers {r:.3f} of characters > {frac}", text)
        for n, frac in self.dup:
            if len(words) < n:
                continue
            h = _ngram_ids(ids, n)
            glen = cum[n:] - cum[:-n]
            r = dup_ngram_chars(h, glen, n) / L
            if r > frac:
                return Verdict(False, f"duplicated {n}-grams cover {r:.3f} of characters > {frac}", text)
        return Verdict(True, None, text)
