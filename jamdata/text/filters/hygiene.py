"""Data hygiene: evaluation-set decontamination and PII masking.

- `decontaminate`: GPT-3 / LLaMA-style 13-gram overlap with user-supplied evaluation sets. A
  document that shares any word 13-gram (lower-cased `\\w+` runs) with an evaluation passage is
  dropped, and the reject names the set and the overlapping words, so that what was removed can be
  checked. Evaluation sets: `.txt` (each non-empty line a passage), JSON lines (every string value
  of a line, joined), or parquet (every string column); compressed files are fine.
- `pii`: e-mail addresses and IP addresses (v4, and v6 as `ipaddress` accepts them) replaced by
  placeholders; never drops; stores how many were masked (`pii_emails`, `pii_ips`), summed per
  source in the run's funnel summary.
"""

from __future__ import annotations

import ipaddress
import json
import re
from functools import lru_cache

import numpy as np
import xxhash

from jamdata.text.filters.base import Verdict

_WORD = re.compile(r"\w+")
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _word_spans(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    ms = list(_WORD.finditer(text.lower()))
    return [m.group(0) for m in ms], [m.span() for m in ms]


def ngram_hashes(words: list[str], n: int) -> np.ndarray:
    """One 64-bit hash per word n-gram (position i: words[i:i+n]); empty if fewer than n words."""
    if len(words) < n:
        return np.zeros(0, np.uint64)
    h = np.fromiter((xxhash.xxh3_64_intdigest(w.encode("utf-8")) for w in words), np.uint64, len(words))
    g = h[: len(words) - n + 1].copy()
    for j in range(1, n):
        g = g * _MIX + h[j : len(words) - n + 1 + j]
    return g


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def read_passages(path: str) -> list[str]:
    """The evaluation passages of one file (see the module docstring for the formats)."""
    from jamdata.io import open_input, open_url

    name = path.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        with open_url(path, "rb") as f:
            rows = pq.read_table(f).to_pylist()
        return [" ".join(_strings(r)) for r in rows]
    with open_input(path) as f:
        lines = f.read().decode("utf-8").splitlines()
    if ".json" in name:
        return [" ".join(_strings(json.loads(ln))) for ln in lines if ln.strip()]
    return [ln for ln in lines if ln.strip()]


@lru_cache(maxsize=4)
def _eval_index(paths: tuple[str, ...], n: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(sorted n-gram hashes, which set each came from, set names) of all evaluation sets."""
    hashes, owners = [], []
    for k, path in enumerate(paths):
        for passage in read_passages(path):
            g = ngram_hashes(_word_spans(passage)[0], n)
            hashes.append(g)
            owners.append(np.full(len(g), k, np.int32))
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, np.int32), paths
    h, o = np.concatenate(hashes), np.concatenate(owners)
    order = np.argsort(h, kind="stable")
    return h[order], o[order], paths


class DecontaminationFilter:
    """Drop documents sharing at least `min_matches` word `ngram`-grams with the evaluation sets."""

    name = "decontaminate"

    def __init__(self, eval_sets: list[str], ngram: int = 13, min_matches: int = 1):
        if not eval_sets:
            raise ValueError("eval_sets: name at least one evaluation set file")
        if ngram < 1 or min_matches < 1:
            raise ValueError("ngram and min_matches must be >= 1")
        self.eval_sets, self.ngram, self.min_matches = tuple(eval_sets), ngram, min_matches
        self._index = _eval_index(self.eval_sets, ngram)  # read now: a missing file fails before the job

    def __call__(self, text: str) -> Verdict:
        table, owners, names = self._index
        words, spans = _word_spans(text)
        g = ngram_hashes(words, self.ngram)
        if not len(table) or not len(g):
            return Verdict(True, None, text)
        pos = np.searchsorted(table, g).clip(0, len(table) - 1)
        hit = np.flatnonzero(table[pos] == g)
        if len(hit) < self.min_matches:
            return Verdict(True, None, text)
        i = int(hit[0])
        words_hit = text[spans[i][0] : spans[i + self.ngram - 1][1]]
        source = names[int(owners[pos[i]])].rsplit("/", 1)[-1]
        return Verdict(
            False,
            f"{len(hit)} {self.ngram}-gram(s) from evaluation set {source}: {words_hit[:120]!r}",
            text,
            {"contaminated_ngrams": int(len(hit))},
        )


_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}(?![\w-])"
)
_IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.]|\.\d)"
)
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


class PIIFilter:
    """Mask e-mail and IP addresses (each kind can be turned off); never drops a document."""

    name = "pii"

    def __init__(
        self,
        emails: bool = True,
        ips: bool = True,
        email_replacement: str = "<EMAIL_ADDRESS>",
        ip_replacement: str = "<IP_ADDRESS>",
    ):
        self.emails, self.ips = emails, ips
        self.email_replacement, self.ip_replacement = email_replacement, ip_replacement

    def __call__(self, text: str) -> Verdict:
        fields: dict = {}
        if self.emails and "@" in text:
            text, n = _EMAIL.subn(self.email_replacement, text)
            if n:
                fields["pii_emails"] = n
        if self.ips and ("." in text or ":" in text):
            masked = [0]  # per call: the filter object may be shared by threads

            def mask(m: re.Match) -> str:
                try:
                    ipaddress.ip_address(m.group(0))
                except ValueError:
                    return m.group(0)
                masked[0] += 1
                return self.ip_replacement

            text = _IPV4.sub(mask, text)
            if "::" in text or text.count(":") >= 7:
                text = _IPV6.sub(mask, text)
            if masked[0]:
                fields["pii_ips"] = masked[0]
        return Verdict(True, None, text, fields)
