"""The text-clean pipeline end to end on the bundled sample plus broken inputs: content of the
outputs, the funnel, rejects for every kind of bad input, and byte-identical outputs for 1 and 2
worker processes."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from jamdata.cli import main as cli_main
from jamdata.config import Config
from jamdata.manifest import read_manifest, validate_dataset
from pipelines.stages import StageContext
from pipelines.text_clean import run_stage
from pipelines.text_funnel import format_funnel, funnel_from_counts

PROSE = (
    "The harbour was quiet in the early morning, and the fishing boats rocked gently at their moorings "
    "while gulls argued over scraps on the stone quay. "
) * 4


def _bad_inputs(d: Path) -> dict[str, list[str]]:
    d.mkdir(parents=True)
    good = json.dumps({"text": PROSE, "url": "https://ok.example/"}).encode() + b"\n"
    lines = [good, b'{"text": "broken\n', b'{"text": "caf\xe9"}\n', b'{"text": ""}\n']
    (d / "bad-lines.json.gz").write_bytes(gzip.compress(b"".join(lines)))
    many = b"".join(
        json.dumps({"text": f"{PROSE} Entry {i}.", "url": f"https://t.example/{i}"}).encode() + b"\n"
        for i in range(300)
    )
    comp = gzip.compress(many)
    (d / "truncated.json.gz").write_bytes(comp[: len(comp) // 2])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("fig.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"png"))
    (d / "9999.00001.tar.gz").write_bytes(gzip.compress(buf.getvalue()))
    return {"c4": [str(d / "bad-lines.json.gz"), str(d / "truncated.json.gz")], "arxiv": [str(d / "9999.00001.tar.gz")]}


@pytest.fixture(scope="module")
def config_path(tmp_path_factory, sample_data) -> Path:
    root = tmp_path_factory.mktemp("textclean")
    bad = _bad_inputs(root / "bad")
    t = sample_data / "text"
    cfg = {
        "run": {"seed": 7},
        "text": {
            "sources": {
                "commoncrawl": {
                    "inputs": [
                        {"format": "warc", "paths": [str(t / "commoncrawl/sample.warc.gz")]},
                        {"format": "wet", "paths": [str(t / "commoncrawl/sample.warc.wet.gz")]},
                    ]
                },
                "c4": {"inputs": [{"format": "c4", "paths": [str(t / "c4")] + bad["c4"]}]},
                "wikipedia": {"format": "wiki_xml", "paths": str(t / "wikipedia")},
                "books": {
                    "inputs": [
                        {"format": "pile", "paths": [str(t / "books/books3-sample.jsonl.zst")]},
                        {"format": "text", "paths": [str(t / "books/gutenberg")]},
                    ]
                },
                "arxiv": {"inputs": [{"format": "arxiv", "paths": [str(t / "arxiv")] + bad["arxiv"]}]},
            },
            "clean": {"shards": 2, "reject_shards": 1, "line_dedup_min_docs": 3},
        },
    }
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def run_one(config_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    assert cli_main(["text", "clean", "--config", str(config_path), "--out", str(out), "--workers", "1"]) == 0
    return out


def _docs(out: Path) -> dict[str, list[dict]]:
    by = {}
    for f in sorted((out / "text-clean").glob("*/*.parquet")):
        by.setdefault(f.parent.name, []).extend(pq.read_table(f).to_pylist())
    return by


def _rejects(out: Path) -> list[dict]:
    return [r for f in sorted((out / "text-clean-rejects").glob("*/*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_outputs_are_clean_documents(run_one):
    docs = _docs(run_one)
    assert sorted(docs) == ["arxiv", "books", "c4", "commoncrawl", "wikipedia"]
    cc = {d["url"]: d["text"] for d in docs["commoncrawl"]}
    assert "http://mirror.example.org/rain-barrels" not in cc  # near-duplicate removed
    assert all("Sign up for our newsletter" not in t and "Home | About" not in t for t in cc.values())
    assert "façade" in cc["http://library.example.net/history"]  # UTF-8 served as ISO-8859-1
    assert "café kitchen" in cc["http://bakery.example.org/bread"]  # cp1252 declared in <meta>
    wiki = {d["url"].rsplit("/", 1)[1]: d["text"] for d in docs["wikipedia"]}
    assert sorted(wiki) == ["Orrin_Lighthouse", "Tessaly_bread", "Vellmar_River"]
    assert wiki["Vellmar_River"].startswith("The Vellmar River is a river in the northern lowlands")
    assert all(m not in t for t in wiki.values() for m in ("[[", "{{", "<ref", "Category:", "12,400"))
    (book_a, book_b) = sorted(d["text"] for d in docs["books"])
    assert book_a.startswith("A Field Guide") and book_b.startswith("THE LIGHTHOUSE AT GULL POINT")
    assert "Gutenberg" not in book_b and "LICENSE" not in book_b
    (paper,) = [d["text"] for d in docs["arxiv"]]
    assert paper.startswith("\\section{Introduction}\nLarge text corpora") and "\\textsc{Tidewater}" in paper
    assert "\\sys" not in paper and "thebibliography" not in paper and "internal note" not in paper
    assert "\\lVert s \\rVert" in paper and "J(A, B)" in paper
    c4 = [d for d in docs["c4"]]
    urls = sorted(d["url"] for d in c4)  # the planted near- and exact duplicates are gone
    assert len(urls) == 4 and {
        "https://green.example.net/overwatering",
        "https://rail.example.org/cross-country",
    } <= set(urls)
    assert len({"https://sky.example.org/naked-eye", "https://copy.example.com/sky"} & set(urls)) == 1
    assert len({"https://soil.example.com/compost-basics", "https://scraper.example.biz/compost"} & set(urls)) == 1
    # of each duplicate group the member with the smallest id is kept (ids do not depend on where
    # the inputs live, so neither does the choice)
    kept_ids = {d["id"] for d in c4}
    for r in _rejects(run_one):
        if r["source"] == "c4" and r["stage"].startswith("dedup"):
            kept = re.search(r"duplicate of (\S+)", r["reason"]).group(1)
            assert kept in kept_ids and kept < r["id"], r
    assert all(d["language"] == "en" and d["quality_score"] is not None for v in docs.values() for d in v)
    assert (
        validate_dataset(str(run_one / "text-clean")) == []
        and validate_dataset(str(run_one / "text-clean-rejects")) == []
    )


def test_every_bad_input_is_in_the_rejects(run_one):
    rejects = _rejects(run_one)
    got = {(r["source"], r["stage"], r["reason"].split(":")[0].split(" of ")[0]) for r in rejects}
    expected = {
        ("c4", "read", "malformed JSON"),
        ("c4", "read", "invalid UTF-8 (byte 0xe9)"),
        ("c4", "read", "empty document"),
        ("c4", "read", "unreadable from here on"),
        ("arxiv", "read", "archive has no .tex file"),
        ("commoncrawl", "read", "not an HTML response (image/png)"),
        ("wikipedia", "read", "wikipedia redirect"),
        ("wikipedia", "read", "wikipedia namespace 1 (not an article)"),
        ("c4", "dedup_exact", "exact duplicate"),
        ("c4", "dedup_minhash", "near-duplicate"),
        ("commoncrawl", "dedup_minhash", "near-duplicate"),
        ("books", "dedup_book_overlap", "near-duplicate"),
    }
    assert expected <= got, expected - got
    truncated = [r for r in rejects if r["reason"].startswith("unreadable")]
    assert truncated[0]["file"].endswith("truncated.json.gz") and truncated[0]["offset"] > 0
    assert "EOFError" in truncated[0]["reason"]


def test_funnel_in_manifest(run_one, capsys):
    m = read_manifest(str(run_one / "text-clean"))
    funnel = m["summary"]["funnel"]
    c4 = funnel["c4"]
    assert c4["read"]["docs_in"] == c4["read"]["docs_out"] + 4  # malformed, invalid UTF-8, empty, truncation
    assert c4["clean"]["docs_in"] == c4["read"]["docs_out"]
    assert c4["dedup"]["docs_in"] == c4["filter"]["docs_out"] and c4["dedup"]["docs_out"] == len(_docs(run_one)["c4"])
    assert funnel["commoncrawl"]["clean"]["bytes_out"] < funnel["commoncrawl"]["read"]["bytes_out"]  # boilerplate lines
    total_kept = sum(s["dedup"]["docs_out"] for s in funnel.values())
    assert total_kept == m["totals"]["records"]
    assert m["summary"]["rejected"]["c4"]["read"] == 4
    table = format_funnel(funnel)
    assert table.splitlines()[0].split()[:2] == ["source", "stage"] and "wikipedia    read" in table


@pytest.mark.slow
def test_two_workers_byte_identical(run_one, config_path, tmp_path):
    ctx = StageContext(Config.load(config_path), tmp_path, workers=2)
    lines = run_stage(ctx)
    assert any(line.startswith("c4: ") for line in lines)

    def digest(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".jam.lock"
        }

    for name in ("text-clean", "text-clean-rejects"):
        one, two = digest(run_one / name), digest(tmp_path / name)
        assert one == two and "manifest.json" in one


def test_funnel_from_counts_chains_stages():
    f = funnel_from_counts(
        [
            (("c4", "read", "docs_in"), 5),
            (("c4", "read", "bytes_in"), 100),
            (("c4", "read", "docs_out"), 4),
            (("c4", "read", "bytes_out"), 400),
            (("c4", "clean", "docs_out"), 4),
            (("c4", "clean", "bytes_out"), 380),
            (("c4", "filter", "docs_out"), 3),
            (("c4", "filter", "bytes_out"), 300),
        ]
    )
    assert f["c4"]["filter"] == {"docs_in": 4, "bytes_in": 380, "docs_out": 3, "bytes_out": 300}
    assert f["c4"]["dedup"] == {"docs_in": 3, "bytes_in": 300, "docs_out": 0, "bytes_out": 0}


def test_config_errors_name_the_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"text": {"sources": {"c4": {"format": "c5", "paths": "x"}}}}))
    assert cli_main(["text", "clean", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 1
    assert "config key 'text.sources.c4.format': got 'c5' (allowed: warc, wet, c4" in capsys.readouterr().err
    cfg.write_text(
        yaml.safe_dump(
            {"text": {"sources": {"c4": {"format": "c4", "paths": str(tmp_path / "none")}}, "clean": {"shard": 2}}}
        )
    )
    assert cli_main(["text", "clean", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 1
    assert "no such file or directory" in capsys.readouterr().err


def test_filter_and_dedup_config_mistakes_fail_before_the_job(config_path, tmp_path, capsys):
    for override, key in (
        ("text.clean.filters.c4.min_sentence=3", "text.clean.filters.c4.min_sentence"),
        ("text.clean.dedup.minhash.band=3", "text.clean.dedup.minhash.band"),
    ):
        assert cli_main(["text", "clean", "--config", str(config_path), "--out", str(tmp_path), "--set", override]) == 1
        assert f"config key '{key}': unknown key" in capsys.readouterr().err
