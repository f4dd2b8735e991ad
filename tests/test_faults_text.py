"""Per-record isolation in the text readers: a fault matrix.

Each case writes one file in a real raw format (C4 json.gz, Pile jsonl.zst, RedPajama jsonl, WARC /
WET, Wikipedia XML (.bz2), Wikipedia parquet, arXiv tar.gz, a book) with one bad record planted
among good ones, reads it with `read_file`, and checks that the bad record is one reject with the
expected reason AND that every good record of the same file is still a document (counted). A
damaged compressed stream keeps exactly the records that decompress before the damage (counted
independently with the plain decompressor) and adds one reject at the damage's offset.

A few cases go through the real text-clean pipeline (lone surrogates, HTTP statuses, expansion
bombs) and the configuration (`paths: []`).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
import zstandard

from jamdata.text.clean import clean_records
from jamdata.text.readers import ReadOptions, is_reject, read_file
from schemas.records import DOCUMENT, REJECT, document_row, validate_record
from tests.test_reliability import tar_bytes

PROSE = (
    "The harbour was quiet in the early morning, and the fishing boats rocked gently at their moorings "
    "while gulls argued over scraps on the stone quay. "
)


def split(records):
    records = list(records)
    for r in records:
        validate_record(*((r, REJECT) if is_reject(r) else (document_row(r), DOCUMENT)))
        for v in (
            r.get("text"),
            r.get("url"),
            json.dumps(r.get("metadata"), ensure_ascii=False),
            r.get("snippet"),
            r.get("reason"),
            r["id"],
        ):
            if isinstance(v, str):
                v.encode("utf-8")  # every string must be writable as UTF-8 (parquet)
    return [r for r in records if not is_reject(r)], [r for r in records if is_reject(r)]


def meta(doc):
    assert isinstance(doc["metadata"], dict)  # a dict until written
    return doc["metadata"]


def good_text(i: int) -> str:
    return f"{PROSE}Good record number {i}."


# -- raw-format builders -------------------------------------------------------------------------
def jsonl(objs) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def c4_lines(n: int, start: int = 0) -> list[bytes]:
    return [
        json.dumps(
            {"text": good_text(i), "url": f"https://c4.example/{i}", "timestamp": "2019-04-21T18:54:04Z"}
        ).encode()
        + b"\n"
        for i in range(start, start + n)
    ]


def pile_lines(n: int) -> list[bytes]:
    return [json.dumps({"text": good_text(i), "meta": {"pile_set_name": "Books3"}}).encode() + b"\n" for i in range(n)]


def plant(lines: list[bytes], bad: bytes, at: int = 2) -> bytes:
    return b"".join(lines[:at] + [bad] + lines[at:])


def html_page(i: int) -> bytes:
    return (
        f"<html><head><title>Page {i}</title></head><body><article><h1>Page {i}</h1>"
        f"<p>{PROSE}</p><p>Good record number {i}. {PROSE}</p></article></body></html>"
    ).encode()


def http_block(
    body: bytes, status: bytes = b"200 OK", ctype: bytes = b"text/html; charset=utf-8", extra: bytes = b""
) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: "
        + ctype
        + b"\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def warc_record(
    i: int, rtype: bytes, block: bytes, length: int | None = None, ctype: bytes | None = None, uri: bytes | None = None
) -> bytes:
    """One WARC/1.0 record; `length` overrides the true Content-Length (a damaged header)."""
    ctype = ctype or {
        b"response": b"application/http; msgtype=response",
        b"request": b"application/http; msgtype=request",
        b"conversion": b"text/plain",
    }.get(rtype, b"application/warc-fields")
    uri = uri or b"https://www.example.org/page/%d" % i
    head = (
        b"WARC/1.0\r\nWARC-Type: "
        + rtype
        + b"\r\nWARC-Target-URI: "
        + uri
        + b"\r\nWARC-Date: 2024-05-20T10:00:00Z\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-%012d>\r\n" % i
        + b"Content-Type: "
        + ctype
        + b"\r\nContent-Length: %d\r\n\r\n" % (len(block) if length is None else length)
    )
    return head + block + b"\r\n\r\n"


def response(i: int, **kw) -> bytes:
    return warc_record(i, b"response", http_block(html_page(i)), **kw)


def conversion(i: int, **kw) -> bytes:
    return warc_record(i, b"conversion", good_text(i).encode(), **kw)


def warc_gz(records: list[bytes]) -> bytes:
    """Per-record gzip members, as Common Crawl writes them."""
    return b"".join(gzip.compress(r, mtime=0) for r in records)


def paper_tex(i: int, body: str = "") -> bytes:
    return (
        f"\\documentclass{{article}}\n\\begin{{document}}\n\\section{{Intro}}\nPaper {i}. {PROSE}\n{body}"
        f"\\end{{document}}\n"
    ).encode()


def paper_gz(i: int) -> bytes:
    return gzip.compress(tar_bytes([("main.tex", paper_tex(i))]), mtime=0)


def fanout_bomb(levels: int = 7, fan: int = 12) -> bytes:
    """A tar.gz of a few hundred bytes: main.tex inputs l1 `fan` times, l1 inputs l2 `fan` times...
    Fully inlined it is fan**levels copies of the last file (12**7 * 50 bytes, about 1.8 GB)."""
    files = [
        (
            "main.tex",
            (
                "\\documentclass{article}\\begin{document}\\section{A}" + "\\input{l1}" * fan + "\\end{document}"
            ).encode(),
        )
    ]
    for k in range(1, levels):
        files.append((f"l{k}.tex", (f"\\input{{l{k + 1}}}" * fan).encode()))
    files.append((f"l{levels}.tex", b"All work and no play makes a dull paper. " * 1))
    return gzip.compress(tar_bytes(files), mtime=9)


def recoverable_prefix(kind: str, data: bytes) -> bytes:
    """What the plain decompressor gets out of damaged `data` before it fails."""
    if kind == "gzip":  # fed in small pieces, so that little is lost in the call that fails
        out, d = [], zlib.decompressobj(31)
        for i in range(0, len(data), 64):
            try:
                out.append(d.decompress(data[i : i + 64]))
            except zlib.error:
                break
        return b"".join(out)
    if kind == "bz2":
        out, rest = [], data
        while rest:
            d = bz2.BZ2Decompressor()
            try:
                out.append(d.decompress(rest))
            except (OSError, EOFError):
                break
            rest = d.unused_data
        return b"".join(out)
    if kind == "zstd":
        out, rest = [], data
        while rest:
            d = zstandard.ZstdDecompressor().decompressobj()
            out.append(d.decompress(rest))
            rest = d.unused_data
        return b"".join(out)
    raise ValueError(kind)


# -- the matrix ----------------------------------------------------------------------------------
@dataclass
class Case:
    path: Path
    fmt: str
    good: int | None  # documents the file must still give (None: the check decides)
    reason: str | None  # words every reject's reason must contain (None: no reject at all)
    rejects: int | None = 1  # None: at least one
    opts: ReadOptions = field(default_factory=ReadOptions)
    check: Callable[[list[dict], list[dict]], None] | None = None  # extra assertions on (docs, rejects)
    offset: int | None = None  # the (last) reject's offset, where it is known exactly


def _c4_file(tmp: Path, bad: bytes, n: int = 6, name: str = "c4.json.gz") -> Path:
    path = tmp / name
    path.write_bytes(gzip.compress(plant(c4_lines(n), bad), mtime=0))
    return path


def case_c4_deep_array(tmp):
    return Case(_c4_file(tmp, b"[" * 100_000 + b"\n"), "c4", 6, "malformed JSON")


def case_c4_deep_object(tmp):
    return Case(
        _c4_file(tmp, b'{"text": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001 + b"\n"), "c4", 6, "malformed JSON"
    )


def case_pile_deep_nesting(tmp):
    path = tmp / "00.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(plant(pile_lines(5), b"[" * 200_000 + b"\n")))
    return Case(path, "pile", 5, "malformed JSON")


def case_arxiv_jsonl_deep_nesting(tmp):
    lines = [
        json.dumps({"text": f"\\section{{A}} {good_text(i)}", "meta": {"arxiv_id": f"2101.{i:05d}"}}).encode() + b"\n"
        for i in range(4)
    ]
    path = tmp / "arxiv.jsonl"
    path.write_bytes(plant(lines, b'{"meta": ' + b"[" * 100_000 + b"\n"))
    return Case(path, "arxiv_jsonl", 4, "malformed JSON")


def case_c4_huge_integer(tmp):
    return Case(_c4_file(tmp, b'{"text": "x", "n": 1' + b"0" * 5000 + b"}\n"), "c4", 6, "malformed JSON")


def _surrogates_replaced(docs, rejects):
    (odd,) = [d for d in docs if meta(d).get("lone_surrogates_replaced")]
    assert "\ufffd" in odd["text"] + (odd["url"] or "") + document_row(odd)["metadata"]


def case_c4_lone_surrogate_text(tmp):
    bad = b'{"text": "' + good_text(99).encode() + b' half an emoji: \\ud83d here", "url": "https://c4.example/s"}\n'
    return Case(_c4_file(tmp, bad), "c4", 7, None, rejects=0, check=_surrogates_replaced)


def case_c4_lone_surrogate_id_url(tmp):
    bad = (
        b'{"id": "doc-\\udc80", "text": "'
        + good_text(98).encode()
        + b'", "url": "https://c4.example/\\udfff", "source": "\\ud800"}\n'
    )
    return Case(_c4_file(tmp, bad), "c4", 7, None, rejects=0, check=_surrogates_replaced)


def case_pile_lone_surrogate(tmp):
    bad = (
        b'{"text": "' + good_text(97).encode() + b'\\udbff", "meta": {"pile_set_name": "Books3", "title": "\\ud800"}}\n'
    )
    path = tmp / "01.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(plant(pile_lines(5), bad)))
    return Case(path, "pile", 6, None, rejects=0, check=_surrogates_replaced)


def case_c4_invalid_utf8(tmp):
    return Case(_c4_file(tmp, b'{"text": "caf\xe9 au lait"}\n'), "c4", 6, "invalid UTF-8")


def case_pile_text_not_a_string(tmp):
    bad = json.dumps({"text": ["a", "list"], "meta": {"pile_set_name": "Books3"}}).encode() + b"\n"
    path = tmp / "02.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(plant(pile_lines(5), bad)))
    return Case(path, "pile", 5, "no string 'text' field")


def case_c4_url_not_a_string(tmp):
    bad = json.dumps({"text": good_text(96), "url": {"href": "https://c4.example/x"}}).encode() + b"\n"

    def check(docs, rejects):
        assert all(d["url"] is None or isinstance(d["url"], str) for d in docs)

    return Case(_c4_file(tmp, bad), "c4", 7, None, rejects=0, check=check)


def _damaged_jsonl(tmp: Path, kind: str, how: str) -> Case:
    # lines with a random part, so that the stream has many compressed blocks (bz2) and frames (zstd)
    lines = [line[:-2] + b', "h": "%s"}\n' % hashlib.sha256(line).hexdigest().encode() for line in c4_lines(1200)]
    data = b"".join(lines)
    comp = {
        "gzip": lambda d: gzip.compress(d, mtime=0),
        "bz2": lambda d: bz2.compress(d, 1),
        "zstd": lambda d: b"".join(
            zstandard.ZstdCompressor().compress(d[i : i + 20000]) for i in range(0, len(d), 20000)
        ),
    }[kind](data)
    if how == "truncated":
        comp = comp[: len(comp) * 2 // 3]
    else:  # a run of garbage in the middle of the compressed stream
        mid = len(comp) // 2
        comp = comp[:mid] + b"\xa5" * 64 + comp[mid + 64 :]
    path = tmp / f"{how}.json.{kind}"
    path.write_bytes(comp)
    prefix = recoverable_prefix(kind, comp)
    complete = next(i for i, line in enumerate(lines + [None]) if not prefix.startswith(b"".join(lines[: i + 1])))
    assert 0 < complete < 1200
    if how == "truncated":
        return Case(
            path,
            "c4",
            complete,
            "unreadable from here on",
            offset=len(prefix),
            check=lambda docs, _: _first_urls(docs, len(docs)),
        )

    # A corrupt deflate stream decodes to garbage for a while (the lines hit are rejects of their
    # own) and may go on decoding later blocks; the checksum at its end fails. Every record before
    # the damage is kept (less the block being decoded if the decoder stops there, at most 8 KiB).
    lost = prefix[: len(b"".join(lines[:complete]))][-8192:].count(b"\n") + 1

    def check(docs, rejects):
        assert len(docs) >= complete - lost
        _first_urls(docs[: complete - lost], complete - lost)
        assert "unreadable from here on" in rejects[-1]["reason"]
        assert all(r["reason"].startswith(("malformed JSON", "invalid UTF-8")) for r in rejects[:-1])

    return Case(path, "c4", None, "", rejects=None, check=check)


def _first_urls(docs, n):
    assert [d["url"] for d in docs] == [f"https://c4.example/{i}" for i in range(n)]


def case_c4_truncated_gzip(tmp):
    return _damaged_jsonl(tmp, "gzip", "truncated")


def case_c4_corrupt_gzip(tmp):
    return _damaged_jsonl(tmp, "gzip", "corrupt")


def case_c4_truncated_bz2(tmp):
    return _damaged_jsonl(tmp, "bz2", "truncated")


def case_pile_truncated_zstd(tmp):
    return _damaged_jsonl(tmp, "zstd", "truncated")


def _warc_file(tmp: Path, records: list[bytes], name: str = "cc.warc.gz") -> Path:
    path = tmp / name
    path.write_bytes(warc_gz(records) if name.endswith(".gz") else b"".join(records))
    return path


def _pages(n_good: int):
    def check(docs, rejects):
        got = sorted(int(d["url"].rsplit("/", 1)[1]) for d in docs)
        assert got == [i for i in range(n_good + 1) if i != 2][:n_good], got

    return check


def case_warc_content_length_too_large(tmp):
    recs = [response(i) for i in range(6)]
    recs[2] = response(2, length=len(http_block(html_page(2))) + 300)  # swallows the start of record 3
    return Case(_warc_file(tmp, recs), "warc", 5, "bad_warc_record", check=_pages(5))


def case_warc_content_length_too_small(tmp):
    recs = [response(i) for i in range(6)]
    recs[2] = response(2, length=len(http_block(html_page(2))) - 120)  # leaves the end of its page behind
    return Case(_warc_file(tmp, recs), "warc", 5, "bad_warc_record", check=_pages(5))


def case_warc_content_length_past_eof(tmp):
    recs = [response(i) for i in range(6)]
    recs[2] = response(2, length=1_000_000)  # runs over every later record and past the end of the file
    return Case(_warc_file(tmp, recs, "cc.warc"), "warc", 5, "bad_warc_record", check=_pages(5))


def case_warc_content_length_not_a_number(tmp):
    recs = [response(i) for i in range(6)]
    recs[2] = recs[2].replace(
        b"Content-Length: %d\r\n\r\n" % len(http_block(html_page(2))), b"Content-Length: lots\r\n\r\n", 1
    )
    return Case(_warc_file(tmp, recs), "warc", 5, "bad_warc_record", check=_pages(5))


def case_warc_garbage_between_records(tmp):
    recs = [response(i) for i in range(6)]
    recs[2] = b"\x00\x17 this is not a WARC record at all \xff\xfe\r\n" * 20
    return Case(_warc_file(tmp, recs, "cc.warc"), "warc", 5, "bad_warc_record", check=_pages(5))


def case_warc_header_cut_short(tmp):
    recs = [response(i) for i in range(6)]
    recs[2] = recs[2][: recs[2].index(b"WARC-Date")]  # the record stops inside its header
    return Case(_warc_file(tmp, recs), "warc", 5, "bad_warc_record", check=_pages(5))


def case_warc_lax_separator(tmp):
    # a writer that ends records with one CRLF instead of two: not damage, nothing lost
    recs = [response(i)[:-2] for i in range(6)]
    return Case(_warc_file(tmp, recs), "warc", 6, None, rejects=0)


def case_warc_broken_content_encoding(tmp):
    recs = [response(i) for i in range(6)]
    recs[2] = warc_record(
        2, b"response", http_block(b"\x1f\x8b\x08\x00 not really gzip" * 20, extra=b"Content-Encoding: gzip\r\n")
    )
    # warcio falls back to the raw bytes, which hold no text
    return Case(_warc_file(tmp, recs), "warc", 5, "no main text in HTML", check=_pages(5))


def case_wiki_page_over_the_record_limit(tmp):
    pages = [wiki_page(i) for i in range(6)]
    pages[2] = wiki_page(2, text=b"x" * 300_000)
    path = tmp / "wiki.xml"
    path.write_bytes(_wiki_xml(pages))
    return Case(
        path, "wiki_xml", 5, "record longer than", opts=ReadOptions(max_record_bytes=100_000), check=_titles(5, bad=2)
    )


def _status_case(status: bytes):
    def build(tmp):
        recs = [response(i) for i in range(6)]
        recs[2] = warc_record(2, b"response", http_block(html_page(2), status=status))

        def check(docs, rejects):
            assert status.split()[0].decode() in rejects[0]["reason"]
            _pages(5)(docs, rejects)

        return Case(_warc_file(tmp, recs), "warc", 5, "http_status", check=check)

    return build


def case_warc_response_not_http(tmp):
    recs = [response(i) for i in range(6)]
    recs[2] = warc_record(2, b"response", b"this payload has no HTTP status line\r\n\r\n" + html_page(2))
    return Case(_warc_file(tmp, recs), "warc", 5, "bad_warc_record", check=_pages(5))


def case_warc_non_response_records_are_not_rejects(tmp):
    recs = []
    for i in range(5):
        recs += [
            warc_record(100 + i, b"request", b"GET /page/%d HTTP/1.1\r\nHost: www.example.org\r\n\r\n" % i),
            response(i),
            warc_record(200 + i, b"metadata", b"fetchTimeMs: 42\r\n"),
        ]
    recs.insert(4, warc_record(300, b"revisit", b""))
    return Case(_warc_file(tmp, recs), "warc", 5, None, rejects=0)


def case_wet_content_length_too_small(tmp):
    recs = [conversion(i) for i in range(6)]
    recs[2] = conversion(2, length=40)
    return Case(_warc_file(tmp, recs, "cc.warc.wet.gz"), "wet", 5, "bad_warc_record", check=_pages(5))


def case_wet_truncated_gzip(tmp):
    data = warc_gz([conversion(i) for i in range(6)])
    cut = data[: len(data) - 40]  # inside the last record's gzip member
    path = tmp / "cut.warc.wet.gz"
    path.write_bytes(cut)

    def check(docs, rejects):
        assert [d["url"] for d in docs] == [f"https://www.example.org/page/{i}" for i in range(5)]

    return Case(path, "wet", 5, "unreadable from here on", check=check)


def _wiki_xml(pages: list[bytes]) -> bytes:
    head = (
        b'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">\n  <siteinfo>\n'
        b"    <sitename>Wikipedia</sitename>\n    <base>https://en.wikipedia.org/wiki/Main_Page</base>\n"
        b"  </siteinfo>\n"
    )
    return head + b"".join(pages) + b"</mediawiki>\n"


def wiki_page(i: int, title: bytes | None = None, text: bytes | None = None) -> bytes:
    title = title or b"Article %d" % i
    text = text or ("'''" + f"Article {i}'''. {good_text(i)}" + " [[Link]].").encode()
    return (
        b"  <page>\n    <title>"
        + title
        + b"</title>\n    <ns>0</ns>\n    <id>%d</id>\n" % (i + 1)
        + b'    <revision>\n      <id>%d</id>\n      <text xml:space="preserve">' % (1000 + i)
        + text
        + b"</text>\n    </revision>\n  </page>\n"
    )


def _titles(n_good: int, bad: int | None = None):
    def check(docs, rejects):
        assert [meta(d)["title"] for d in docs] == [f"Article {i}" for i in range(n_good + 1) if i != bad][:n_good]

    return check


def case_wiki_malformed_page(tmp):
    pages = [wiki_page(i) for i in range(6)]
    pages[2] = wiki_page(2, title=b"Fish & Chips <b>")  # an unescaped & and an unclosed tag
    path = tmp / "wiki.xml.bz2"
    path.write_bytes(bz2.compress(_wiki_xml(pages)))
    return Case(path, "wiki_xml", 5, "malformed XML", check=_titles(5, bad=2))


def case_wiki_page_not_closed(tmp):
    pages = [wiki_page(i) for i in range(6)]
    pages[2] = pages[2].replace(b"</page>", b"")
    path = tmp / "wiki.xml.bz2"
    path.write_bytes(bz2.compress(_wiki_xml(pages)))
    return Case(path, "wiki_xml", 5, "malformed XML", check=_titles(5, bad=2))


def case_wiki_truncated_bz2(tmp):
    pages = [wiki_page(i) for i in range(300)]
    comp = b"".join(bz2.compress(_wiki_xml(pages)[i : i + 20_000], 1) for i in range(0, len(_wiki_xml(pages)), 20_000))
    comp = comp[: len(comp) * 2 // 3]
    path = tmp / "cut.xml.bz2"
    path.write_bytes(comp)
    prefix = recoverable_prefix("bz2", comp)
    complete = prefix.count(b"</page>")
    assert 0 < complete < 300
    return Case(path, "wiki_xml", complete, "unreadable from here on", check=_titles(complete), offset=len(prefix))


def case_wiki_page_cut_at_end(tmp):
    xml = _wiki_xml([wiki_page(i) for i in range(4)])
    path = tmp / "cut.xml"
    path.write_bytes(xml[: xml.rindex(b"<revision>") + 20])  # plain XML, the last page unclosed
    return Case(path, "wiki_xml", 3, "malformed XML", check=_titles(3))


def case_wiki_parquet_corrupt_row_group(tmp):
    path = tmp / "wiki.parquet"
    table = pa.table(
        {
            "id": [str(i) for i in range(30)],
            "title": [f"Article {i}" for i in range(30)],
            "text": [good_text(i) for i in range(30)],
        }
    )
    pq.write_table(table, path, row_group_size=10, compression="zstd", use_dictionary=False)
    raw = bytearray(path.read_bytes())
    start = pq.ParquetFile(path).metadata.row_group(1).column(2).data_page_offset
    raw[start : start + 16] = b"\xff" * 16  # the text column's page header in the second row group
    path.write_bytes(bytes(raw))

    def check(docs, rejects):
        assert [meta(d)["row"] for d in docs] == list(range(10)) + list(range(20, 30))
        assert rejects[0]["offset"] == 10

    return Case(path, "wiki_parquet", 20, "unreadable row group", check=check)


def _bulk_tar(tmp: Path, bad: bytes, name: str = "arXiv_src_2101_001.tar") -> Path:
    members = [(f"2101/2101.{i:05d}.gz", paper_gz(i)) for i in range(4)]
    members.insert(2, ("2101/2101.99999.gz", bad))
    path = tmp / name
    path.write_bytes(tar_bytes(members))
    return path


def _papers(n: int):
    def check(docs, rejects):
        assert [meta(d)["arxiv_id"] for d in docs] == [f"2101.{i:05d}" for i in range(n)]
        assert "2101.99999" in rejects[0]["reason"]

    return check


def case_arxiv_input_fanout_bomb(tmp):
    bomb = fanout_bomb()
    assert len(bomb) < 600
    return Case(_bulk_tar(tmp, bomb), "arxiv", 4, "expansion_limit", check=_papers(4))


def case_arxiv_input_too_deep(tmp):
    files = [("main.tex", b"\\documentclass{article}\\begin{document}\\section{A}\\input{d1}\\end{document}")]
    files += [(f"d{k}.tex", f"level {k} \\input{{d{k + 1}}}".encode()) for k in range(1, 12)]
    return Case(
        _bulk_tar(tmp, gzip.compress(tar_bytes(files), mtime=0)), "arxiv", 4, "expansion_limit", check=_papers(4)
    )


def case_arxiv_tex_members_over_budget(tmp):
    # each member is under the record limit, together they are not (a decompression bomb in parts)
    filler = b"% " + b"z" * 40_000 + b"\n"
    files = [("main.tex", paper_tex(9))] + [(f"part{k}.tex", filler) for k in range(4)]
    return Case(
        _bulk_tar(tmp, gzip.compress(tar_bytes(files), mtime=0)),
        "arxiv",
        4,
        "expansion_limit",
        opts=ReadOptions(max_record_bytes=100_000),
        check=_papers(4),
    )


def case_arxiv_skipped_member_bomb(tmp):
    # a huge figure that is never read still has to be decompressed to get past it
    files = [("main.tex", paper_tex(9)), ("fig.eps", b"\x00" * 8_000_000)]  # 64 x 100_000 is the budget
    return Case(
        _bulk_tar(tmp, gzip.compress(tar_bytes(files), mtime=0)),
        "arxiv",
        4,
        "expansion_limit",
        opts=ReadOptions(max_record_bytes=100_000),
        check=_papers(4),
    )


def case_arxiv_corrupt_nested_gzip(tmp):
    bad = paper_gz(99)
    bad = bad[:20] + b"\xff" * 30 + bad[50:]
    return Case(_bulk_tar(tmp, bad), "arxiv", 4, "unreadable", check=_papers(4))


def case_arxiv_bulk_tar_damaged_header(tmp):
    members = [(f"2101/2101.{i:05d}.gz", paper_gz(i)) for i in range(5)]
    raw = bytearray(tar_bytes(members))
    third = raw.index(b"2101/2101.00002.gz")  # the third member's header
    raw[third : third + 100] = b"\x07" * 100
    path = tmp / "arXiv_src_2101_002.tar"
    path.write_bytes(bytes(raw))

    def check(docs, rejects):
        assert [meta(d)["arxiv_id"] for d in docs] == ["2101.00000", "2101.00001", "2101.00003", "2101.00004"]
        assert rejects[0]["offset"] == third

    return Case(path, "arxiv", 4, "bad_tar_header", check=check)


def case_book_truncated_gzip(tmp):
    gz = gzip.compress((PROSE * 2000).encode(), mtime=0)
    path = tmp / "book.txt.gz"
    path.write_bytes(gz[: len(gz) // 2])
    return Case(path, "text", 0, "unreadable from here on")  # no half book as a document


CASES = {name[len("case_") :]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}
CASES.update(
    {
        f"warc_http_{s.split()[0].decode()}": _status_case(s)
        for s in (b"404 Not Found", b"301 Moved Permanently", b"500 Internal Server Error")
    }
)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fault_matrix(tmp_path, name):
    case = CASES[name](tmp_path)
    t0 = time.monotonic()
    docs, rejects = split(read_file(str(case.path), case.fmt, "src", case.opts))
    took = time.monotonic() - t0
    listing = [(r["reason"][:120], r["offset"]) for r in rejects]
    assert case.good is None or len(docs) == case.good, (len(docs), listing)
    assert len(rejects) == case.rejects if case.rejects is not None else rejects, listing
    for r in rejects:
        assert case.reason in r["reason"] and r["file"] == str(case.path) and r["stage"] == "read", listing
    if case.offset is not None:
        assert rejects[-1]["offset"] == case.offset, listing
    if case.check:
        case.check(docs, rejects)
    assert took < 10, f"{name}: {took:.1f} s"


def test_matrix_has_at_least_twenty_kinds():
    assert len(CASES) >= 20


def test_records_that_are_no_documents_are_counted(corpus, tmp_path):
    """WARC request/metadata/warcinfo records and other Pile subsets are neither documents nor
    rejects: they are counted by kind."""
    passed: dict = {}
    docs, rejects = split(
        read_file(str(corpus / "commoncrawl/CC-MAIN-2020-34-sample.warc.gz"), "warc", "commoncrawl", passed_over=passed)
    )
    assert len(docs) == 16 and not rejects
    assert passed == {"warc request": 17, "warc metadata": 16, "warc warcinfo": 1}
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"".join(pile_lines(3)) + jsonl([{"text": "x", "meta": {"pile_set_name": "Pile-CC"}}] * 2))
    passed = {}
    docs, _ = split(read_file(str(path), "pile", "books", passed_over=passed))
    assert len(docs) == 3 and passed == {"pile other subsets": 2}


def test_input_bomb_is_rejected_in_bounded_time_and_memory(tmp_path):
    import resource

    path = tmp_path / "2101.00001.tar.gz"
    path.write_bytes(fanout_bomb(levels=8, fan=14))  # about 1.5e9 inlined copies if nothing stopped it
    assert len(path.read_bytes()) < 700
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    docs, rejects = split(read_file(str(path), "arxiv", "arxiv"))
    assert time.monotonic() - t0 < 5
    assert not docs and len(rejects) == 1 and rejects[0]["reason"].startswith("expansion_limit")
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grew_mb < 400, grew_mb


def test_macro_bomb_is_a_clean_reject(tmp_path):
    body = (
        "\\def\\a{\\b\\b\\b\\b\\b\\b\\b\\b\\b\\b\\b\\b\\b\\b\\b\\b\\b\\b\\b\\b}"
        "\\def\\b{\\c\\c\\c\\c\\c\\c\\c\\c\\c\\c\\c\\c\\c\\c\\c\\c\\c\\c\\c\\c}"
        "\\def\\c{\\d\\d\\d\\d\\d\\d\\d\\d\\d\\d\\d\\d\\d\\d\\d\\d\\d\\d\\d\\d}"
        "\\def\\d{" + "word " * 200 + "}\n" + "\\a" * 50 + "\n"
    )
    members = [(f"2101/2101.{i:05d}.gz", paper_gz(i)) for i in range(3)]
    members.insert(1, ("2101/2101.99999.gz", gzip.compress(tar_bytes([("main.tex", paper_tex(9, body))]), mtime=0)))
    path = tmp_path / "bulk.tar"
    path.write_bytes(tar_bytes(members))
    t0 = time.monotonic()
    out = list(clean_records(read_file(str(path), "arxiv", "arxiv"), "arxiv"))
    assert time.monotonic() - t0 < 10
    docs, rejects = split(out)
    assert len(docs) == 3 and len(rejects) == 1
    assert rejects[0]["stage"] == "clean" and rejects[0]["reason"].startswith("expansion_limit")


# -- configuration ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source,key",
    [
        ({"format": "c4", "paths": []}, "text.sources.c4.paths"),
        ({"inputs": [{"format": "c4", "paths": []}]}, "text.sources.c4.inputs.0.paths"),
        ({"inputs": []}, "text.sources.c4.inputs"),
    ],
)
def test_empty_paths_is_a_config_error_naming_the_key(tmp_path, capsys, source, key):
    from jamdata.cli import main as cli_main

    good = tmp_path / "good.json"
    good.write_bytes(b"".join(c4_lines(2)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"text": {"sources": {"c4": source, "c4b": {"format": "c4", "paths": [str(good)]}}}}))
    assert cli_main(["text", "clean", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"config key '{key}'" in err[0] and "empty" in err[0], err


# -- through the real pipeline ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """text-clean on a tiny config: C4 with lone surrogates and an over-deep line, a WARC with a 404,
    a damaged Content-Length and a 500, and a bulk arXiv tar with an \\input bomb among good papers."""
    from jamdata.cli import main as cli_main

    root = tmp_path_factory.mktemp("faults")
    c4 = root / "c4.json.gz"
    lines = [
        json.dumps({"text": f"{PROSE} {w} " * 3, "url": f"https://c4.example/{i}"}).encode() + b"\n"
        for i, w in enumerate(
            ["Apples grow in orchards.", "Rivers run to the sea.", "Stars shine at night.", "Bread is baked at dawn."]
        )
    ]
    odd = (
        b'{"text": "'
        + (" Emoji halves \\ud83d and \\ude00 alone. " + PROSE).encode() * 3
        + b'", "url": "https://c4.example/\\udc80"}\n'
    )
    c4.write_bytes(gzip.compress(b"".join(lines[:2] + [odd, b"[" * 100_000 + b"\n"] + lines[2:]), mtime=0))
    recs = [response(i) for i in range(5)]
    recs[1] = warc_record(1, b"response", http_block(html_page(1), status=b"404 Not Found"))
    recs[3] = response(3, length=len(http_block(html_page(3))) + 500)
    recs.append(warc_record(5, b"response", http_block(html_page(5), status=b"500 Internal Server Error")))
    warc = root / "cc.warc.gz"
    recs.insert(2, warc_record(100, b"request", b"GET /page/2 HTTP/1.1\r\nHost: www.example.org\r\n\r\n"))
    recs.insert(3, warc_record(101, b"metadata", b"fetchTimeMs: 42\r\n"))
    warc.write_bytes(warc_gz(recs + [response(6)]))
    bulk = _bulk_tar(root, fanout_bomb())
    cfg = {
        "run": {"seed": 1},
        "text": {
            "sources": {
                "c4": {"format": "c4", "paths": [str(c4)]},
                "commoncrawl": {"format": "warc", "paths": [str(warc)]},
                "arxiv": {"format": "arxiv", "paths": [str(bulk)]},
            },
            "clean": {"line_dedup_min_docs": 0},
        },
    }
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    outs = {}
    for workers in (1, 2):
        outs[workers] = root / f"out-{workers}"
        assert (
            cli_main(["text", "clean", "--config", str(path), "--out", str(outs[workers]), "--workers", str(workers)])
            == 0
        )
    return outs


def test_pipeline_keeps_good_records_next_to_bad_ones(pipeline_run):
    from jamdata.manifest import read_manifest

    pipeline_run = pipeline_run[1]
    summary = read_manifest(str(pipeline_run / "text-clean"))["summary"]
    assert summary["passed_over"] == {"commoncrawl": {"warc metadata": 1, "warc request": 1}}
    funnel = summary["funnel"]
    assert funnel["c4"]["read"]["docs_out"] == 5  # 4 good + the one with lone surrogates replaced
    assert funnel["commoncrawl"]["read"]["docs_out"] == 4  # pages 0, 2, 4, 6
    assert funnel["arxiv"]["read"]["docs_out"] == 4
    rejects = [
        r
        for f in sorted((pipeline_run / "text-clean-rejects").glob("*/*.parquet"))
        for r in pq.read_table(f).to_pylist()
    ]
    reasons = sorted(r["reason"].split(":")[0] for r in rejects if r["stage"] == "read")
    assert reasons == ["bad_warc_record", "expansion_limit", "http_status", "http_status", "malformed JSON"], reasons
    docs = [d for f in sorted((pipeline_run / "text-clean").glob("*/*.parquet")) for d in pq.read_table(f).to_pylist()]
    # the document with lone surrogates went on through the later stages with them replaced
    seen = [d["text"] for d in docs] + [r["snippet"] or "" for r in rejects if r["source"] == "c4"]
    odd = [t for t in seen if "Emoji halves" in t]
    assert odd and all("\ufffd" in t for t in odd), odd


def test_pipeline_outputs_do_not_depend_on_workers(pipeline_run):
    """Two worker processes (each reading whole files) give the same bytes as one."""

    def digest(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".jam.lock"
        }

    for name in ("text-clean", "text-clean-rejects"):
        assert digest(pipeline_run[1] / name) == digest(pipeline_run[2] / name)
