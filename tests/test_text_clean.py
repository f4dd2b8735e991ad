"""Per-source cleaning on the real corpus (Wikipedia, Botchan, the arXiv tarball) and on small cases."""

from __future__ import annotations

import re

import pytest

from jamdata.text.clean import (
    CleanOptions,
    clean_arxiv,
    clean_records,
    clean_wikitext,
    expand_macros,
    find_macros,
    frequent_lines,
    remove_lines,
    strip_gutenberg,
    strip_tex_comments,
)
from jamdata.text.normalize import normalize_text
from jamdata.text.readers import is_reject, make_doc, read_file


@pytest.fixture(scope="module")
def wiki_pages(corpus):
    return {
        d["metadata"]["title"]: d
        for d in read_file(str(corpus / "wikipedia/enwiki-pages-articles-shortened.xml.bz2"), "wiki_xml", "wikipedia")
        if not is_reject(d)
    }


@pytest.mark.parametrize("title", ["Anarchism", "Algeria", "Albedo"])
def test_wikipedia_article_is_plain_text(wiki_pages, title):
    raw = wiki_pages[title]["text"]
    assert "[[" in raw and "{{" in raw and "<ref" in raw
    text = clean_wikitext(raw)
    for markup in ("[[", "]]", "{{", "}}", "<ref", "</ref>", "'''", "<!--", "Category:", "thumb|", "{|"):
        assert markup not in text, markup
    assert len(text) > 5000


def test_wikipedia_links_keep_labels_and_headings_stay(wiki_pages):
    text = clean_wikitext(wiki_pages["Anarchism"]["text"])
    assert text.startswith("Anarchism is a political philosophy that advocates self-governed societies")
    assert "\nEtymology and terminology\n" in text  # a heading, as its own line
    assert "\nReferences\n" not in text and "\nExternal links\n" not in text


def test_wikitext_details():
    src = (
        "{{Infobox|a=1}}'''Foo''' is a [[bar|baz]] near [[Qux]].<ref name=x>cite</ref><ref name=y/> "
        "It has [[File:a.png|thumb|a [[nested]] caption]] <!-- hidden --> [http://e.com an external] link.\n"
        "{| class=wikitable\n| cell\n|}\n== See also ==\n* [[Other]]\n[[Category:Things]]\n[[de:Foo]]"
    )
    assert clean_wikitext(src) == "Foo is a baz near Qux. It has an external link."


def test_gutenberg_licence_is_gone_from_botchan(corpus):
    (doc,) = read_file(str(corpus / "books/botchan_pg8868.txt"), "text", "books")
    (clean,) = clean_records([doc], "text")
    text = clean["text"]
    assert "Gutenberg" not in text and "LICENSE" not in text.upper() and "Produced by" not in text
    assert text.startswith("BOTCHAN (MASTER DARLING)")
    assert "So Kiyo's grave is in the Yogen temple at Kobinata." in text
    assert "\r" not in text and "\ufeff" not in text


def test_strip_gutenberg_leaves_other_books_alone():
    assert strip_gutenberg("Chapter 1\nIt was a dark night.") == "Chapter 1\nIt was a dark night."


@pytest.fixture(scope="module")
def arxiv_clean(corpus):
    (doc,) = read_file(str(corpus / "arxiv/1911.02782.tar.gz"), "arxiv", "arxiv")
    return clean_arxiv(doc["text"])


def test_arxiv_starts_at_first_section_without_bibliography(arxiv_clean):
    assert arxiv_clean.startswith("\\section{Introduction}")
    assert "\\documentclass" not in arxiv_clean and "\\begin{abstract}" not in arxiv_clean
    assert "\\bibliography" not in arxiv_clean and "thebibliography" not in arxiv_clean
    assert "\\end{document}" not in arxiv_clean
    assert "\\section{Conclusion}" in arxiv_clean


def test_arxiv_comments_stripped_and_macros_expanded(arxiv_clean):
    assert not re.search(r"(?<!\\)%", arxiv_clean)  # only escaped \% remain
    assert "\\%" in arxiv_clean  # percentages in the tables survive
    assert "\\gorc" not in arxiv_clean and "\\textsc{S2ORC}" in arxiv_clean  # \newcommand{\gorc}{\textsc{S2ORC}\xspace}
    assert "\\latex" not in arxiv_clean and "\\textsc{LaTeX}" in arxiv_clean
    assert "\\xspace" not in arxiv_clean


