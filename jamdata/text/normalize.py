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
_SPACES = re.compile(r"[^\S\n]+")  # any whitespace except newline (tabs, NBSP, ideographic space...)
_BLANK_RUNS = re.compile(r"\n{3,}")


def fix_mojibake(text: str) -> str:
    """Repair UTF-8-read-as-cp1252 style mojibake; a no-op (and fast) for clean text."""
    if is_bad(text):
        return fix_text(text, normalization="NFC", uncurl_quotes=False, fix_line_breaks=False,
                        fix_latin_ligatures=False, fix_character_width=False)
    return text


def normalize_whitespace(text: str) -> str:
    """\\r\\n -> \\n, runs of spaces/tabs -> one space, no trailing spaces, at most one blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def normalize_text(text: str) -> str:
    """The normalisation every source gets: mojibake repair, NFC, whitespace."""
    return normalize_whitespace(unicodedata.normalize("NFC", fix_mojibake(text)))
