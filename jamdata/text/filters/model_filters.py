"""The two model-based quality filters of the LLaMA Common Crawl recipe.

- `quality`: LLaMA's reference-page classifier (jamdata/text/quality.py); stores `quality_prob`
  (P(page looks like one cited by Wikipedia)) and keeps documents with it >= `threshold`.
- `perplexity`: CCNet's KenLM perplexity per language (jamdata/text/perplexity.py); stores
  `perplexity` and `perplexity_bucket` (head/middle/tail by per-language cutoffs) and keeps the
  documents whose bucket is in `keep_buckets`.

Models are loaded on first use, once per worker process, and shared by the filters that name them.
"""

from __future__ import annotations

import errno
import os
from functools import lru_cache

from jamdata.text.filters.base import Verdict


def _check_local(path: str) -> None:
    """A local model file that is not there fails when the chain is built (before the job), not
    in a worker at the first document; remote ones are read by the workers."""
    if "://" not in path and not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no such file", path)


@lru_cache(maxsize=8)
def _classifier(path: str, positive_label: str):
    from jamdata.text.quality import load_classifier

    return load_classifier(path, positive_label)


@lru_cache(maxsize=64)
def _lm(lm_path: str, sp_path: str):
    from jamdata.text.perplexity import PerplexityModel

    return PerplexityModel(lm_path, sp_path)


class QualityClassifierFilter:
    """Keep documents the reference-page classifier scores >= `threshold` (RedPajama: 0.25).
    `model`: a `jamdata quality train` output (.npz) or a fastText .bin whose positive label is
    `positive_label`. `max_chars`: the document's first characters are scored."""

    name = "quality"

    def __init__(
        self, model: str, threshold: float = 0.25, positive_label: str = "__label__positive", max_chars: int = 100000
    ):
        if not model:
            raise ValueError("model: give the classifier file (train one with `jamdata quality train`)")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within 0..1, got {threshold}")
        _check_local(model)
        self.model, self.threshold, self.positive_label, self.max_chars = model, threshold, positive_label, max_chars

    def __call__(self, text: str) -> Verdict:
        score = round(_classifier(self.model, self.positive_label).predict(text[: self.max_chars]), 4)
        fields = {"quality_prob": score}
        if score < self.threshold:
            return Verdict(False, f"reference-page score {score:.3f} < threshold {self.threshold}", text, fields)
        return Verdict(True, None, text, fields)


class PerplexityFilter:
    """CCNet perplexity with the model of the document's language (the `language` filter's field,
    else `default_language`). `lm_model` / `sp_model`: paths with `{lang}` in them (CCNet's layout:
    `lm_sp/{lang}.arpa.bin`, `lm_sp/{lang}.sp.model`); `cutoffs`: {lang: [head, tail]} perplexity
    boundaries; languages without a model or cutoffs are `unscored` (kept unless not in
    `keep_buckets`)."""

    name = "perplexity"
    uses_fields = True  # reads the language found by an earlier filter

    def __init__(
        self,
        lm_model: str,
        sp_model: str,
        languages: list[str] | None = None,
        cutoffs: dict[str, list[float]] | None = None,
        keep_buckets: list[str] | None = None,
        default_language: str = "en",
        max_chars: int = 100000,
    ):
        known = {"head", "middle", "tail", "unscored"}
        languages = ["en"] if languages is None else languages
        keep_buckets = sorted(known) if keep_buckets is None else keep_buckets
        if set(keep_buckets) - known:
            raise ValueError(
                f"keep_buckets: unknown bucket(s) {sorted(set(keep_buckets) - known)} (allowed: {sorted(known)})"
            )
        for lang, cut in (cutoffs or {}).items():
            if not (
                isinstance(cut, (list, tuple))
                and len(cut) == 2
                and all(isinstance(c, (int, float)) for c in cut)
                and cut[0] <= cut[1]
            ):
                raise ValueError(f"cutoffs.{lang}: must be [head, tail] perplexities with head <= tail, got {cut!r}")
        self.lm_model, self.sp_model = lm_model, sp_model
        self.languages = frozenset(languages)
        self.cutoffs = {k: [float(c) for c in v] for k, v in (cutoffs or {}).items()}
        self.keep_buckets = frozenset(keep_buckets)
        self.default_language, self.max_chars = default_language, max_chars
        for lang in sorted(self.languages):
            _check_local(lm_model.replace("{lang}", lang))
            _check_local(sp_model.replace("{lang}", lang))

    def __call__(self, text: str, fields: dict | None = None) -> Verdict:
        lang = (fields or {}).get("language") or self.default_language
        if lang not in self.languages:
            pp, name = None, "unscored"
        else:
            model = _lm(self.lm_model.replace("{lang}", lang), self.sp_model.replace("{lang}", lang))
            pp = model.perplexity(text[: self.max_chars])
            from jamdata.text.perplexity import bucket

            name = bucket(pp, self.cutoffs.get(lang))
        out = {"perplexity": pp, "perplexity_bucket": name}
        if name not in self.keep_buckets:
            return Verdict(False, f"perplexity {pp} is in the {name} bucket ({lang})", text, out)
        return Verdict(True, None, text, out)
