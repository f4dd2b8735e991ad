"""Scale-out of the text stages: no element holds unbounded work.

- HTML extraction has a per-page time limit (text.clean.extract_timeout_s): a page past it is an
  `extraction_timeout` reject and the job finishes.
- CCNet line dedup over groups of files (text.clean.line_dedup_group_files): a line seen in two
  files of one group goes, the same line in files of different groups stays.
- Parquet shard counts derived from the data (text.clean.shard_bytes).
All through the real text-clean pipeline (FnApiRunner), on small inputs.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jamdata.config import Config
from jamdata.text.extract import ExtractionTimeout, extract_main_text
from jamdata.text.readers import ReadOptions, is_reject, read_file
from pipelines import text_clean

PROSE = (
    "The harbour was quiet in the early morning, and the fishing boats rocked gently at their moorings "
    "while gulls argued over scraps on the stone quay. "
)


def html_page(i: int) -> bytes:
    return (
        f"<html><head><title>Page {i}</title></head><body><article><h1>Page {i}</h1>"
        f"<p>{PROSE}</p><p>Good record number {i}. {PROSE}</p></article></body></html>"
    ).encode()


def slow_page(n: int = 12000) -> bytes:
    """A large flat page: several seconds of trafilatura work in-process."""
    return (
        "<html><body>"
        + "".join(f"<div><p>Paragraph {i} of a page that goes on and on and on.</p></div>" for i in range(n))
        + "</body></html>"
    ).encode()


def warc_response(i: int, body: bytes) -> bytes:
    block = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    head = (
        b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: https://www.example.org/page/%d" % i
        + b"\r\nWARC-Date: 2024-05-20T10:00:00Z\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-%012d>\r\n" % i
        + b"Content-Type: application/http; msgtype=response\r\nContent-Length: %d\r\n\r\n" % len(block)
    )
    return gzip.compress(head + block + b"\r\n\r\n", mtime=0)


def clean_config(sources: dict, **clean) -> Config:
    cfg = {
        "run": {"seed": 3},
        "text": {
            "sources": sources,
            "clean": {
                "filters": {"chains": {"default": [], **{name: [] for name in sources}}},
                "dedup": {"exact": False, "minhash": {"enabled": False}, "book_overlap": {"enabled": False}},
                **clean,
            },
        },
    }
    return Config(cfg)


def run_clean(cfg: Config, out: Path, workers: int = 1) -> tuple[list[dict], list[dict], dict]:
    manifest = text_clean.run(cfg, out / "docs", out / "rejects", workers, log_fn=lambda *_: None)
    docs = [r for f in sorted((out / "docs").glob("*/*.parquet")) for r in pq.read_table(f).to_pylist()]
    rejects = [r for f in sorted((out / "rejects").glob("*/*.parquet")) for r in pq.read_table(f).to_pylist()]
    return docs, rejects, manifest


# -- 1. HTML extraction time limit -----------------------------------------------------------------
def test_extraction_past_the_limit_raises_and_the_next_page_works():
    assert "Good record number 0" in extract_main_text(html_page(0).decode(), None, 0.3)  # child started
    t0 = time.monotonic()
    with pytest.raises(ExtractionTimeout):
        extract_main_text(slow_page().decode(), None, 0.3)
    assert time.monotonic() - t0 < 4.0  # bounded: the page alone takes several seconds
    assert "Good record number 1" in extract_main_text(html_page(1).decode(), None, 0.3)


def test_slow_page_is_an_extraction_timeout_reject_and_the_job_finishes(tmp_path):
    warc = tmp_path / "cc.warc.gz"
    warc.write_bytes(warc_response(1, html_page(1)) + warc_response(2, slow_page()) + warc_response(3, html_page(3)))
    recs = list(read_file(str(warc), "warc", "commoncrawl", ReadOptions(extract_timeout_s=0.3)))
    assert [is_reject(r) for r in recs] == [False, True, False]
    assert recs[1]["reason"].startswith("extraction_timeout: ")

    cfg = clean_config(
        {"commoncrawl": {"format": "warc", "paths": [str(warc)]}}, extract_timeout_s=0.3, line_dedup_min_docs=0
    )
    # two worker processes: the DoFn runs in an SDK harness thread, where no signal timer works
    docs, rejects, manifest = run_clean(cfg, tmp_path / "out", workers=2)
    assert len(docs) == 2 and all("Good record number" in d["text"] for d in docs)
    assert [r["reason"].split(":")[0] for r in rejects] == ["extraction_timeout"]
    assert manifest["summary"]["rejected"]["commoncrawl"] == {"read": 1}


# -- 2. CCNet line dedup over groups of files ------------------------------------------------------
BOILER = "Subscribe to our newsletter for the weekly deals and offers"


def wet_file(path: Path, docs: list[tuple[int, str]]) -> str:
    out = b""
    for i, text in docs:
        body = text.encode()
        head = (
            b"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Target-URI: https://www.example.org/%d" % i
            + b"\r\nWARC-Date: 2024-05-20T10:00:00Z\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-%012d>\r\n" % i
            + b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        out += gzip.compress(head + body + b"\r\n\r\n", mtime=0)
    path.write_bytes(out)
    return str(path)


def test_line_repeated_across_files_of_one_group_is_removed(tmp_path):
    d = tmp_path / "wet"
    d.mkdir()
    name = {1: "alpha", 3: "gamma", 4: "delta"}  # not digits: CCNet's normalisation maps them to 0
    body = lambda i: f"{PROSE}Story {name[i]} goes here.\n{BOILER}\nThe end of story {name[i]}."
    wet_file(d / "a.warc.wet.gz", [(1, body(1)), (2, f"{PROSE}Only prose in document two.")])
    wet_file(d / "b.warc.wet.gz", [(3, body(3))])
    wet_file(d / "c.warc.wet.gz", [(4, body(4))])  # the next group: its copy is alone there
    cfg = clean_config(
        {"commoncrawl": {"format": "wet", "paths": [str(d)]}}, line_dedup_group_files=2, line_dedup_min_docs=2
    )
    docs, rejects, manifest = run_clean(cfg, tmp_path / "out", workers=2)
    by_story = {d["url"].rsplit("/", 1)[1]: d for d in docs}
    assert not rejects and len(docs) == 4
    for i in ("1", "3"):
        assert BOILER not in by_story[i]["text"] and f"The end of story {name[int(i)]}." in by_story[i]["text"]
        assert json.loads(by_story[i]["metadata"])["boilerplate_lines_removed"] == 1
    assert BOILER in by_story["4"]["text"]
    funnel = manifest["summary"]["funnel"]["commoncrawl"]
    assert funnel["clean"]["docs_out"] == 4 and funnel["clean"]["bytes_out"] < funnel["read"]["bytes_out"]

    # per file (the default), no file has the line twice: nothing is removed
    cfg = clean_config({"commoncrawl": {"format": "wet", "paths": [str(d)]}}, line_dedup_min_docs=2)
    docs, _, _ = run_clean(cfg, tmp_path / "out-per-file")
    assert sum(BOILER in d["text"] for d in docs) == 3


def test_only_boilerplate_is_a_clean_reject(tmp_path):
    d = tmp_path / "wet"
    d.mkdir()
    wet_file(d / "a.warc.wet.gz", [(1, BOILER), (2, f"{PROSE}\n{BOILER}")])
    wet_file(d / "b.warc.wet.gz", [(3, f"{PROSE} Three.\n{BOILER}")])
    cfg = clean_config(
        {"commoncrawl": {"format": "wet", "paths": [str(d)]}}, line_dedup_group_files=4, line_dedup_min_docs=3
    )
    docs, rejects, manifest = run_clean(cfg, tmp_path / "out")
    assert len(docs) == 2 and all(BOILER not in d["text"] for d in docs)
    assert [(r["stage"], r["reason"]) for r in rejects] == [("clean", "only boilerplate lines")]
    assert manifest["summary"]["funnel"]["commoncrawl"]["clean"]["docs_out"] == 2


# -- 3. Parquet shard counts from the data ---------------------------------------------------------
def _c4_dir(root: Path, n: int) -> Path:
    root.mkdir()
    lines = [
        json.dumps({"text": f"{PROSE}Record {w}.", "url": f"https://c4.example/{i}"})
        for i, w in enumerate(f"w{i:05d}x" for i in range(n))
    ]
    (root / "c4.json.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))
    return root


def _shard_files(out: Path) -> dict[str, bytes]:
    return {str(f.relative_to(out)): f.read_bytes() for f in sorted((out / "docs").glob("*/*.parquet"))}


def test_shard_count_follows_the_data_size_and_explicit_shards_win(tmp_path):
    src = {"c4": {"format": "c4", "paths": [str(_c4_dir(tmp_path / "c4", 60))]}}
    docs, _, manifest = run_clean(clean_config(src, shard_bytes=4000), tmp_path / "derived", workers=2)
    total = manifest["summary"]["funnel"]["c4"]["dedup"]["bytes_out"]
    assert len(docs) == 60 and total > 9000
    files = _shard_files(tmp_path / "derived")
    assert len(files) == -(-total // 4000)  # ceil(bytes / shard_bytes)
    assert sum(s["records"] for s in manifest["shards"]) == 60

    # the default target is far above this data: one shard, byte-identical to an explicit shards: 1
    run_clean(clean_config(src), tmp_path / "default")
    run_clean(clean_config(src, shards=1, reject_shards=1), tmp_path / "explicit")
    assert _shard_files(tmp_path / "default") == _shard_files(tmp_path / "explicit")
    assert len(_shard_files(tmp_path / "default")) == 1
    run_clean(clean_config(src, shards=2, shard_bytes=100), tmp_path / "two")
    assert len(_shard_files(tmp_path / "two")) == 2


# -- 5. The compute estimate of `jamdata text plan` ------------------------------------------------
def test_plan_estimate_comes_from_the_measured_throughput():
    from jamdata import scale
    from jamdata.commands.text_sample import compute_estimate
    from jamdata.text.sampling import SourcePlan

    manifest = {
        "summary": {
            "funnel": {
                "c4": {"read": {"bytes_out": 2_000_000_000_000}},
                "commoncrawl": {"read": {"bytes_out": 8_000_000_000_000}},
            }
        }
    }
    table = [
        SourcePlan("c4", 0.5, 1.0, 10**10, 10**11, True, 0.25),
        SourcePlan("commoncrawl", 0.5, 1.0, 10**10, 10**11, False),
    ]
    lines = compute_estimate(manifest, table)
    # read: the funnel's text bytes; sample: each target in bytes (measured tokens/byte, else the constant)
    e = scale.estimate(10_000_000, (10**10 / 0.25 + 10**10 * scale.BYTES_PER_TOKEN) / 1e6)
    assert "10.000 TB read" in lines[1]
    assert f"{e['clean_core_hours']:,.1f} core-hours" in lines[1]
    assert f"{e['worker_hours']:,.1f} worker-hours" in lines[3] and scale.MACHINE in lines[3]
    # linear in the data: twice the bytes, twice the hours
    assert scale.estimate(2000, 0)["clean_core_hours"] == pytest.approx(2 * scale.estimate(1000, 0)["clean_core_hours"])
    assert scale.estimate(1, 1)["memory_ok"]


def test_a_dead_extraction_process_is_a_failure_not_a_timeout():
    """A child that dies mid-page (out of memory, a crash) makes that page an extraction failure,
    not an `extraction_timeout`; the next page gets a fresh child."""
    import threading

    from jamdata.text.extract import Extractor

    ex = Extractor(60.0)
    assert "Good record number 2" in ex.extract(html_page(2).decode())
    child = ex.child.proc
    threading.Timer(0.5, child.kill).start()
    with pytest.raises(RuntimeError, match="extraction process died"):
        ex.extract(slow_page().decode())
    assert "Good record number 4" in ex.extract(html_page(4).decode())
    assert ex.child.proc.pid != child.pid
    ex.close()
