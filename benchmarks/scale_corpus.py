"""The scale benchmark's corpus: every source of the reference run, in its raw format, grown from
the real documents of the sample corpus (`JAM_CORPUS`).

Each copy of a real document gets a new id/URL/title and every sixth plain lowercase word replaced
by a common corpus word (markup, LaTeX commands and wikitext syntax are never touched), so copies
are distinct documents (5-gram Jaccard far below the MinHash thresholds) in the same raw format:

| source | format | grown from |
|---|---|---|
| commoncrawl | `wet` (gzip'd WARC conversion records) | the CC-MAIN-2019-30 WET documents (c4/ dolma file) |
| commoncrawl | `warc` (gzip'd WARC HTTP responses, HTML) | the HTML responses of commoncrawl/CC-MAIN-2020-34-sample.warc.gz |
| c4 | `c4` (JSON lines, .json.gz) | the C4 records of c4/c4-sample.0{1,2}.json.gz |
| wikipedia | `wiki_xml` (pages-articles XML, .bz2) | the articles of wikipedia/enwiki-pages-articles-shortened.xml.bz2 |
| books | `text` (one .txt per book) | books/shakespeare/*_gut.txt and books/botchan_pg8868.txt |
| arxiv | `arxiv` (bulk tar of gzip'd .tex papers) | arxiv/1911.02782.tar.gz, its main .tex with inputs resolved |

`SHARES` splits the distinct text bytes between them. The planted cases (`planted/`, C4 JSON
lines, read as their own source) are built by benchmarks/bench_scale.py.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import random
import re
import tarfile
from pathlib import Path

from corpus import CORPUS

# share of the distinct text bytes (about LLaMA's mixture, with a little HTML: extraction is slow)
SHARES = {"wet": 0.45, "warc": 0.05, "c4": 0.20, "wikipedia": 0.12, "books": 0.10, "arxiv": 0.08}
SOURCE_OF = {
    "wet": "commoncrawl",
    "warc": "commoncrawl",
    "c4": "c4",
    "wikipedia": "wikipedia",
    "books": "books",
    "arxiv": "arxiv",
}
FORMAT_OF = {"wet": "wet", "warc": "warc", "c4": "c4", "wikipedia": "wiki_xml", "books": "text", "arxiv": "arxiv"}
_PLAIN = re.compile(r"^[a-z]{3,}$")


def perturb(text: str, rng: random.Random, vocab: list[str], every: int = 6) -> str:
    """Every `every`-th plain lowercase word (from a random phase) replaced by a corpus word;
    whitespace, punctuation and markup kept."""
    parts = re.split(r"(\s+)", text)
    k = rng.randrange(every)
    for i in range(0, len(parts), 2):
        if _PLAIN.match(parts[i]):
            if k == 0:
                parts[i] = rng.choice(vocab)
            k = (k + 1) % every
    return "".join(parts)


def common_words(texts: list[str], n: int = 4000) -> list[str]:
    freq: dict[str, int] = {}
    for t in texts:
        for w in t.split():
            if w.isascii() and w.isalpha() and w.islower() and 2 < len(w) < 12:
                freq[w] = freq.get(w, 0) + 1
    return sorted(sorted(freq, key=lambda w: -freq[w])[:n])


# -- the real documents each source grows from ------------------------------------------------------
def wet_texts() -> list[str]:
    with gzip.open(CORPUS / "c4" / "CC-MAIN-2019-30-docs.jsonl.gz", "rt") as f:
        return [t for t in (json.loads(line)["text"] for line in f) if len(t) > 200]


def c4_texts() -> list[str]:
    out = []
    for name in ("c4-sample.01.json.gz", "c4-sample.02.json.gz"):
        with gzip.open(CORPUS / "c4" / name, "rt") as f:
            out += [json.loads(line)["text"] for line in f]
    return out


def warc_pages() -> list[tuple[str, str, bytes]]:
    """(url, content type, HTML bytes) of the sample WARC's 200 text/html responses (real Common
    Crawl pages: most in Chinese or Russian, several not UTF-8, as the crawl has them)."""
    from warcio.archiveiterator import ArchiveIterator

    out = []
    with open(CORPUS / "commoncrawl" / "CC-MAIN-2020-34-sample.warc.gz", "rb") as f:
        for rec in ArchiveIterator(f):
            ctype = rec.http_headers.get_header("Content-Type") or "" if rec.http_headers else ""
            if rec.rec_type == "response" and rec.http_headers.get_statuscode() == "200" and "html" in ctype:
                out.append((rec.rec_headers.get_header("WARC-Target-URI"), ctype, rec.content_stream().read()))
    return out


def wiki_dump() -> tuple[str, list[str], str]:
    """(header up to the first page, the article <page> elements, footer) of the sample dump."""
    xml = bz2.decompress((CORPUS / "wikipedia" / "enwiki-pages-articles-shortened.xml.bz2").read_bytes()).decode()
    first = xml.index("<page>")
    pages = re.findall(r"<page>.*?</page>", xml, flags=re.S)
    return xml[:first], [p for p in pages if "<redirect" not in p and "<ns>0</ns>" in p], "</mediawiki>\n"


def book_texts() -> list[str]:
    paths = sorted((CORPUS / "books" / "shakespeare").glob("*_gut.txt")) + [CORPUS / "books" / "botchan_pg8868.txt"]
    return [p.read_text(encoding="utf-8-sig") for p in paths]


def arxiv_tex() -> str:
    from jamdata.text.readers.arxiv import find_main_tex, resolve_inputs

    files = {}
    with tarfile.open(CORPUS / "arxiv" / "1911.02782.tar.gz") as tar:
        for m in tar:
            if m.isfile() and m.name.endswith((".tex", ".bbl")):
                files[m.name] = tar.extractfile(m).read().decode("utf-8", errors="replace")
    return resolve_inputs(files, find_main_tex(files))


# -- writers: each returns the text bytes it wrote ----------------------------------------------------
def _warc_record(kind: str, url: str, block: bytes, extra: str = "") -> bytes:
    head = (
        f"WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Target-URI: {url}\r\nWARC-Date: 2019-07-20T00:00:00Z\r\n"
        f"WARC-Record-ID: <urn:uuid:{abs(hash((kind, url))) % 10**32:032d}>\r\n{extra}"
        f"Content-Length: {len(block)}\r\n\r\n"
    ).encode()
    return gzip.compress(head + block + b"\r\n\r\n", compresslevel=1)


class Files:
    """Files of `about file_mb` MB of text each under out/<kind>/, numbered in order."""

    def __init__(self, out: Path, kind: str, suffix: str, file_mb: float):
        self.dir, self.suffix, self.limit = out / kind, suffix, file_mb * 1e6
        self.dir.mkdir(parents=True, exist_ok=True)
        self.paths: list[str] = []

    def next_path(self) -> Path:
        p = self.dir / f"part-{len(self.paths):05d}{self.suffix}"
        self.paths.append(str(p))
        return p


def grow(
    kind: str, out: Path, mb: float, file_mb: float, rng: random.Random, vocab: list[str]
) -> tuple[list[str], int]:
    """Write about `mb` MB of text of one kind; returns the files and the text bytes written."""
    files = Files(
        out,
        kind,
        {
            "wet": ".warc.wet.gz",
            "warc": ".warc.gz",
            "c4": ".json.gz",
            "wikipedia": ".xml.bz2",
            "books": ".txt",
            "arxiv": ".tar",
        }[kind],
        file_mb,
    )
    total, i = 0, 0
    if kind == "books":  # one file per book
        books = book_texts()
        while total < mb * 1e6:
            text = perturb(books[i % len(books)], rng, vocab)
            files.next_path().write_text(text, encoding="utf-8")
            total, i = total + len(text.encode()), i + 1
        return files.paths, total
    if kind == "wikipedia":
        head, pages, foot = wiki_dump()
    base = {
        "wet": wet_texts,
        "c4": c4_texts,
        "warc": warc_pages,
        "wikipedia": lambda: pages,
        "arxiv": lambda: [arxiv_tex()],
    }[kind]()
    while total < mb * 1e6:
        buf, size = [], 0
        while size < files.limit and total + size < mb * 1e6:
            src = base[i % len(base)]
            if kind == "wet":
                text = perturb(src, rng, vocab).encode()
                buf.append(
                    _warc_record("conversion", f"https://web{i}.example/page", text, "Content-Type: text/plain\r\n")
                )
            elif kind == "warc":
                url, ctype, html = src  # latin-1: any bytes round-trip; only ASCII words are replaced
                text = perturb(html.decode("latin-1"), rng, vocab).encode("latin-1", errors="replace")
                http = f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n\r\n".encode("latin-1")
                buf.append(
                    _warc_record(
                        "response",
                        f"{url}?copy={i}",
                        http + text,
                        "Content-Type: application/http; msgtype=response\r\n",
                    )
                )
            elif kind == "c4":
                text = perturb(src, rng, vocab).encode()
                buf.append(
                    gzip.compress(
                        (
                            json.dumps(
                                {
                                    "text": text.decode(),
                                    "url": f"https://c4.example/{i}",
                                    "timestamp": "2019-07-20T00:00:00Z",
                                }
                            )
                            + "\n"
                        ).encode(),
                        1,
                    )
                )
            elif kind == "wikipedia":
                page = re.sub(r"<title>(.*?)</title>", lambda m: f"<title>{m.group(1)} ({i})</title>", src, count=1)
                page = re.sub(r"<id>\d+</id>", f"<id>{10_000_000 + i}</id>", page, count=1)
                page = perturb(page, rng, vocab)
                text = page.encode()
                buf.append(text)
            else:  # arxiv: one gzip'd .tex per paper, in a bulk tar
                text = perturb(src, rng, vocab).encode()
                buf.append((f"{1900 + i // 100000:04d}.{i % 100000:05d}.gz", gzip.compress(text, 1)))
            size, i = size + len(text), i + 1
        path = files.next_path()
        if kind == "wikipedia":
            path.write_bytes(bz2.compress((head + "\n".join(b.decode() for b in buf) + foot).encode(), 1))
        elif kind == "arxiv":
            with tarfile.open(path, "w") as tar:
                for name, data in buf:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        else:
            path.write_bytes(b"".join(buf))
        total += size
    return files.paths, total


def build_sources(out: Path, mb: float, file_mb: float, seed: int) -> tuple[dict[str, dict], dict[str, float]]:
    """About `mb` MB of distinct text split by SHARES -> (the `text.sources` config, text MB per kind:
    raw text as stored, HTML and markup included)."""
    rng = random.Random(seed)
    vocab = common_words(c4_texts(), 2000)  # English words: the language filter still sees English
    sources: dict[str, dict] = {}
    written: dict[str, float] = {}
    for kind, share in SHARES.items():
        paths, nbytes = grow(kind, out, mb * share, file_mb, rng, vocab)
        written[kind] = nbytes / 1e6
        sources.setdefault(SOURCE_OF[kind], {"inputs": []})["inputs"].append(
            {"format": FORMAT_OF[kind], "paths": paths}
        )
    return sources, written
