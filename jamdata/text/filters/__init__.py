"""Document filters: each is a callable `f(text) -> Verdict` with a `.name` (the stage name used
in rejects and the funnel). `build_filter_chain(cfg, source)` builds the configured chain for one
source from the `text.clean.filters` config section; `apply_chain` runs it.

    chain = build_filter_chain(Config(...).section("text.clean.filters"), "c4")
    verdict, failed = apply_chain(doc["text"], chain)
"""

from __future__ import annotations

from jamdata.config import Config, ConfigError
from jamdata.settings import check_kwargs
from jamdata.text.filters.base import Filter, Verdict, apply_chain
from jamdata.text.filters.basic import MinLengthFilter, QualityScoreFilter, quality_score
from jamdata.text.filters.c4 import C4Filter
from jamdata.text.filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from jamdata.text.filters.hygiene import DecontaminationFilter, PIIFilter
from jamdata.text.filters.model_filters import PerplexityFilter, QualityClassifierFilter
from jamdata.text.langid import WIKIPEDIA_LANGUAGES, LanguageFilter

FILTERS: dict[str, type] = {
    "min_length": MinLengthFilter,
    "language": LanguageFilter,
    "c4": C4Filter,
    "gopher_quality": GopherQualityFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "quality_score": QualityScoreFilter,
    "quality": QualityClassifierFilter,
    "perplexity": PerplexityFilter,
    "decontaminate": DecontaminationFilter,
    "pii": PIIFilter,
}

WEB_CHAIN = ["min_length", "language", "c4", "gopher_quality", "gopher_repetition", "quality_score"]
DEFAULT_CHAINS: dict[str, list[str]] = {
    "commoncrawl": WEB_CHAIN,
    "c4": WEB_CHAIN,
    "default": ["min_length", "language", "quality_score"],  # wikipedia, books, arxiv
}
SECTION_KEYS = ["chains", "per_source", *FILTERS]


def _make(name: str, params: dict, where: str) -> Filter:
    cls = FILTERS[name]
    params = check_kwargs(cls, params, where)  # unknown keys and wrong types: one line
    try:
        return cls(**params)
    except (TypeError, ValueError) as e:
        raise ConfigError(where, str(e)) from None
    except OSError as e:  # a word list or model file named by the config
        raise ConfigError(where, f"cannot read {e.filename or 'a file it names'}: {e.strerror or e}") from None


def chain_names(cfg: Config, source: str) -> list[str]:
    """The filter names that run for `source`, in order."""
    chains = {**DEFAULT_CHAINS, **cfg.section("chains").to_dict()}
    names = chains.get(source, chains["default"])
    if not isinstance(names, list):
        raise ConfigError(f"{cfg.prefix}.chains.{source}", f"must be a list of filter names, got {names!r}")
    for n in names:
        if n not in FILTERS:
            raise ConfigError(f"{cfg.prefix}.chains.{source}", f"unknown filter {n!r}", allowed=list(FILTERS))
    return list(names)


def build_filter_chain(cfg: Config, source: str) -> list[Filter]:
    """Filters for one source from the `text.clean.filters` section. Each filter's parameters come
    from its own sub-section, overridden by `per_source.<source>.<filter>`."""
    cfg.check_keys(SECTION_KEYS)
    per_source = cfg.section("per_source")
    for src in per_source.data:
        per_source.section(src).check_keys(list(FILTERS))
    chain: list[Filter] = []
    for name in chain_names(cfg, source):
        params = (
            {**cfg.section(name).to_dict(), **per_source.section(source).section(name).to_dict()}
            if source in per_source.data
            else cfg.section(name).to_dict()
        )
        chain.append(_make(name, params, f"{cfg.prefix}.{name}"))
    return chain


__all__ = [
    "Verdict",
    "Filter",
    "apply_chain",
    "build_filter_chain",
    "chain_names",
    "FILTERS",
    "MinLengthFilter",
    "LanguageFilter",
    "C4Filter",
    "GopherQualityFilter",
    "GopherRepetitionFilter",
    "QualityScoreFilter",
    "quality_score",
    "QualityClassifierFilter",
    "PerplexityFilter",
    "DecontaminationFilter",
    "PIIFilter",
    "WIKIPEDIA_LANGUAGES",
]
