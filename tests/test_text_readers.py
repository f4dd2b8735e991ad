"""Readers on the real corpus files and on files written here for formats and failures it lacks."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from jamdata.text.readers import ReadOptions, decode_html, find_main_tex, is_reject, read_file, resolve_inputs
from schemas.records import DOCUMENT, REJECT, document_row, validate_record


def split(records):
    records = list(records)
    for r in records:
        validate_record(*((r, REJECT) if is_reject(r) else (document_row(r), DOCUMENT)))
    return [r for r in records if not is_reject(r)], [r for r in records if is_reject(r)]


def meta(doc):
    return doc["metadata"]


PROSE = (
    "The harbour was quiet in the early morning, and the fishing boats rocked gently at their moorings "
    "while gulls argued over scraps on the stone quay. "
) * 3


# -- the real corpus ---------------------------------------------------------------------------------
def test_warc_html_responses_with_charsets(corpus):
    docs, rejects = split(read_file(str(corpus / "commoncrawl/CC-MAIN-2020-34-sample.warc.gz"), "warc", "commoncrawl"))
    assert len(docs) == 16 and not rejects  # 16 responses; requests and metadata records are not documents
    by_url = {d["url"]: d for d in docs}
    ru = by_url["http://01spb.ru/company/"]
    assert meta(ru)["charset"] == "cp1251" and "О компании" in ru["text"]
    gb = by_url["http://096355.com/video/11073.html?11073-0-2"]  # declares gb2312, needs its superset
    assert meta(gb)["charset"] == "gb18030" and "请将" in gb["text"] and "Ã" not in gb["text"]
    assert len({d["id"] for d in docs}) == 16 and all(d["id"].startswith("commoncrawl/") for d in docs)
    assert all("<" not in d["text"][:50] for d in docs)  # extracted text, not markup


def test_wet_and_warc_of_the_same_page(corpus):
    wet, _ = split(read_file(str(corpus / "commoncrawl/CC-MAIN-2024-22-whirlwind.warc.wet.gz"), "wet", "commoncrawl"))
    warc, _ = split(read_file(str(corpus / "commoncrawl/CC-MAIN-2024-22-whirlwind.warc.gz"), "warc", "commoncrawl"))
    assert len(wet) == len(warc) == 1
    assert wet[0]["url"] == warc[0]["url"] == "https://an.wikipedia.org/wiki/Escopete"
    assert "Escopete ye un municipio" in wet[0]["text"] and "Escopete ye un municipio" in warc[0]["text"]
    assert meta(wet[0])["languages"] == "spa"
    # the extractor drops the navigation that the WET conversion keeps
    assert "Menú principal" in wet[0]["text"] and "Menú principal" not in warc[0]["text"]


def test_c4_json_gz(corpus):
    docs, rejects = split(read_file(str(corpus / "c4/c4-sample.01.json.gz"), "c4", "c4"))
    assert len(docs) == 10 and not rejects
    assert docs[0]["text"].startswith("The woman who died after falling from a bridge over the A21")
    assert (
        docs[0]["url"].startswith("https://www.kentlive.news/") and meta(docs[0])["timestamp"] == "2019-04-21T18:54:04Z"
    )


def test_wikipedia_xml_dump(corpus):
    docs, rejects = split(
        read_file(str(corpus / "wikipedia/enwiki-pages-articles-shortened.xml.bz2"), "wiki_xml", "wikipedia")
    )
    assert len(docs) == 106 and len(rejects) == 100
    assert {r["reason"] for r in rejects} == {"wikipedia redirect"}
    assert all(r["file"].endswith(".xml.bz2") and r["offset"] > 0 for r in rejects)
    titles = [meta(d)["title"] for d in docs]
    assert titles[0] == "Anarchism" and docs[0]["url"] == "https://en.wikipedia.org/wiki/Anarchism"
    assert "[[" in docs[0]["text"]  # raw wikitext here; cleaning is tested in test_text_clean


def test_gutenberg_book_and_arxiv_tarball(corpus):
    docs, _ = split(read_file(str(corpus / "books/botchan_pg8868.txt"), "text", "books"))
    assert len(docs) == 1 and not docs[0]["text"].startswith("\ufeff") and meta(docs[0])["title"] == "botchan_pg8868"
    docs, _ = split(read_file(str(corpus / "arxiv/1911.02782.tar.gz"), "arxiv", "arxiv"))
    assert len(docs) == 1 and meta(docs[0])["main_file"] == "main.tex" and meta(docs[0])["arxiv_id"] == "1911.02782"
    assert "\\documentclass" in docs[0]["text"] and "\\section{Introduction}" in docs[0]["text"]


# -- formats the corpus lacks --------------------------------------------------------------------------
def test_pile_jsonl_zst_keeps_books3_only(tmp_path):
    rows = [
        {"text": PROSE, "meta": {"pile_set_name": "Books3"}},
        {"text": "not a book", "meta": {"pile_set_name": "Pile-CC"}},
        {"text": PROSE + " The end.", "meta": {"pile_set_name": "Books3"}},
    ]
    path = tmp_path / "00.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    docs, rejects = split(read_file(str(path), "pile", "books"))
    assert [d["text"] for d in docs] == [PROSE, PROSE + " The end."] and not rejects
    assert meta(docs[0])["pile_set_name"] == "Books3"
    docs, _ = split(read_file(str(path), "pile", "books", ReadOptions(pile_set_names=("Pile-CC",))))
    assert [d["text"] for d in docs] == ["not a book"]


def test_wikipedia_parquet_export(tmp_path):
    path = tmp_path / "wiki.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["7", "8"],
                "url": ["https://en.wikipedia.org/wiki/A", "https://en.wikipedia.org/wiki/B"],
                "title": ["A", "B"],
                "text": ["'''A''' is a [[letter|letter]].", "B is plain text."],
            }
        ),
        path,
    )
    docs, rejects = split(read_file(str(path), "wiki_parquet", "wikipedia"))
    assert [meta(d)["title"] for d in docs] == ["A", "B"] and docs[1]["text"] == "B is plain text." and not rejects
    assert docs[0]["url"].endswith("/A")


def test_single_gzipped_tex_and_redpajama_jsonl(tmp_path):
    tex = "\\documentclass{article}\\begin{document}\\section{Intro}Hello.\\end{document}"
    (tmp_path / "2101.00001.gz").write_bytes(gzip.compress(tex.encode()))
    docs, _ = split(read_file(str(tmp_path / "2101.00001.gz"), "arxiv", "arxiv"))
    assert docs[0]["text"] == tex and meta(docs[0])["arxiv_id"] == "2101.00001"
    assert docs[0]["url"] == "https://arxiv.org/abs/2101.00001"
    rp = {
        "text": "\\section{Intro} Hello.",
        "meta": {"arxiv_id": "2101.00002", "url": "https://arxiv.org/abs/2101.00002", "timestamp": "2021-01-01"},
    }
    (tmp_path / "arxiv.jsonl").write_text(json.dumps(rp) + "\n")
    docs, _ = split(read_file(str(tmp_path / "arxiv.jsonl"), "arxiv_jsonl", "arxiv"))
    assert docs[0]["url"] == rp["meta"]["url"] and meta(docs[0])["timestamp"] == "2021-01-01"


def test_main_tex_and_inputs():
    files = {
        "sty.tex": "\\ProvidesPackage{x}",
        "paper/main.tex": "\\documentclass{article}\n\\begin{document}\n"
        "\\input{paper/sec/a}\n% \\input{paper/sec/b}\n\\include{paper/sec/b}\n\\end{document}",
        "paper/sec/a.tex": "A text \\input{paper/sec/a}",
        "paper/sec/b.tex": "B text",
    }
    assert find_main_tex(files) == "paper/main.tex"
    out = resolve_inputs(files, "paper/main.tex")
    assert "A text" in out and "B text" in out and "% \\input{paper/sec/b}" in out  # cycle cut, comment kept


def test_plain_text_folder(tmp_path):
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_text(PROSE)
    docs, _ = split(read_file(str(tmp_path / "books" / "a.txt"), "text", "books"))
    assert docs[0]["text"] == PROSE and meta(docs[0])["title"] == "a"


# -- bad input -----------------------------------------------------------------------------------------
def _lines(n):
    return b"".join(json.dumps({"text": f"{PROSE} number {i}", "url": f"u{i}"}).encode() + b"\n" for i in range(n))


@pytest.mark.parametrize("kind", ["gzip", "bz2", "zstd"])
def test_truncated_compressed_files_keep_what_was_read(tmp_path, kind):
    data = _lines(400)
    comp = {
        "gzip": lambda d: gzip.compress(d),
        "bz2": lambda d: bz2.compress(d, 1),
        "zstd": lambda d: b"".join(
            zstandard.ZstdCompressor().compress(d[i : i + 20000])  # multi-frame
            for i in range(0, len(d), 20000)
        ),
    }[kind](data)
    path = tmp_path / f"c4.json.{kind}"
    path.write_bytes(comp[: len(comp) * 2 // 3])
    docs, rejects = split(read_file(str(path), "c4", "c4"))
    assert (
        len(rejects) == 1 and "unreadable from here on" in rejects[0]["reason"] and "EOFError" in rejects[0]["reason"]
    )
    assert rejects[0]["file"] == str(path) and rejects[0]["offset"] > 0
    assert 0 < len(docs) < 400 and docs[0]["url"] == "u0"


def test_truncated_wiki_bz2(tmp_path, sample_data):
    raw = (sample_data / "text/wikipedia/enwiki-sample-pages-articles.xml.bz2").read_bytes()
    path = tmp_path / "cut.xml.bz2"
    path.write_bytes(raw[: len(raw) - 200])
    docs, rejects = split(read_file(str(path), "wiki_xml", "wikipedia"))
    assert any("unreadable from here on" in r["reason"] for r in rejects)


def test_bad_lines_become_rejects_and_reading_goes_on(tmp_path):
    good = json.dumps({"text": PROSE}).encode() + b"\n"
    lines = [
        good,
        b'{"text": "broken\n',
        b'{"text": "caf\xe9 au lait"}\n',
        b'{"text": "   "}\n',
        b"[1, 2]\n",
        b'{"txt": "no text"}\n',
        good,
    ]
    path = tmp_path / "mixed.json.gz"
    path.write_bytes(gzip.compress(b"".join(lines)))
    docs, rejects = split(read_file(str(path), "c4", "c4"))
    assert len(docs) == 2
    reasons = [r["reason"] for r in rejects]
    assert reasons[0].startswith("malformed JSON") and rejects[0]["offset"] == len(good)
    assert reasons[1] == "invalid UTF-8 (byte 0xe9)" and rejects[1]["offset"] == len(b"".join(lines[:2])) + len(
        b'{"text": "caf'
    )
    assert reasons[2] == "empty document"
    assert reasons[3] == "JSON line is not an object" and reasons[4] == "no string 'text' field"
    assert all(r["file"] == str(path) and r["stage"] == "read" for r in rejects)


def test_a_50mb_line_is_rejected_in_bounded_memory(tmp_path):
    path = tmp_path / "huge.json.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(b'{"text": "' + b"word " * (10 << 20) + b'"}\n')
        f.write(json.dumps({"text": PROSE}).encode() + b"\n")
    docs, rejects = split(read_file(str(path), "c4", "c4"))
    assert [d["text"] for d in docs] == [PROSE]
    assert rejects[0]["reason"] == f"record longer than {16 << 20} bytes" and rejects[0]["offset"] == 0


def test_tar_without_tex_and_binary_file(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("figure.png")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"\x89PNG"))
    (tmp_path / "1.tar.gz").write_bytes(gzip.compress(buf.getvalue()))
    _, rejects = split(read_file(str(tmp_path / "1.tar.gz"), "arxiv", "arxiv"))
    assert rejects[0]["reason"] == "archive has no .tex file" and rejects[0]["file"].endswith("1.tar.gz")
    (tmp_path / "2.gz").write_bytes(gzip.compress(b"%PDF-1.4\x00\x01binary"))
    _, rejects = split(read_file(str(tmp_path / "2.gz"), "arxiv", "arxiv"))
    assert "binary content" in rejects[0]["reason"]


def _warc(path, payload: bytes, ctype: str):
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        http = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
        w.write_record(
            w.create_warc_record("http://x.example/", "response", payload=io.BytesIO(payload), http_headers=http)
        )


@pytest.mark.parametrize("declared,encoding", [("utf-8", "cp1252"), ("iso-8859-1", "utf-8"), ("x-unknown", "cp1252")])
def test_warc_lying_charset(tmp_path, declared, encoding):
    html = f"<html><body><article><h1>Cafés</h1>{'<p>' + PROSE + ' The café served crème brûlée.</p>' * 3}</article></body></html>"
    _warc(tmp_path / "x.warc.gz", html.encode(encoding), f"text/html; charset={declared}")
    docs, rejects = split(read_file(str(tmp_path / "x.warc.gz"), "warc", "commoncrawl"))
    assert not rejects and "The café served crème brûlée." in docs[0]["text"]


def test_decode_html_prefers_meta_when_http_is_silent():
    payload = '<meta charset="windows-1251"><p>Привет</p>'.encode("cp1251")
    text, used = decode_html(payload, "text/html")
    assert used == "cp1251" and "Привет" in text


def test_unknown_format_is_an_error():
    with pytest.raises(ValueError, match="unknown text format 'pdf'"):
        list(read_file("x", "pdf", "c4"))


def test_missing_file_is_a_reject_naming_it(tmp_path):
    _, rejects = split(read_file(str(tmp_path / "nope.json.gz"), "c4", "c4"))
    assert "FileNotFoundError" in rejects[0]["reason"] and rejects[0]["file"].endswith("nope.json.gz")


def test_compression_is_sniffed_not_taken_from_the_name(tmp_path):
    path = tmp_path / "c4-part.json"  # gzip content, no .gz
    path.write_bytes(gzip.compress(json.dumps({"text": PROSE, "url": "u"}).encode() + b"\n"))
    docs, rejects = split(read_file(str(path), "c4", "c4"))
    assert [d["text"] for d in docs] == [PROSE] and not rejects


def test_arxiv_bulk_tar_of_gzipped_papers(tmp_path):
    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as t:
        add(t, "ms.tex", b"\\documentclass{article}\\begin{document}\\section{A}Paper one.\\end{document}")
    bulk = io.BytesIO()
    with tarfile.open(fileobj=bulk, mode="w") as t:
        add(t, "2101/2101.00001.gz", gzip.compress(inner.getvalue()))
        add(t, "2101/2101.00002.gz", gzip.compress(b"\\documentclass{article}\\section{B}Paper two."))
        add(t, "2101/2101.00003.gz", gzip.compress(b"%PDF-1.5 only a pdf"))
    (tmp_path / "arXiv_src_2101_001.tar").write_bytes(bulk.getvalue())
    docs, rejects = split(read_file(str(tmp_path / "arXiv_src_2101_001.tar"), "arxiv", "arxiv"))
    assert [(meta(d)["arxiv_id"], meta(d)["member"]) for d in docs] == [
        ("2101.00001", "2101/2101.00001.gz"),
        ("2101.00002", "2101/2101.00002.gz"),
    ]
    assert "Paper one." in docs[0]["text"] and "Paper two." in docs[1]["text"]
    assert len(rejects) == 1 and rejects[0]["reason"].startswith("2101/2101.00003.gz: not a tar archive")


def test_fsspec_paths(tmp_path):
    import fsspec

    from jamdata.io import expand_inputs

    fs = fsspec.filesystem("memory")
    with fs.open("/jamtest/c4/part-0.json.gz", "wb") as f:
        f.write(gzip.compress(json.dumps({"text": PROSE, "url": "u"}).encode() + b"\n"))
    (path,) = expand_inputs("memory://jamtest/c4/")
    docs, _ = split(read_file(path, "c4", "c4"))
    assert path.startswith("memory://") and [d["text"] for d in docs] == [PROSE] and meta(docs[0])["file"] == path
