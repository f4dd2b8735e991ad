"""What a filter returns, and how a chain of filters is applied to one document."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, cast


@dataclass
class Verdict:
    """keep/drop for one document; `text` is the (possibly line-filtered) text to carry on with,
    `fields` are per-document values to store (language, language_score, quality_score)."""

    keep: bool
    reason: str | None = None
    text: str = ""
    fields: dict = field(default_factory=dict)


class Filter(Protocol):
    name: str

    def __call__(self, text: str) -> Verdict: ...


class FieldsFilter(Protocol):
    """A filter that also reads the fields earlier filters found (`uses_fields = True`)."""

    name: str
    uses_fields: bool

    def __call__(self, text: str, fields: dict | None = None) -> Verdict: ...


def apply_chain(text: str, chain: Sequence[Filter | FieldsFilter]) -> tuple[Verdict, str | None]:
    """Run filters in order; stop at the first drop. Returns the final verdict (text after every
    filter that rewrote it, merged fields) and the name of the filter that dropped it (or None).
    A filter with `uses_fields = True` is also given the fields found so far (e.g. the perplexity
    filter reads the language filter's `language`)."""
    fields: dict = {}
    for f in chain:
        v = cast(FieldsFilter, f)(text, fields) if getattr(f, "uses_fields", False) else f(text)
        fields.update(v.fields)
        if not v.keep:
            return Verdict(False, v.reason, text, fields), f.name
        text = v.text
    return Verdict(True, None, text, fields), None
