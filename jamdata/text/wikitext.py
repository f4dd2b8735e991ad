"""Wikitext to plain text, in the wiki's own language.

Comments, references, templates and tables go first with linear scans (the bulk of the markup and
the slow part for a full parser); mwparserfromhell renders what is left. Links into the file,
media and category namespaces, caption markup, gallery lines and appendix sections are removed by
the names of the wiki they come from (a `WikiSite`, see wikisite.py): `[[Datei:…|mini|…]]`,
`[[Категория:…]]` and "Weblinks" go as `[[File:…|thumb|…]]`, `[[Category:…]]` and "External
links" do.

    clean_wikitext(page_text, site=read_siteinfo("dewiki-pages-articles.xml.bz2"))
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

from mwparserfromhell import nodes as N

from jamdata.text.normalize import normalize_whitespace
from jamdata.text.wikisite import WikiSite, fold, site_for

# Appendix headings dropped in every language unless configured otherwise (text.clean.wiki_drop_sections)
DEFAULT_DROP_SECTIONS = (
    "see also",
    "references",
    "external links",
    "further reading",
    "notes",
    "bibliography",
    "sources",
    "citations",
    "footnotes",
)

_HEADING = re.compile(r"^(={1,6})\s*(.*?)\s*\1\s*$", re.M)
_INVISIBLE_TAGS = {
    "ref",
    "references",
    "table",
    "gallery",
    "math",
    "chem",
    "timeline",
    "imagemap",
    "score",
    "syntaxhighlight",
    "source",
    "templatedata",
    "graph",
    "mapframe",
    "maplink",
}
_INTERLANG = re.compile(r"^[a-z]{2,3}(-[a-z]+)?$")
_MAGIC = re.compile(r"__[A-Z]+__")
_STRAY_QUOTES = re.compile(r"'{2,}")


def _drop_sections(wikitext: str, names: Iterable[str]) -> str:
    """Remove sections whose heading is in `names` (folded: see wikisite.fold), with their
    sub-sections."""
    names = {fold(n) for n in names}
    out, skip_level = [], 0
    pos = 0
    for m in _HEADING.finditer(wikitext):
        level = len(m.group(1))
        if not skip_level:
            out.append(wikitext[pos : m.start()])
        if skip_level and level <= skip_level:
            skip_level = 0
        if not skip_level and fold(_STRAY_QUOTES.sub("", m.group(2))) in names:
            skip_level = level
        if not skip_level:
            out.append(m.group(0))
        pos = m.end()
    if not skip_level:
        out.append(wikitext[pos:])
    return "".join(out)


def _render(code, site: WikiSite) -> str:
    """Wikicode -> text in one pass (removing nodes in place is quadratic on long articles). Links
    into the site's file, media and category namespaces and interlanguage links are removed."""
    out: list[str] = []
    for node in code.nodes:
        if isinstance(node, N.Text):
            out.append(node.value)
        elif isinstance(node, N.Wikilink):
            title = str(node.title).strip()
            # `[[:Category:X|label]]` (a leading colon) is a visible link to that page, not markup
            prefix = fold(title.split(":", 1)[0]) if ":" in title and not title.startswith(":") else ""
            if prefix in site.link_namespaces or (prefix and _INTERLANG.match(prefix)):
                continue
            out.append(_render(node.text, site) if node.text is not None else title.lstrip(":").split("#")[0])
        elif isinstance(node, N.ExternalLink):
            if node.title is not None:
                out.append(_render(node.title, site))
        elif isinstance(node, N.Tag):
            tag = str(node.tag).strip().lower()
            if tag in _INVISIBLE_TAGS:
                continue
            if tag in ("br", "hr"):
                out.append("\n")
            elif node.contents is not None and not node.self_closing:
                out.append(_render(node.contents, site))
        elif isinstance(node, N.Heading):
            out.append("\n" + _render(node.title, site).strip() + "\n")
        elif isinstance(node, N.HTMLEntity):
            out.append(node.normalize())
        # templates, comments, template arguments, anything else: removed
    return "".join(out)


_WIKI_COMMENT = re.compile(r"<!--.*?(-->|\Z)", re.S)
_WIKI_REF = re.compile(r"<ref\b[^>]*?/>|<ref\b[^>]*>.*?(</ref\s*>|\Z)", re.S | re.I)
_TEMPLATE_BRACES = re.compile(r"\{\{|\}\}")
_TABLE_MARKS = re.compile(r"^[ \t:]*(\{\||\|\})", re.M)


def _strip_nested(text: str, marks: re.Pattern, opener: str) -> str:
    """Remove balanced, possibly nested spans (templates, tables) in one linear scan."""
    out, depth, pos = [], 0, 0
    for m in marks.finditer(text):
        if m.group(0).strip(" \t:") == opener:
            if depth == 0:
                out.append(text[pos : m.start()])
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                pos = m.end()
    if depth == 0:
        out.append(text[pos:])
    return "".join(out)


