"""What a Wikipedia's own language changes in cleaning: namespace names, caption markup, appendices.

A German article links its images as `[[Datei:…|mini|…]]` and its categories as `[[Kategorie:…]]`,
a Russian one as `[[Файл:…|мини|…]]` / `[[Категория:…]]`, and their appendices are headed
"Weblinks" / "Ссылки", not "External links". A `WikiSite` holds those names for one wiki:

- the dump's own `<siteinfo><namespaces>` (every namespace named in the dump's language), read from
  the head of a `pages-articles` XML dump by `read_siteinfo`;
- the shipped table `data/wiki_languages.json` (aliases such as `Bild` for `Datei`, image-option
  words, appendix headings for the 20 languages of the LLaMA recipe), chosen by the wiki's language
  (the dump's `<dbname>`, or a page URL's host for parquet exports);
- the English canonical names (`File`, `Image`, `Media`, `Category`), valid on every wiki.

    site = read_siteinfo("dewiki-pages-articles.xml.bz2")
    site.lang, "datei" in site.link_namespaces   # ("de", True)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Iterable

CANONICAL_NAMESPACES = ("Media", "File", "Image", "Category")
DROPPED_NAMESPACE_KEYS = ("-2", "6", "14")  # Media, File, Category: their links are no prose
MAX_SITEINFO_BYTES = 1 << 20


def fold(name: str) -> str:
    """A namespace or heading name as it is compared: case-folded, `_` as a space, spaces collapsed."""
    return " ".join(name.replace("_", " ").split()).casefold()


@lru_cache(maxsize=1)
def language_table() -> dict[str, dict]:
    """{language: {namespaces, image_options, drop_sections}} from the shipped data file."""
    data = resources.files("jamdata.text").joinpath("data/wiki_languages.json").read_text("utf-8")
    return json.loads(data)["languages"]


@dataclass(frozen=True)
class WikiSite:
    """Folded names for one wiki. `link_namespaces`: prefixes whose links are removed (files, media,
    categories); `image_options`: caption-markup words (`thumb`, `mini`…); `drop_sections`: appendix
    headings removed with their sub-sections."""

    lang: str | None
    link_namespaces: frozenset[str]
    image_options: frozenset[str]
    drop_sections: frozenset[str]

    def link_pattern(self) -> re.Pattern:
        """`[[` + one of the dropped namespaces + `:` (file links whose captions hold nested links
        are cut out with this before parsing)."""
        return _link_pattern(self.link_namespaces)


@lru_cache(maxsize=64)
def _link_pattern(names: frozenset[str]) -> re.Pattern:
    alts = "|".join(sorted((re.escape(n).replace(r"\ ", "[ _]+") for n in names), key=len, reverse=True))
    return re.compile(r"\[\[\s*(?:" + alts + r")\s*:", re.I)


def site_for(lang: str | None, namespaces: Iterable[str] = (), drop_sections: Iterable[str] | None = None) -> WikiSite:
    """The WikiSite of language `lang` (unknown or None: English canonical names only), plus the
    dump's own `namespaces`. `drop_sections`: the configured headings dropped in every language
    (`text.clean.wiki_drop_sections`); the language's appendix headings are added to them, and
    an empty list turns section dropping off altogether."""
    entry = language_table().get(lang or "", {})
    names = {fold(n) for n in (*CANONICAL_NAMESPACES, *entry.get("namespaces", ()), *namespaces) if n.strip()}
    options = {fold(o) for o in (*language_table()["en"]["image_options"], *entry.get("image_options", ()))}
    if drop_sections is None:
        sections = {fold(s) for s in (*language_table()["en"]["drop_sections"], *entry.get("drop_sections", ()))}
    else:
        given = [fold(s) for s in drop_sections]
        sections = set(given) | {fold(s) for s in entry.get("drop_sections", ())} if given else set()
    return WikiSite(lang, frozenset(names), frozenset(options), frozenset(sections))


_HOST = re.compile(r"^(?:[a-z]+://)?([a-z][a-z0-9-]*)\.(?:m\.)?wikipedia\.org", re.I)
_DBNAME = re.compile(r"^([a-z][a-z0-9_-]*?)wiki$")


def language_of_url(url: str | None) -> str | None:
    """`https://de.wikipedia.org/wiki/X` -> "de"; None for anything else."""
    m = _HOST.match(url or "")
    return m.group(1).lower() if m else None


def language_of_dbname(dbname: str | None) -> str | None:
    """`dewiki` -> "de", `be_x_oldwiki` -> "be-x-old"; None if it is not a Wikipedia's name."""
    m = _DBNAME.match((dbname or "").strip())
    return m.group(1).replace("_", "-") if m else None


_NAMESPACE = re.compile(rb"<namespace\b([^>]*?)(?:/>|>([^<]*)</namespace\s*>)")
_KEY = re.compile(rb"""\bkey\s*=\s*["'](-?\d+)["']""")
_TAG = {name: re.compile(rb"<" + name + rb">\s*([^<]*?)\s*</" + name + rb">") for name in (b"dbname", b"base")}


def parse_siteinfo(head: bytes, drop_sections: Iterable[str] | None = None) -> WikiSite:
    """The WikiSite described by a dump's head (the bytes before its first `<page>`): language from
    `<dbname>` (or `<base>`'s host), names of the namespaces whose links are removed from
    `<namespaces>`."""
    import html

    def tag(name: bytes) -> str | None:
        m = _TAG[name].search(head)
        return html.unescape(m.group(1).decode("utf-8", "replace")) if m else None

    lang = language_of_dbname(tag(b"dbname")) or language_of_url(tag(b"base"))
    names = []
    for m in _NAMESPACE.finditer(head):
        key = _KEY.search(m.group(1))
        if key and key.group(1).decode() in DROPPED_NAMESPACE_KEYS and m.group(2):
            names.append(html.unescape(m.group(2).decode("utf-8", "replace")))
    return site_for(lang, names, drop_sections)


def read_siteinfo(path: str, drop_sections: Iterable[str] | None = None) -> WikiSite:
    """The WikiSite of a `pages-articles` XML dump (compressed or not), from at most its first MiB."""
    from jamdata.io import open_input

    head = b""
    with open_input(path) as f:
        while len(head) < MAX_SITEINFO_BYTES and b"<page" not in head:
            chunk = f.read(1 << 16)
            if not chunk:
                break
            head += chunk
    return parse_siteinfo(head.split(b"<page", 1)[0], drop_sections)
