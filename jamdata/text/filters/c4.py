"""The C4 heuristics (Raffel et al. 2020, tensorflow_datasets c4_utils.clean_page).

Line level: keep lines that end in terminal punctuation (not an ellipsis), have >= 5 words, no
word longer than 1000 characters, no "javascript", no cookie/terms-of-use boilerplate; Wikipedia
style citation marks are removed. Page level: drop pages with "lorem ipsum", a curly bracket,
(optionally) a word from a bad-words list, or fewer than 3 sentences left after line filtering.
"""

from __future__ import annotations

import re
from typing import Iterable

from jamdata.text.filters.base import Verdict
from jamdata.text.filters.words import count_sentences

CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


# Word lists shipped with the package, by name (jamdata/text/data/)
NAMED_WORD_LISTS = {"ldnoobw": "ldnoobw-en.txt", "ldnoobw:en": "ldnoobw-en.txt"}


def load_bad_words(spec: str | Iterable[str] | None) -> frozenset[str]:
    """A list of words, the name of a shipped list (`ldnoobw`: the LDNOOBW English list C4
    used), or a path to a file with one word/phrase per line (`#` starts a comment line)."""
    if not spec:
        return frozenset()
    if isinstance(spec, str) and spec in NAMED_WORD_LISTS:
        from importlib import resources

        spec = resources.files("jamdata.text").joinpath("data", NAMED_WORD_LISTS[spec]).read_text("utf-8").splitlines()
    elif isinstance(spec, str):
        from jamdata.io import open_input

        with open_input(spec) as f:
            spec = f.read().decode("utf-8").splitlines()
    return frozenset(w.strip().lower() for w in spec if w.strip() and not w.startswith("#"))


class C4Filter:
    name = "c4"

    def __init__(
        self,
        min_words_per_line: int = 5,
        min_sentences: int = 3,
        max_word_length: int = 1000,
        remove_citations: bool = True,
        filter_javascript: bool = True,
        filter_policy: bool = True,
        filter_lorem_ipsum: bool = True,
        filter_curly_bracket: bool = True,
        bad_words: str | Iterable[str] | None = None,
    ):
        self.min_words_per_line, self.min_sentences = min_words_per_line, min_sentences
        self.max_word_length, self.remove_citations = max_word_length, remove_citations
        self.filter_javascript, self.filter_policy = filter_javascript, filter_policy
        self.filter_lorem_ipsum, self.filter_curly_bracket = filter_lorem_ipsum, filter_curly_bracket
        words = load_bad_words(bad_words)
        self._single = frozenset(w for w in words if " " not in w)
        self._phrases = (
            re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, (w for w in words if " " in w)))) + r")\b")
            if any(" " in w for w in words)
            else None
        )

    def __call__(self, text: str) -> Verdict:
        kept: list[str] = []
        sentences = 0
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            words = line.split()
            if (
                self.max_word_length > 0
                and len(line) > self.max_word_length
                and any(len(w) > self.max_word_length for w in words)
            ):
                continue
            if self.remove_citations and "[" in line:
                line = CITATION.sub("", line)
            if not line.endswith(END_PUNCTUATION) or line.endswith("..."):
                continue
            if len(words) < self.min_words_per_line:
                continue
            low = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in low:
                return Verdict(False, "contains 'lorem ipsum'", text)
            if self.filter_javascript and "javascript" in low:
                continue
            if self.filter_curly_bracket and "{" in line:
                return Verdict(False, "contains a curly bracket '{'", text)
            if self.filter_policy and any(p in low for p in POLICY_SUBSTRINGS):
                continue
            if sentences < self.min_sentences:
                sentences += count_sentences(line)
            kept.append(line)
        if sentences < self.min_sentences:
            return Verdict(
                False, f"{sentences} sentence(s) in {len(kept)} kept line(s) < min_sentences {self.min_sentences}", text
            )
        out = "\n".join(kept).strip()
        if self._single or self._phrases:
            low = out.lower()
            bad = next((w for w in re.findall(r"\w+", low) if w in self._single), None)
            if bad is None and self._phrases is not None:
                m = self._phrases.search(low)
                bad = m.group(0) if m else None
            if bad is not None:
                return Verdict(False, f"contains bad word {bad!r}", text)
        return Verdict(True, None, out)