def test_macros_with_arguments_and_def():
    tex = (
        "\\newcommand{\\norm}[1]{\\lVert #1 \\rVert}\n\\newcommand\\pair[2]{(#1, #2)}\n\\def\\eps{\\varepsilon}\n"
        "\\def\\sq#1{#1^2}\n\\newcommand{\\opt}[2][x]{#1#2}\n"
    )
    macros = find_macros(tex)
    assert macros["\\norm"] == (1, "\\lVert #1 \\rVert") and macros["\\pair"] == (2, "(#1, #2)")
    assert macros["\\eps"] == (0, "\\varepsilon") and macros["\\sq"] == (1, "#1^2") and "\\opt" not in macros
    out = expand_macros("$\\norm{\\eps} = \\pair{a}{\\sq{b}}$ and \\epsilon stays", macros)
    assert out == "$\\lVert \\varepsilon \\rVert = (a, b^2)$ and \\epsilon stays"


def test_tex_comments():
    tex = "a % note\n% whole line\nb \\% kept\nc \\\\% cut\n\\begin{comment}x\\end{comment}d"
    assert strip_tex_comments(tex) == "a \nb \\% kept\nc \\\\\nd"


def test_arxiv_without_section_is_rejected():
    doc = make_doc("arxiv", "x.gz", 0, "\\documentclass{article}\\begin{document}Hello\\end{document}")
    (rej,) = clean_records([doc], "arxiv")
    assert rej["stage"] == "clean" and "no \\section" in rej["reason"]


def test_ccnet_line_dedup_removes_lines_frequent_in_the_shard():
    nav, foot = "Home | About | Contact", "Copyright 2024 Example Media. All rights reserved."
    bodies = [
        "Tide pools appear twice a day.",
        "Chess rewards patience.",
        "Rain barrels need lids.",
        "Bread needs time.",
    ]
    docs = [
        make_doc(
            "commoncrawl", "f.wet", i, f"{nav}\n{b}\nShared by two pages only.\n{foot.replace('2024', str(2020 + i))}"
        )
        for i, b in enumerate(bodies)
    ]
    docs[0]["text"] = docs[0]["text"].replace("Shared by two pages only.", "")
    docs[3]["text"] = docs[3]["text"].replace("Shared by two pages only.", "")
    cleaned = list(clean_records(docs, "wet", CleanOptions(line_dedup_min_docs=3)))
    assert [d["text"] for d in cleaned] == [
        "Tide pools appear twice a day.",
        "Chess rewards patience.\nShared by two pages only.",
        "Rain barrels need lids.\nShared by two pages only.",
        "Bread needs time.",
    ]
    assert cleaned[0]["metadata"]["boilerplate_lines_removed"] == 2  # digits normalised: one line


def test_ccnet_only_boilerplate_becomes_reject():
    docs = [make_doc("commoncrawl", "f.wet", i, "Menu\nLogin") for i in range(3)]
    out = list(clean_records(docs, "wet"))
    assert [r["reason"] for r in out] == ["only boilerplate lines"] * 3


def test_frequent_lines_counts_documents_not_occurrences():
    boiler = frequent_lines(["a\na\na", "b"], min_docs=2)
    assert remove_lines("a\nb", boiler) == ("a\nb", 0)


def test_normalize_text():
    assert normalize_text("Cafe\u0301  au\tlait\r\n\r\n\r\n\r\nnext\u200b line  ") == "Caf\u00e9 au lait\n\nnext line"
    assert normalize_text("The cafÃ© served crÃ¨me brÃ»lÃ©e.") == "The café served crème brûlée."
    plain = "Plain text stays exactly as it is."
    assert normalize_text(plain) == plain


def test_empty_after_cleaning_is_a_clean_reject():
    doc = make_doc("wikipedia", "w.xml", 1, "{{Infobox only}}")
    (rej,) = clean_records([doc], "wiki_xml")
    assert rej["stage"] == "clean" and rej["reason"] == "empty after cleaning" and rej["id"] == doc["id"]


def test_arxiv_preamble_sections_and_layout_redefinitions():
    tex = (
        "\\documentclass{article}\\renewcommand{\\section}{\\oldsection}\\newcommand{\\ours}{OURS}\n"
        "\\newcommand{\\mysec}{\\section{X}}\\begin{document}\\maketitle\n\\section{Real} We use \\ours.\n"
        "\\bibliographystyle{plain}\\bibliography{refs}\n\\end{document}\ntrailing junk"
    )
    assert clean_arxiv(tex) == "\\section{Real} We use OURS."
