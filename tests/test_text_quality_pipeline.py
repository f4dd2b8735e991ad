"""The new steps inside the text-clean pipeline: a German Wikipedia dump cleaned with its own
namespaces (from its siteinfo), decontamination (removed documents in the rejects) and PII
masking, each counted in the manifest's funnel summary."""

from __future__ import annotations

import bz2
import gzip
import json

import pyarrow.parquet as pq
import pytest
import yaml

from jamdata.cli import main as cli_main
from jamdata.manifest import read_manifest
from test_text_wiki_languages import dump_xml

PLANTED = (
    "Seventeen lighthouse keepers along the windy northern coast recorded every passing ship in "
    "leather logbooks that still survive in the harbour museum today"
)


@pytest.fixture(scope="module")
def run_out(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("quality_pipeline")
    (root / "wiki").mkdir()
    (root / "wiki" / "dewiki-pages-articles.xml.bz2").write_bytes(bz2.compress(dump_xml("de")))
    (root / "web").mkdir()
    with gzip.open(corpus / "c4/c4-sample.01.json.gz", "rt") as f:
        docs = [json.loads(line) for line in f]
    docs[3]["text"] += "\n" + PLANTED + ".\nContact us at help@shop.example.com or 10.0.0.12 today."
    docs[4]["text"] += "\nMail the author: someone@example.org please."
    with open(root / "web" / "c4.jsonl", "w") as f:
        f.write("".join(json.dumps(d) + "\n" for d in docs))
    (root / "eval.txt").write_text(PLANTED + "\n")
    cfg = {
        "run": {"seed": 1},
        "text": {
            "sources": {
                "wikipedia": {"format": "wiki_xml", "paths": str(root / "wiki")},
                "c4": {"format": "c4", "paths": str(root / "web" / "c4.jsonl")},
            },
            "clean": {
                "filters": {
                    "chains": {"wikipedia": ["min_length"], "c4": ["min_length", "decontaminate", "pii"]},
                    "min_length": {"min_words": 20},
                    "decontaminate": {"eval_sets": [str(root / "eval.txt")]},
                },
                "dedup": {"minhash": {"enabled": False}},
            },
        },
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = root / "out"
    assert cli_main(["text", "clean", "--config", str(root / "cfg.yaml"), "--out", str(out), "--workers", "1"]) == 0
    return out, docs


def _rows(path):
    return [r for f in sorted(path.glob("*/*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_german_dump_is_cleaned_with_its_namespaces(run_out):
    out, _ = run_out
    (doc,) = [d for d in _rows(out / "text-clean") if d["source"] == "wikipedia"]
    for bad in ("Kategorie", "Datei", "mini|", "Weblinks", "Einzelnachweise"):
        assert bad not in doc["text"]
    assert doc["text"].startswith("Die Lauter ist ein kleiner Fluss")


def test_decontaminated_document_is_in_the_rejects_and_pii_is_masked_and_counted(run_out):
    out, docs = run_out
    kept = {d["url"]: d for d in _rows(out / "text-clean") if d["source"] == "c4"}
    rejects = [r for r in _rows(out / "text-clean-rejects") if r["stage"] == "filter"]
    contaminated = [r for r in rejects if r["reason"].startswith("decontaminate:")]
    assert len(contaminated) == 1 and "eval.txt" in contaminated[0]["reason"]
    assert docs[3]["url"] not in kept
    assert "someone@example.org" not in kept[docs[4]["url"]]["text"]
    assert "<EMAIL_ADDRESS>" in kept[docs[4]["url"]]["text"]
    assert json.loads(kept[docs[4]["url"]]["metadata"])["pii_emails"] == 1
    summary = read_manifest(str(out / "text-clean"))["summary"]
    assert summary["filters"]["c4"]["decontaminate dropped"] == 1
    assert summary["filters"]["c4"]["pii emails masked"] == 1  # the contaminated page's e-mail is never counted