_LINK_BRACKETS = re.compile(r"\[\[|\]\]")


def _strip_file_links(text: str, site: WikiSite) -> str:
    """Remove [[File:...]] / [[Datei:...]] / [[Категория:...]] spans (any name of the site's file,
    media and category namespaces), captions with nested links included (the parser gives up on
    some of them and leaves them as text)."""
    out, stack, pos = [], [], 0
    drop_start = site.link_pattern()
    for m in _LINK_BRACKETS.finditer(text):
        if m.group(0) == "[[":
            stack.append(m.start())
        elif stack:
            start = stack.pop()
            if not stack and drop_start.match(text, start) and start >= pos:
                out.append(text[pos:start])
                pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def clean_wikitext(wikitext: str, drop_sections: Iterable[str] | None = None, site: WikiSite | None = None) -> str:
    """Plain text: links keep their label; templates, references, tables, comments, categories,
    files/images (captions and galleries too), interlanguage links and bold/italic markup removed;
    appendix sections dropped; headings kept as lines.

    `site` names the wiki's namespaces, caption words and appendix headings (wikisite.py); without
    it, the English canonical names and `drop_sections` (default: DEFAULT_DROP_SECTIONS).
    Comments, references, templates and tables go first with linear scans (the bulk of the markup,
    and the slow part for the full parser); mwparserfromhell then renders what is left."""
    import mwparserfromhell

    if site is None:
        site = _default_site(tuple(DEFAULT_DROP_SECTIONS if drop_sections is None else drop_sections))
    text = _WIKI_REF.sub("", _WIKI_COMMENT.sub("", wikitext))
    text = _strip_nested(text, _TEMPLATE_BRACES, "{{")
    text = _strip_file_links(_strip_nested(text, _TABLE_MARKS, "{|"), site)
    text = _render(mwparserfromhell.parse(_drop_sections(text, site.drop_sections)), site)
    text = _MAGIC.sub("", _STRAY_QUOTES.sub("", text))
    lines = []
    for line in text.split("\n"):
        line = line.strip()
        if line and (re.fullmatch(r"[|{}!\-\s]*", line) or _is_media_residue(line, site)):
            continue  # table residue, a gallery line or caption markup the parser left as text
        lines.append(line)
    return normalize_whitespace("\n".join(lines))


@lru_cache(maxsize=16)
def _default_site(drop_sections: tuple[str, ...]) -> WikiSite:
    """English canonical names only: for wikitext whose wiki is not known."""
    return site_for(None, drop_sections=drop_sections)


@lru_cache(maxsize=256)
def site_of(lang: str | None, drop_sections: tuple[str, ...]) -> WikiSite:
    """The WikiSite of a language from the shipped table (built once per language, not per page)."""
    return site_for(lang, drop_sections=drop_sections)


_MEDIA_FILE = re.compile(
    r"\.(?:jpe?g|png|gif|svg|tiff?|webp|xcf|ogg|ogv|oga|webm|mp3|wav|flac|mid|pdf|djvu|stl)\s*$", re.I
)
_SIZE_OPTION = re.compile(
    r"^(?:\d*x?\d+\s*(?:px|пкс|пикс)|upright(?:=[\d.]+)?|hochkant(?:=[\d.]+)?|alt=.*|link=.*)$", re.I
)
_NAMESPACED = re.compile(r"^([^\s:|][^:|]{0,40}):\S")


def _is_media_residue(line: str, site: WikiSite) -> bool:
    """A line that is file or category markup left as text: `mini|links|Caption`,
    `Datei:X.jpg|Caption` (a gallery line), `Kategorie:Flüsse` (namespace names written without
    a space after the colon, as links are; prose puts a space there)."""
    if "|" in line:
        first = line.split("|", 1)[0].strip()
        if fold(first) in site.image_options or _SIZE_OPTION.match(first) or _MEDIA_FILE.search(first):
            return True
    m = _NAMESPACED.match(line)
    return bool(m and fold(m.group(1)) in site.link_namespaces)


def clean_wiki_plain(text: str, site: WikiSite) -> str:
    """A plain-text Wikipedia export (a parquet `text` without markup): caption, gallery and
    category lines removed, and everything from the first appendix heading on (See also,
    Weblinks, Примечания…: the layout guidelines put appendices last)."""
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if i and stripped and fold(stripped) in site.drop_sections:
            break
        if stripped and _is_media_residue(stripped, site):
            continue
        out.append(line)
    return "\n".join(out)


def looks_like_wikitext(text: str) -> bool:
    return "[[" in text or "{{" in text or "'''" in text or bool(_HEADING.search(text[:20000]))
