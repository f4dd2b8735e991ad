"""text-clean's inputs listed and split inside the pipeline: the job graph holds patterns, not
files; big files are read in parts; Common Crawl line dedup within a file goes through the bounded
(shuffled) path; outputs equal in-process reading and are byte-identical for 1 and 2 workers."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest

from jamdata.cli import main as cli_main
from jamdata.config import Config
from jamdata.text.clean import CleanOptions, clean_records
from jamdata.text.readers import ReadOptions, is_reject, read_file
from pipelines.text_clean import build_pipeline, run
from pipelines.text_clean_settings import clean_settings
from pipelines.text_inputs import plan_patterns
from schemas.records import document_row
from tests.test_text_splits import _pages, write_multistream

NO_FILTERS = {"chains": {"default": [], "commoncrawl": [], "c4": [], "wikipedia": []}}
NO_DEDUP = {"exact": False, "minhash": {"enabled": False}, "book_overlap": {"enabled": False}}


def _config(sources: dict, **clean) -> dict:
    return {
        "run": {"seed": 3},
        "text": {
            "sources": sources,
            "clean": {
                "shards": 2,
                "reject_shards": 1,
                "line_dedup_min_docs": 3,
                "filters": NO_FILTERS,
                "dedup": NO_DEDUP,
                **clean,
            },
        },
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, corpus, sample_data) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    (d / "c4").mkdir()
    real = gzip.decompress((corpus / "c4" / "c4-sample.01.json.gz").read_bytes())
    (d / "c4" / "c4-plain.jsonl").write_bytes(real)  # ~20 kB: parts of 4 kB
    (d / "wiki").mkdir()
    header, pages, footer = _pages(corpus)
    write_multistream(d / "wiki", header, pages[:40], footer, per_stream=5)  # index beside it, not an input
    return {"c4": d / "c4", "wiki": d / "wiki", "wet": sample_data / "text" / "commoncrawl" / "sample.warc.wet.gz"}


def _sources(inputs) -> dict:
    return {
        "c4": {"format": "c4", "paths": [str(inputs["c4"])]},
        "wikipedia": {"format": "wiki_xml", "paths": [str(inputs["wiki"] / "*")]},
        "commoncrawl": {"format": "wet", "paths": [str(inputs["wet"])]},
    }


def _run(inputs, out: Path, workers: int) -> dict:
    cfg = Config(_config(_sources(inputs), split_bytes=4096))
    return run(cfg, str(out / "text-clean"), str(out / "text-clean-rejects"), workers, log_fn=lambda _l: None)


@pytest.fixture(scope="module")
def one(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    _run(inputs, out, 1)
    return out


def _docs(out: Path) -> dict[str, dict]:
    return {r["id"]: r for f in sorted((out / "text-clean").glob("*/*.parquet")) for r in pq.read_table(f).to_pylist()}


def test_parts_and_per_file_line_dedup_give_what_in_process_reading_gives(one, inputs):
    ropts, copts = ReadOptions(), CleanOptions(line_dedup_min_docs=3)
    expected = {}
    for fmt, path, id_path in [
        ("c4", inputs["c4"] / "c4-plain.jsonl", "c4-plain.jsonl"),
        ("wet", inputs["wet"], "sample.warc.wet.gz"),
    ]:
        source = "c4" if fmt == "c4" else "commoncrawl"
        for rec in clean_records(read_file(str(path), fmt, source, ropts, id_path), fmt, copts):
            if not is_reject(rec):
                expected[rec["id"]] = rec
    got = _docs(one)
    for doc_id, rec in expected.items():
        row = document_row(rec)  # the metadata dict as the writer writes it
        assert {k: got[doc_id][k] for k in ("text", "url", "metadata")} == {
            k: row[k] for k in ("text", "url", "metadata")
        }
    removed = [
        json.loads(d["metadata"]).get("boilerplate_lines_removed", 0)
        for d in got.values()
        if d["source"] == "commoncrawl"
    ]
    assert sum(removed) > 0  # the sample's repeated lines went, as in one process
    manifest = json.loads((one / "text-clean" / "manifest.json").read_text())
    funnel = manifest["summary"]["funnel"]
    assert funnel["c4"]["read"]["bytes_in"] == (inputs["c4"] / "c4-plain.jsonl").stat().st_size  # parts add up
    assert funnel["wikipedia"]["read"]["docs_in"] == 40  # every page once; the index is not an input
    assert not any("index" in p for p in manifest["inputs"]) and len(manifest["inputs"]) == 3


def test_two_workers_byte_identical(one, inputs, tmp_path):
    _run(inputs, tmp_path, 2)

    def digest(root: Path) -> dict:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.parquet"))
        } | {"manifest": (root / "text-clean" / "manifest.json").read_text()}

    assert digest(tmp_path) == digest(one)


def test_graph_holds_patterns_not_files(tmp_path):
    """The pipeline graph is as big for 300 matched files as for 3 (297 more names of ~70 bytes would
    add ~20 kB; pickled steps vary by a few bytes from build to build): listing is a step of it."""
    sizes = []
    for name, n in (("few", 3), ("lot", 300)):
        d = tmp_path / name
        d.mkdir()
        for i in range(n):
            (d / f"file-{i:05d}-with-a-long-name-as-crawls-have.json.gz").write_bytes(gzip.compress(b'{"text": "x"}\n'))
        text_cfg = Config(_config({"c4": {"format": "c4", "paths": [str(d / "*.json.gz")]}})).section("text")
        p = beam.Pipeline()
        build_pipeline(
            p, plan_patterns(text_cfg), clean_settings(text_cfg), str(tmp_path / "o"), str(tmp_path / "r"), {}
        )
        sizes.append(len(p.to_runner_api().SerializeToString()))
    assert abs(sizes[1] - sizes[0]) < 1000, sizes


def test_unmatched_pattern_is_one_line_naming_it(tmp_path, capsys):
    import yaml

    (tmp_path / "a.json.gz").write_bytes(gzip.compress(b'{"text": "x"}\n'))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            _config({"c4": {"format": "c4", "paths": [str(tmp_path / "a.json.gz"), str(tmp_path / "*.jsonl")]}})
        )
    )
    assert cli_main(["text", "clean", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("*.jsonl: the pattern matches no file") and "Traceback" not in "\n".join(err)


def test_multistream_index_is_not_read_as_a_dump(inputs):
    from pipelines.text_inputs import InputPattern, list_pattern

    files = list_pattern(InputPattern("wikipedia", "wiki_xml", str(inputs["wiki"]), str(inputs["wiki"])))
    assert [f.id_path for f in files] == ["enwiki-20240101-pages-articles-multistream.xml.bz2"]
    assert bz2.decompress((inputs["wiki"] / files[0].id_path).read_bytes()).count(b"<page>") == 40
