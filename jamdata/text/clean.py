"""Per-source cleaning (the LLaMA-1 recipe), pure functions on text.

- Wikipedia: wikitext to plain text in the wiki's own language (wikitext.py, wikisite.py).
- arXiv: LaTeX kept as LaTeX (as in LLaMA/RedPajama), but only from the first section on, without
  comments and the bibliography, with user macros expanded.
- Books: Project Gutenberg header, footer and licence removed.
- Common Crawl: CCNet-style removal of lines that recur across the documents of one shard.
Every document then gets `normalize_text` (NFC, mojibake repair, whitespace).

`clean_records(records, fmt, opts)` applies the right cleaner to a reader's output stream.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from jamdata.text.normalize import normalize_text
from jamdata.text.readers import ExpansionLimit, is_reject, make_reject
from jamdata.text.wikisite import WikiSite, language_of_url
from jamdata.text.wikitext import DEFAULT_DROP_SECTIONS, clean_wiki_plain, clean_wikitext, looks_like_wikitext, site_of


@dataclass(frozen=True)
class CleanOptions:
    line_dedup_min_docs: int = 3  # Common Crawl: a line in >= this many documents of a shard is boilerplate
    line_dedup_min_chars: int = 0  # shorter lines are never counted as boilerplate (0: all lines)
    line_dedup_group_files: int = 0  # > 0: line dedup over groups of this many files (pipelines/line_dedup.py)
    max_expanded_chars: int = 16 << 20  # arXiv: macro expansion past this is a bomb (a reject)
    wiki_drop_sections: tuple[str, ...] = DEFAULT_DROP_SECTIONS  # plus each language's own (wikisite.py)


# -- arXiv -----------------------------------------------------------------------------------------
_COMMENT_ENV = re.compile(r"\\begin\{comment\}.*?\\end\{comment\}", re.S)
_IFFALSE = re.compile(r"\\iffalse\b.*?\\fi\b", re.S)
_SECTION = re.compile(r"\\(part|chapter|section|subsection|subsubsection)\*?\s*[\[{]")
_BIB_ENV = re.compile(r"\\begin\{(thebibliography|references)\}.*?(\\end\{\1\}|$)", re.S | re.I)
_BIB_CMDS = re.compile(
    r"\\(bibliography|bibliographystyle|printbibliography|addbibresource)\b\s*(\[[^\]]*\])?\s*(\{[^}]*\})?"
)
_END_DOC = re.compile(r"\\end\{document\}")
_BEGIN_DOCUMENT = re.compile(r"\\begin\{document\}")
_NEWCMD = re.compile(r"\\(?:re)?newcommand\*?|\\providecommand\*?|\\DeclareRobustCommand\*?")
_DEF = re.compile(r"\\(?:g|e|x)?def\s*(\\[A-Za-z@]+)((?:#\d)*)\s*\{")


def strip_tex_comments(tex: str) -> str:
    """Remove `%` comments (an escaped `\\%` stays), comment environments and \\iffalse blocks; a
    line that was only a comment disappears instead of becoming a blank line (which would split a
    paragraph)."""
    out = []
    for line in tex.split("\n"):
        m = re.search(r"(?<!\\)(?:\\\\)*%", line)
        if m:
            cut = m.start() + (m.group(0).rfind("%") if m.group(0) else 0)
            if not line[:cut].strip():
                continue
            line = line[:cut]
        out.append(line)
    tex = "\n".join(out)
    tex = _COMMENT_ENV.sub("", tex)
    return _IFFALSE.sub("", tex)


def _braced(tex: str, i: int) -> tuple[str, int] | None:
    """The {balanced group} starting at tex[i] (after optional spaces): (content, index after)."""
    while i < len(tex) and tex[i] in " \t\n":
        i += 1
    if i >= len(tex) or tex[i] != "{":
        return None
    depth, j = 0, i
    while j < len(tex):
        c = tex[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return tex[i + 1 : j], j + 1
        j += 1
    return None


def find_macros(tex: str) -> dict[str, tuple[int, str]]:
    """User macros `\\name -> (number of args, body)`: \\newcommand / \\renewcommand /
    \\providecommand without an optional-argument default, and \\def with #1#2... parameters."""
    macros: dict[str, tuple[int, str]] = {}
    for m in _NEWCMD.finditer(tex):
        i = m.end()
        while i < len(tex) and tex[i] in " \t\n":
            i += 1
        if tex.startswith("{", i):
            got = _braced(tex, i)
            if not got:
                continue
            name, i = got[0].strip(), got[1]
        else:
            nm = re.match(r"\\[A-Za-z@]+", tex[i:])
            if not nm:
                continue
            name, i = nm.group(0), i + nm.end()
        nargs = 0
        am = re.match(r"\s*\[(\d)\]", tex[i:])
        if am:
            nargs, i = int(am.group(1)), i + am.end()
            if re.match(r"\s*\[", tex[i:]):
                continue  # optional first argument with a default: not a simple macro
        body = _braced(tex, i)
        if body is None or not re.fullmatch(r"\\[A-Za-z@]+", name):
            continue
        macros[name] = (nargs, body[0])
    for m in _DEF.finditer(tex):
        body = _braced(tex, m.end() - 1)
        if body is None:
            continue
        params = m.group(2)
        macros[m.group(1)] = (len(params) // 2, body[0])
    return {k: v for k, v in macros.items() if k not in _KEEP_COMMANDS}


# Redefinitions of these change layout, not content; expanding them would destroy the structure.
_KEEP_COMMANDS = {
    f"\\{c}"
    for c in (
        "part",
        "chapter",
        "section",
        "subsection",
        "subsubsection",
        "paragraph",
        "subparagraph",
        "item",
        "begin",
        "end",
        "input",
        "include",
        "cite",
        "ref",
        "label",
        "caption",
        "footnote",
        "emph",
        "textbf",
        "textit",
        "url",
        "href",
    )
}


def expand_macros(tex: str, macros: dict[str, tuple[int, str]], passes: int = 4, max_chars: int = 16 << 20) -> str:
    """Inline-expand macros (nested ones over a few passes). A macro with arguments is expanded only
    where all its arguments are {braced} groups.

    Raises ExpansionLimit once the text grows past `max_chars`: macros whose bodies repeat other
    macros multiply the text with every pass (a few hundred bytes can ask for gigabytes)."""
    if not macros:
        return tex
    names = sorted(macros, key=len, reverse=True)
    pattern = re.compile(r"(" + "|".join(re.escape(n) for n in names) + r")(?![A-Za-z@])")
    for _ in range(passes):
        out, pos, changed, size = [], 0, False, 0
        for m in pattern.finditer(tex):
            if m.start() < pos:
                continue
            nargs, body = macros[m.group(1)]
            end = m.end()
            if nargs:
                args = []
                for _k in range(nargs):
                    got = _braced(tex, end)
                    if got is None:
                        break
                    args.append(got[0])
                    end = got[1]
                if len(args) < nargs:
                    continue
                rep = re.sub(
                    r"#(\d)", lambda a: args[int(a.group(1)) - 1] if 0 < int(a.group(1)) <= nargs else "", body
                )
            else:
                rep = body
            out.append(tex[pos : m.start()])
            out.append(rep)
            pos, changed = end, True
            size += len(out[-2]) + len(rep)
            if size > max_chars:
                raise ExpansionLimit(f"macro expansion over {max_chars} characters")
        out.append(tex[pos:])
        tex = "".join(out)
        if not changed:
            break
    return tex


def clean_arxiv(tex: str, max_chars: int = 16 << 20) -> str | None:
    """LaTeX source -> the body from the first section to the end, without comments and the
    bibliography, with user macros expanded. None if the paper has no section at all;
    ExpansionLimit if macro expansion grows it past `max_chars`."""
    tex = strip_tex_comments(tex)
    macros = find_macros(tex)
    begin = _BEGIN_DOCUMENT.search(tex)
    m = _SECTION.search(tex, begin.end() if begin else 0)
    if m is None:
        return None
    body = tex[m.start() :]
    end = _END_DOC.search(body)
    if end:
        body = body[: end.start()]
    body = _BIB_ENV.sub("", body)
    body = _BIB_CMDS.sub("", body)
    body = expand_macros(body, macros, max_chars=max_chars).replace("\\xspace", "")
    return re.sub(r"\n{3,}", "\n\n", body).strip()


# -- books -----------------------------------------------------------------------------------------
_PG_START = re.compile(r"^\W*\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT!.*$", re.M | re.I)
_PG_END = re.compile(
    r"^\W*\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$|^\s*End of (the )?Project Gutenberg'?s?\b.*$", re.M | re.I
)
_PG_PRODUCED = re.compile(r"\s*(Produced by|This e-?book was produced by|Transcribed by)[^\n]*\n", re.I)


def strip_gutenberg(text: str) -> str:
    """Text between the Project Gutenberg START and END markers (licence and header gone); a text
    without markers is returned unchanged."""
    start = None
    for m in _PG_START.finditer(text):
        start = m.end()
    ends = [m.start() for m in _PG_END.finditer(text) if start is None or m.start() > start]
    end = min(ends) if ends else None
    if start is None and end is None:
        return text
    body = text[start or 0 : end if end is not None else len(text)]
    body = body.lstrip("\r\n")
    produced = _PG_PRODUCED.match(body)
    if produced:
        body = body[produced.end() :]
    return body


# -- Common Crawl: CCNet line dedup ----------------------------------------------------------------
_MARKS = re.compile(r"[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_DIGITS_TO_0 = bytes.maketrans(b"123456789", b"000000000")
_ASCII_PUNCT = "".join(chr(c) for c in range(33, 127) if not chr(c).isalnum()).encode()


def _normalized_lines(text: str) -> list[bytes]:
    """CCNet's line normalisation, done on the whole document at once (per-line Python string
    work is what makes line dedup slow): lower case, accents off, digits -> 0, ASCII punctuation off,
    whitespace collapsed."""
    s = text.lower()
    if not s.isascii():
        s = _MARKS.sub("", unicodedata.normalize("NFD", s))
    b = s.encode("utf-8").translate(_DIGITS_TO_0, _ASCII_PUNCT)
    return [b" ".join(line.split()) for line in b.split(b"\n")]


def line_key(line: str) -> int:
    """The dedup key of one line. Python's hash: keys only compare within one process (a shard is
    cleaned in one call), which is all line dedup needs."""
    return hash(_normalized_lines(line.replace("\n", " "))[0])


def line_keys(text: str, min_chars: int, key: Callable[[bytes], int] = hash) -> list[int | None]:
    """One key per line of `text` (None: too short to count as boilerplate, or empty): `key` of the
    normalised line. Python's `hash` compares within one process; line dedup across workers passes
    `stable_hash`."""
    raw = text.split("\n")
    norm = _normalized_lines(text)
    if len(norm) != len(raw):  # a lower-cased character that became a line break; be exact instead
        norm = [_normalized_lines(l.replace("\n", " "))[0] for l in raw]
    return [key(n) if n and len(l.strip()) > min_chars else None for l, n in zip(raw, norm)]


def frequent_lines(texts: Iterable[str], min_docs: int, min_chars: int = 0) -> set[int]:
    """Hashes of the lines that occur in at least `min_docs` different documents."""
    return _frequent([line_keys(t, min_chars) for t in texts], min_docs)


def _frequent(keys_per_doc: list[list[int | None]], min_docs: int) -> set[int]:
    counts: Counter[int] = Counter()
    for keys in keys_per_doc:
        counts.update({k for k in keys if k is not None})
    return {h for h, n in counts.items() if n >= min_docs}


def remove_lines(text: str, boilerplate: set[int], keys: list[int | None] | None = None) -> tuple[str, int]:
    lines = text.split("\n")
    keys = keys if keys is not None else line_keys(text, 0)
    kept = [l for l, k in zip(lines, keys) if k is None or k not in boilerplate]
    return "\n".join(kept), len(lines) - len(kept)


# -- per-format dispatch ---------------------------------------------------------------------------
CLEANER_OF_FORMAT = {
    "warc": "ccnet",
    "wet": "ccnet",
    "c4": "none",
    "wiki_xml": "wikitext",
    "wiki_parquet": "wikitext_auto",
    "pile": "gutenberg",
    "text": "gutenberg",
    "arxiv": "arxiv",
    "arxiv_jsonl": "arxiv",
}


def _clean_one(
    doc: dict, cleaner: str, opts: CleanOptions = CleanOptions(), site: WikiSite | None = None
) -> tuple[dict, None] | tuple[None, str]:
    """(the cleaned document, None) or (None, why it was dropped). A document that a cleaner
    cannot handle is dropped with the reason; it never stops the others. Wikipedia pages are
    cleaned with `site` (from the dump's siteinfo) or else the site of their URL's language."""
    text = doc["text"]
    try:
        if cleaner in ("wikitext", "wikitext_auto"):
            site = site or site_of(language_of_url(doc.get("url")), tuple(opts.wiki_drop_sections))
            if cleaner == "wikitext" or looks_like_wikitext(text):
                text = clean_wikitext(text, site=site)
            else:
                text = clean_wiki_plain(text, site)
        elif cleaner == "arxiv":
            cleaned = clean_arxiv(text, opts.max_expanded_chars)
            if cleaned is None:
                return None, "arxiv: no \\section in the source"
            text = cleaned
        elif cleaner == "gutenberg":
            text = strip_gutenberg(text)
        text = normalize_text(text)
    except RecursionError:
        return None, f"{cleaner}: markup nested too deeply"
    except ExpansionLimit as e:
        return None, f"expansion_limit: {e}"
    except Exception as e:  # one document the cleaner chokes on is one reject
        return None, f"{cleaner}: cleaning failed: {type(e).__name__}: {e}"[:500]
    if not text:
        return None, "empty after cleaning"
    return {**doc, "text": text}, None


def clean_records(
    records: Iterable[dict], fmt: str, opts: CleanOptions = CleanOptions(), site: WikiSite | None = None
) -> Iterator[dict]:
    """Clean a reader's output (documents and REJECTs, in order). REJECTs pass through; a document
    that cleans to nothing becomes a REJECT of stage "clean". Common Crawl formats are cleaned per
    shard (the records of one call), since line dedup needs the whole shard's line counts; the
    others stream. `site`: a Wikipedia dump's names (wikisite.read_siteinfo), for `wiki_xml`."""
    cleaner = CLEANER_OF_FORMAT.get(fmt, "none")
    if cleaner == "ccnet" and opts.line_dedup_min_docs <= 1:
        cleaner = "none"  # no line dedup in this call: nothing to count, so stream
    if cleaner != "ccnet":
        for rec in records:
            if is_reject(rec):
                yield rec
                continue
            res = _clean_one(rec, cleaner, opts, site)
            yield res[0] if res[0] is not None else _clean_reject(rec, res[1])
        return
    buffered = list(records)
    dedup = opts.line_dedup_min_docs > 1
    keys = [line_keys(r["text"], opts.line_dedup_min_chars) if dedup and not is_reject(r) else None for r in buffered]
    boiler = _frequent([k for k in keys if k is not None], opts.line_dedup_min_docs) if dedup else set()
    for rec, rec_keys in zip(buffered, keys):
        if is_reject(rec):
            yield rec
            continue
        text, removed = remove_lines(rec["text"], boiler, rec_keys) if boiler else (rec["text"], 0)
        res = _clean_one({**rec, "text": text}, "none", opts)
        if res[0] is None:
            yield _clean_reject(rec, "only boilerplate lines" if removed else res[1])
            continue
        doc = res[0]
        if removed:
            doc["metadata"] = {**doc["metadata"], "boilerplate_lines_removed": removed}
        yield doc


def _clean_reject(doc: dict, reason: str) -> dict:
    meta = doc.get("metadata") or {}
    return make_reject(doc["source"], "clean", reason, doc["text"], meta.get("file"), meta.get("offset"), id=doc["id"])
