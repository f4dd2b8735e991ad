"""MinHash signatures over word n-grams, computed in vectorised batches.

Each n-gram is hashed once to 64 bits (xxh3 of each distinct word, then the words of an n-gram
mixed with integer arithmetic); the `num_perm` hash functions are h_i(x) = ((a_i * x + b_i) mod
2^64) >> 32 over the low 32 bits of x, evaluated for a whole batch of documents as one
[shingles x num_perm] array in chunks of bounded size, and reduced per document. Signatures are uint32 [num_perm], the same for any batch composition.
"""

from __future__ import annotations

import re
from itertools import compress, repeat
from operator import is_
import unicodedata
from typing import Iterable, Sequence

import numpy as np
import xxhash

MERSENNE = np.uint64((1 << 61) - 1)
_MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9)
_WORD = re.compile(r"[^\W_]+")


_ASCII_SEP = str.maketrans({c: " " for c in map(chr, range(128)) if not c.isalnum()})


def normalize_words(text: str) -> list[str]:
    """Lower-cased words (NFKC), punctuation and symbols treated as separators."""
    if text.isascii():
        return text.lower().translate(_ASCII_SEP).split()
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    return _WORD.findall(text.lower())


def shingle_hashes(words: Sequence[str], ngram: int = 5, cache: dict | None = None) -> np.ndarray:
    """Distinct 64-bit hashes of the word n-grams (a text shorter than n is one shingle)."""
    if not words:
        return np.zeros(0, dtype=np.uint64)
    cache = {} if cache is None else cache
    vals = list(map(cache.get, words))
    if None in vals:
        h64 = xxhash.xxh3_64_intdigest
        for w in set(compress(words, map(is_, vals, repeat(None)))):
            cache[w] = h64(w.encode("utf-8"))
        vals = list(map(cache.__getitem__, words))
    ids = np.array(vals, dtype=np.uint64)
    n = min(ngram, len(ids))
    m = len(ids) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = (h ^ ids[k : k + m]) * _MIX1
            h ^= h >> np.uint64(31)
        h *= _MIX2
        h ^= h >> np.uint64(29)
    h.sort()
    return h[np.concatenate(([True], h[1:] != h[:-1]))]


class MinHasher:
    """`num_perm` hash functions drawn from `seed`; `signatures(texts)` -> uint32 [n, num_perm]."""

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1, chunk_elements: int = 1 << 18):
        self.num_perm, self.ngram, self.seed = num_perm, ngram, seed
        rng = np.random.default_rng(seed)
        # multiply-add-shift: h(x) = ((a*x + b) mod 2^64) >> 32, a odd, strongly universal for
        # 32-bit x (Dietzfelbinger 1996); cheaper than a Mersenne-prime modulus, same quality.
        self.a = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
        self.rows_per_chunk = max(1, chunk_elements // num_perm)
        self._cache: dict[str, int] = {}  # word -> 64-bit hash, bounded

    def shingles(self, text: str, cache: dict | None = None) -> np.ndarray:
        return shingle_hashes(normalize_words(text), self.ngram, cache)

    def _minhash(self, x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """x: concatenated shingle hashes; offsets: start of each (non-empty) document in x.
        Rows are processed in cache-sized chunks that may cut through documents; each chunk's
        per-document minima are folded into the running minimum."""
        n_docs = len(offsets)
        out = np.full((n_docs, self.num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
        bounds = np.append(offsets, len(x))
        x32 = (x & np.uint64(0xFFFFFFFF))[:, None]
        step = self.rows_per_chunk
        buf = np.empty((step, self.num_perm), dtype=np.uint64)
        shift = np.uint64(32)
        for s in range(0, len(x), step):
            e = min(len(x), s + step)
            v = buf[: e - s]
            np.multiply(x32[s:e], self.a, out=v)
            v += self.b  # the >> 32 commutes with min, so it is applied to the minima only
            d0 = int(np.searchsorted(bounds, s, "right")) - 1
            d1 = int(np.searchsorted(bounds, e, "left"))
            # per-document slices: ndarray.min(axis=0) is ~8x faster than minimum.reduceat on axis 0
            cuts = np.clip(bounds[d0 : d1 + 1] - s, 0, e - s).tolist()
            for d, lo, hi in zip(range(d0, d1), cuts[:-1], cuts[1:]):
                if hi > lo:
                    np.minimum(out[d], v[lo:hi].min(axis=0), out=out[d])
        return (out >> shift).astype(np.uint32)

    def signatures_from_shingles(self, shingles: Sequence[np.ndarray]) -> np.ndarray:
        sizes = np.fromiter((len(s) for s in shingles), dtype=np.int64, count=len(shingles))
        sig = np.full((len(shingles), self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        nonempty = np.nonzero(sizes)[0]
        if len(nonempty):
            x = np.concatenate([shingles[i] for i in nonempty.tolist()])
            offsets = np.concatenate(([0], np.cumsum(sizes[nonempty])[:-1]))
            sig[nonempty] = self._minhash(x, offsets)
        return sig

    def signatures(self, texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """(signatures uint32 [n, num_perm], distinct shingle counts int64 [n]) for a batch."""
        if len(self._cache) > 2_000_000:
            self._cache.clear()
        sh = [self.shingles(t, self._cache) for t in texts]
        return self.signatures_from_shingles(sh), np.fromiter((len(s) for s in sh), dtype=np.int64, count=len(sh))

    def signature(self, text: str) -> np.ndarray:
        return self.signatures([text])[0][0]


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a == b)) / len(a)


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two shingle-hash sets."""
    if not len(a) and not len(b):
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def lsh_threshold(bands: int, rows: int) -> float:
    """The similarity at which a pair becomes a candidate with probability ~1/2: (1/b)^(1/r)."""
    return (1.0 / bands) ** (1.0 / rows)


def candidate_probability(s: float, bands: int, rows: int) -> float:
    return 1.0 - (1.0 - s**rows) ** bands
