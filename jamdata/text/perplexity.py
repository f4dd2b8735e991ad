"""CCNet's quality signal: the perplexity of a document under a language's n-gram model.

Each line is normalised (lower case, accents off, digits to 0, Unicode punctuation to ASCII),
cut into SentencePiece pieces, and scored by a KenLM model trained on that language's Wikipedia;
the document's perplexity is 10 ** (-(sum of log10 probabilities) / (pieces + one end of line per
line)). Low perplexity means Wikipedia-like text. Documents are put in buckets by per-language
cutoffs: `head` (below the first), `middle` (below the second), `tail` (Wenzek et al. 2020 used the
33rd and 66th percentiles of each language; RedPajama v1 kept head and middle).

CCNet's published models (`{lang}.arpa.bin` and `{lang}.sp.model`) load as they are; so does any
ARPA file (plain text). `train_kenlm` makes one from clean documents with KenLM's `lmplz`.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import unicodedata
from functools import lru_cache
from typing import Iterable

_DIGITS = re.compile(r"\d")
_MARKS = re.compile(r"[\u0300-\u036f]")
# Unicode punctuation mapped to its ASCII look-alike before scoring (the models saw it this way)
_PUNCT = str.maketrans(
    {
        "，": ",",
        "。": ".",
        "、": ",",
        "„": '"',
        "”": '"',
        "“": '"',
        "«": '"',
        "»": '"',
        "」": '"',
        "「": '"',
        "《": '"',
        "》": '"',
        "´": "'",
        "∶": ":",
        "：": ":",
        "？": "?",
        "）": ")",
        "！": "!",
        "（": "(",
        "；": ";",
        "’": "'",
        "‘": "'",
        "—": "-",
        "–": "-",
        "…": "...",
        "‹": '"',
        "›": '"',
        "\u00a0": " ",
    }
)


def normalize_line(line: str) -> str:
    """The text a CCNet-style model scores: lower case, accents removed, digits -> 0, Unicode
    punctuation as ASCII, whitespace collapsed."""
    s = line.lower().translate(_PUNCT)
    if not s.isascii():
        s = _MARKS.sub("", unicodedata.normalize("NFD", s))
        s = unicodedata.normalize("NFC", s)
    return " ".join(_DIGITS.sub("0", s).split())


class PerplexityModel:
    """A KenLM model and the SentencePiece model its pieces come from."""

    def __init__(self, lm_path: str, sp_path: str):
        import kenlm
        import sentencepiece as spm

        self.lm = kenlm.Model(local_copy(lm_path))
        self.sp = spm.SentencePieceProcessor(model_file=local_copy(sp_path))

    def pieces(self, text: str) -> list[str]:
        """One space-joined piece string per non-empty line of `text`."""
        lines = [normalize_line(ln) for ln in text.split("\n")]
        lines = [ln for ln in lines if ln]
        return [" ".join(p) for p in self.sp.encode(lines, out_type=str)] if lines else []

    def perplexity(self, text: str) -> float | None:
        """10 ** (-log10 P / tokens) over all lines (None for a text with nothing to score)."""
        log10, n = 0.0, 0
        for piece_line in self.pieces(text):
            log10 += self.lm.score(piece_line)  # with <s> and </s>
            n += piece_line.count(" ") + 2  # pieces + </s>
        return round(10.0 ** (-log10 / n), 1) if n else None


def local_copy(path: str) -> str:
    """KenLM, SentencePiece and fastText read local files: a remote model is copied to a local cache once."""
    from jamdata.io import is_local

    if is_local(path):
        return path.removeprefix("file://")
    return _cached_copy(path)


@lru_cache(maxsize=32)
def _cached_copy(url: str) -> str:
    import hashlib
    import os
    import tempfile

    from jamdata.io import open_url

    dest = os.path.join(
        tempfile.gettempdir(),
        "jam-models",
        hashlib.sha256(url.encode()).hexdigest()[:16] + "-" + url.rsplit("/", 1)[-1],
    )
    if not os.path.exists(dest):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = f"{dest}.{os.getpid()}.part"
        with open_url(url, "rb") as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, dest)
    return dest


def bucket(perplexity: float | None, cutoffs: list[float] | None) -> str:
    """`head` / `middle` / `tail` by [head cutoff, tail cutoff]; `unscored` without both."""
    if perplexity is None or not cutoffs:
        return "unscored"
    return "head" if perplexity < cutoffs[0] else "middle" if perplexity < cutoffs[1] else "tail"


def tercile_cutoffs(perplexities: Iterable[float | None]) -> list[float]:
    """The 33rd and 66th percentiles (CCNet's head/middle/tail boundaries) of a language's scores."""
    xs = sorted(p for p in perplexities if p is not None and math.isfinite(p))
    if not xs:
        return []
    at = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return [at(1 / 3), at(2 / 3)]


def find_lmplz(name: str = "lmplz") -> str | None:
    """KenLM's `lmplz`: a path, on the PATH, or beside this Python (scripts/build_lmplz.sh puts it
    in the virtual environment's bin/)."""
    import os
    import sys

    if os.path.sep in name and os.path.exists(name):
        return name
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return shutil.which(name) or (beside if os.path.exists(beside) else None)


def train_kenlm(
    texts: Iterable[str], sp_path: str, out: str, order: int = 5, lmplz: str = "lmplz", memory: str = "20%"
) -> int:
    """Train an `order`-gram KenLM model on the SentencePiece pieces of `texts` with KenLM's
    `lmplz` (ARPA out; `.bin` out also runs `build_binary` from beside it). Returns lines used."""
    import os
    import tempfile

    import sentencepiece as spm

    exe = find_lmplz(lmplz)
    if exe is None:
        raise RuntimeError(
            f"KenLM's {lmplz!r} is not installed: scripts/build_lmplz.sh builds it from "
            "the kenlm sources (see docs/text-filters.md), or pass --lmplz PATH"
        )
    sp = spm.SentencePieceProcessor(model_file=local_copy(sp_path))
    n = 0
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "pieces.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            for text in texts:
                lines = [ln for ln in (normalize_line(x) for x in text.split("\n")) if ln]
                for pieces in sp.encode(lines, out_type=str) if lines else []:
                    f.write(" ".join(pieces) + "\n")
                    n += 1
        arpa = out if not out.endswith(".bin") else os.path.join(tmp, "model.arpa")
        with open(corpus, "rb") as src, open(arpa, "wb") as dst:
            subprocess.run(
                [exe, "-o", str(order), "-S", memory, "-T", tmp, "--discount_fallback"],
                stdin=src,
                stdout=dst,
                stderr=subprocess.PIPE,
                check=True,
            )
        if out.endswith(".bin"):
            binary = os.path.join(os.path.dirname(exe), "build_binary")
            subprocess.run([binary, arpa, out], check=True, capture_output=True)
    return n
