"""Unicode and whitespace normalisation applied to every document after its source cleaner.

NFC so that equal strings hash equally (dedup), a mojibake repair that only runs when a cheap
detector finds mojibake (ftfy's full repair is slow on clean text, which is nearly all text), and
whitespace normalisation that keeps paragraph breaks.
"""

from __future__ import annotations

import re
import unicodedata

from ftfy import fix_text
from ftfy.badness import is_bad

# C0/C1 controls except \t \n; zero-width and BOM characters; soft hyphen.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028\u2029\ufeff\u00ad]")
_BLANK_RUNS = re.compile(r"\n{3,}")
# What UTF-8 read as cp1252/latin-1 always contains: a lead byte shown as \u00c2-\u00f4 followed by a
# continuation byte shown as \u0080-\u00bf or one of cp1252's printable 0x80-0x9f characters.
_MOJIBAKE_HINT = re.compile(
    "[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192"
    "\u02c6\u02dc\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]"
)


def fix_mojibake(text: str) -> str:
    """Repair UTF-8-read-as-cp1252 style mojibake; a no-op (and fast) for clean text."""
    if not text.isascii() and _MOJIBAKE_HINT.search(text) and is_bad(text):
        return fix_text(
            text,
            normalization="NFC",
            uncurl_quotes=False,
            fix_line_breaks=False,
            fix_latin_ligatures=False,
            fix_character_width=False,
        )
    return text


def normalize_whitespace(text: str) -> str:
    """\\r\\n -> \\n, runs of spaces/tabs -> one space, no spaces at line ends, at most one blank line."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
    # str.split() per line: ~3x faster than a whitespace regex substitution (every space is a match)
    text = "\n".join([" ".join(line.split()) for line in text.split("\n")])
    return _BLANK_RUNS.sub("\n\n", text).strip()


def normalize_text(text: str) -> str:
    """The normalisation every source gets: mojibake repair, NFC, whitespace."""
    return normalize_whitespace(unicodedata.normalize("NFC", fix_mojibake(text)))
