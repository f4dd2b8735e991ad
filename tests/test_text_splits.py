"""Big inputs read in parts by several workers: an uncompressed JSON-lines file in newline-aligned
byte ranges, a Wikipedia multistream dump in ranges of bz2 streams cut at its index's offsets.
The parts together give exactly the records of the whole file (ids, offsets, rejects)."""

from __future__ import annotations

import bz2
import gzip
import json
import re
from pathlib import Path

import pytest

from jamdata.io import InputError
from jamdata.text.readers import ReadOptions, is_reject, read_file
from jamdata.text.readers.splits import count_line_starts, number_splits, plan_splits

OPTS = ReadOptions(max_record_bytes=4096)


def read_parts(path: Path, fmt: str, split_bytes: int, opts: ReadOptions = OPTS, passed: dict | None = None):
    splits = plan_splits(str(path), fmt, split_bytes)
    if splits and splits[0].kind == "lines":
        splits = number_splits([(s, count_line_starts(str(path), s)) for s in splits])
    recs = [r for s in splits for r in read_file(str(path), fmt, "src", opts, "x/" + path.name, passed, split=s)]
    return splits, recs


@pytest.fixture
def c4_lines(corpus, tmp_path) -> Path:
    """Real C4 lines, plain (uncompressed), with the kinds of bad line a reader meets: blank lines, a
    line over the record limit, malformed JSON, a line without text, and no final newline."""
    real = gzip.decompress((corpus / "c4" / "c4-sample.01.json.gz").read_bytes()).splitlines(keepends=True)
    rows = [json.loads(x) for x in real[:60]]
    lines = []
    for i, row in enumerate(rows):
        row["text"] = row["text"][:1500]
        if i % 3 == 0:
            row["id"] = f"doc-{i}"  # some with a native id, the others named by their line number
        lines.append(json.dumps(row).encode() + b"\n")
    lines[5:5] = [b"\n", b'{"text": "broken\n', b'{"url": "no text"}\n', b"x" * 9000 + b"\n", b"\r\n"]
    path = tmp_path / "c4-plain.jsonl"
    path.write_bytes(b"".join(lines).rstrip(b"\n"))
    return path


def test_jsonl_split_into_ranges_reads_what_the_whole_file_reads(c4_lines):
    whole = list(read_file(str(c4_lines), "c4", "src", OPTS, "x/" + c4_lines.name))
    size = c4_lines.stat().st_size
    for split_bytes in (size // 3, 4096, 777, 9001):
        splits, parts = read_parts(c4_lines, "c4", split_bytes)
        assert len(splits) >= 3 and splits[-1].end == size
        assert parts == whole, split_bytes
    assert sum(is_reject(r) for r in whole) == 3 and len(whole) == 13  # 10 documents
    assert plan_splits(str(c4_lines), "c4", size) == []  # not bigger than a part: read whole


def test_pile_split_counts_the_passed_over_subsets(tmp_path):
    rows = [
        {"text": f"Book {i}. " * 40, "meta": {"pile_set_name": "Books3" if i % 2 else "Pile-CC"}} for i in range(40)
    ]
    path = tmp_path / "pile.jsonl"
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows))
    whole_passed, part_passed = {}, {}
    whole = list(read_file(str(path), "pile", "src", OPTS, "x/" + path.name, whole_passed))
    splits, parts = read_parts(path, "pile", 1000, passed=part_passed)
    assert len(splits) >= 3 and parts == whole and part_passed == whole_passed == {"pile other subsets": 20}


def test_compressed_lines_are_not_split(corpus):
    # a gzip member / zstd frame cannot be found without decompressing all before it
    assert plan_splits(str(corpus / "c4" / "c4-sample.01.json.gz"), "c4", 1024) == []


def _pages(corpus) -> tuple[bytes, list[bytes], bytes]:
    xml = bz2.decompress((corpus / "wikipedia" / "enwiki-pages-articles-shortened.xml.bz2").read_bytes())
    starts = [m.start() for m in re.finditer(rb"<page>", xml)]
    end = xml.rindex(b"</page>") + len(b"</page>\n")
    pages = [xml[a:b] for a, b in zip(starts, starts[1:] + [end])]
    return xml[: starts[0]], pages, xml[end:]


def write_multistream(d: Path, header: bytes, pages: list[bytes], footer: bytes, per_stream: int) -> Path:
    """A dump in Wikimedia's multistream layout: the siteinfo as one bz2 stream, then streams of
    `per_stream` pages, then `</mediawiki>`; the index lists `offset:page id:title` per page."""
    dump, index = d / "enwiki-20240101-pages-articles-multistream.xml.bz2", []
    blob = bz2.compress(header)
    for i in range(0, len(pages), per_stream):
        for page in pages[i : i + per_stream]:
            pid = re.search(rb"<id>(\d+)</id>", page).group(1).decode()
            title = re.search(rb"<title>([^<]*)</title>", page).group(1).decode()
            index.append(f"{len(blob)}:{pid}:{title}\n")
        blob += bz2.compress(b"".join(pages[i : i + per_stream]))
    dump.write_bytes(blob + bz2.compress(footer))
    (d / "enwiki-20240101-pages-articles-multistream-index.txt.bz2").write_bytes(bz2.compress("".join(index).encode()))
    return dump


def test_multistream_dump_split_by_its_index_reads_the_same_pages(corpus, tmp_path):
    header, pages, footer = _pages(corpus)
    plain = tmp_path / "plain.xml.bz2"
    plain.write_bytes(bz2.compress(header + b"".join(pages) + footer))
    # too long a page becomes a reject; two of them sit in one stream and must not share an id
    pages = pages + [pages[0].replace(b"<id>", b"<id>99", 1).replace(b"</text>", b"x" * 300_000 + b"</text>")] * 2
    dump = write_multistream(tmp_path, header, pages, footer, per_stream=4)
    opts = ReadOptions(max_record_bytes=200_000)
    one, whole = read_parts(dump, "wiki_xml", 1 << 30, opts)
    assert len(one) == 1 and one[0].kind == "bz2_streams"
    for split_bytes in (1, 20_000, 100_000):
        splits, parts = read_parts(dump, "wiki_xml", split_bytes, opts)
        assert len(splits) >= 3 and parts == whole, split_bytes

    def docs(recs):
        return [{**r, "metadata": r["metadata"] | {"file": None}} for r in recs if not is_reject(r)]

    ref = docs(read_file(str(plain), "wiki_xml", "src", opts, "x/" + dump.name))
    assert docs(whole) == ref and len(ref) > 50  # the same documents (ids, urls) as the dump read as one stream
    long = [r for r in whole if is_reject(r) and "longer" in r["reason"]]
    assert len(long) == 2 and long[0]["id"] != long[1]["id"] and long[0]["offset"] == long[1]["offset"]


def test_multistream_index_that_does_not_match_the_dump(corpus, tmp_path):
    header, pages, footer = _pages(corpus)
    dump = write_multistream(tmp_path, header, pages, footer, per_stream=4)
    index = tmp_path / "enwiki-20240101-pages-articles-multistream-index.txt.bz2"
    index.write_bytes(bz2.compress(b"5:1:A\n"))  # not where a stream begins
    (part, *_), recs = read_parts(dump, "wiki_xml", 1, ReadOptions())
    assert any("no bz2 stream at offset 5" in r.get("reason", "") for r in recs)
    index.write_bytes(bz2.compress(b"not an index\n"))
    with pytest.raises(InputError, match="line 1 is not `offset:page id:title`"):
        plan_splits(str(dump), "wiki_xml", 1)
