"""The report tells the truth: quality scores get real statistics, reject reasons are grouped by
a stable code, same-named datasets are all reported, and run-level warnings name what a person
must know (empty sources, wrong formats, budget misses, lossy tokenizers, shadowed names)."""

import json

import numpy as np
import pytest
import sentencepiece as spm

from jamdata.manifest import build_manifest, describe_shard, write_manifest
from jamdata.stats import aggregate as agg
from jamdata.stats.collect import expand_dirs_noting, inspect_datasets
from jamdata.stats.warnings import run_warnings
from pipelines.common import parquet_shard_writer
from pipelines.stats import run_stats
from schemas import REJECT
from schemas.records import reject_reason, reject_record, split_reason
from tests.test_stats import make_documents, make_rejects


# -- quality-score statistics ---------------------------------------------------------------------
def test_values_below_one_get_their_own_bins():
    d = agg.dist(np.linspace(0.01, 1.0, 1000))
    assert len(d["hist"]) > 20  # was: everything in one bin
    hist = [[*agg.bin_edges(int(b)), c] for b, c in d["hist"].items()]
    assert all(0 < lo < hi <= 1.13 for lo, hi, _ in hist)


def test_quality_scores_use_linear_bins():
    """Scores crowd near 1 (0.96-0.99 in the demo): linear bins of 0.01 tell them apart."""
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.95, 1.0, agg.EXACT_CAP + 10_000)
    d = agg.merge(agg.dist(scores[:100_000], unit=True), agg.dist(scores[100_000:], unit=True))
    assert d["scale"] == "unit" and len(d["hist"]) == 5 and d["values"] is None
    p = agg.percentiles(d)
    assert all(abs(p[f"p{q}"] - np.percentile(scores, q)) <= 0.01 for q in (10, 50, 90))
    with pytest.raises(ValueError):
        agg.merge(d, agg.dist([0.5]))


def test_percentiles_past_the_exact_cap_are_not_zero():
    rng = np.random.default_rng(0)
    values = rng.uniform(0.05, 1.0, agg.EXACT_CAP + 50_000)
    d = agg.merge(agg.dist(values[:150_000]), agg.dist(values[150_000:]))
    assert d["values"] is None  # histogram percentiles
    p = agg.percentiles(d)
    for q in (10, 50, 90):
        assert p[f"p{q}"] == pytest.approx(np.percentile(values, q), rel=0.07)
    assert agg.percentiles(agg.dist([0.0, 0.0, 0.5]))["p1"] == 0.0  # zeros still have their bin


# -- reject reasons: a stable code plus a detail ----------------------------------------------------
def test_split_reason_codes():
    assert split_reason("http_status: 404 Not Found") == ("http_status", "404 Not Found")
    assert split_reason("bad_warc_record: truncated at byte 123") == ("bad_warc_record", "truncated at byte 123")
    assert split_reason("image 'https://x.org/a.jpg' refused (not_allowed): outside the store")[0] == "not_allowed"
    assert split_reason("exact duplicate of c4/79c3b03ebedb6806")[0] == "exact_duplicate_of"
    assert split_reason("exact duplicate of c4/0000000000000001")[0] == "exact_duplicate_of"
    assert split_reason("document 12 has 3 images over https://a.b/c")[0] == "document_has_images_over"
    assert reject_reason("too_short", "12 words") == "too_short: 12 words"
    with pytest.raises(ValueError):
        reject_reason("Too Short")
    rec = reject_record("x/1", "c4", "filter", "too_short", "12 words")
    assert rec["reason"] == "too_short: 12 words" and rec["offset"] is None


def test_report_groups_rejects_by_code(tmp_path):
    """28 mmc4-like rejects whose reasons embed urls and numbers: a few rows, examples per row."""
    recs = []
    for i in range(28):
        if i % 2:
            reason = f"image 'https://img{i}.example.com/{i}.jpg' refused (http_status): {400 + i} error"
        elif i % 4 == 0:
            reason = f"document {i} has {i + 3} images but {i} sentences"
        else:
            reason = f"no_text: part {i} of doc {i * 7}"
        recs.append({"id": f"d{i}", "source": "mmc4", "stage": "interleave", "reason": reason, "snippet": f"s{i}"})
    root = tmp_path / "instruct-rejects"
    shards = parquet_shard_writer(REJECT)(str(root), "part-00000", recs)
    write_manifest(str(root), build_manifest("rejects", shards, {}))
    stats = run_stats([str(root)], str(tmp_path / "r"))
    counts = stats["datasets"]["instruct-rejects"]["groups"]["mmc4"]["rejects"]["counts"]
    assert counts == {
        "interleave: http_status": 14,
        "interleave: document_has_images_but_sentences": 7,
        "interleave: no_text": 7,
    }
    html = (tmp_path / "r" / "report.html").read_text()
    assert html.count("interleave: http_status") >= 1 and "img1.example.com" not in html.split("Details")[0]
    assert "Why records were dropped" in html and "error" in html  # the detail is shown as an example


# -- datasets and their names ---------------------------------------------------------------------
def test_two_runs_with_the_same_dataset_name_are_both_reported(tmp_path):
    make_documents(tmp_path / "runA" / "text-clean", {"c4": 2})
    make_documents(tmp_path / "runB" / "text-clean", {"c4": 5})
    datasets, shadowed = expand_dirs_noting([str(tmp_path / "runA"), str(tmp_path / "runB")])
    assert sorted(datasets) == ["runB/text-clean", "text-clean"]
    stats = run_stats([str(tmp_path / "runA"), str(tmp_path / "runB")], str(tmp_path / "r"), fast=True)
    assert stats["datasets"]["runB/text-clean"]["manifest"]["totals"]["records"] == 5
    assert [w["code"] for w in stats["warnings"]] == ["dataset_shadowed"]
    assert shadowed[0][0] == "text-clean"


def test_empty_rejects_are_good_news(tmp_path):
    root = tmp_path / "text-clean-rejects"
    write_manifest(str(root), build_manifest("rejects", [], {}))
    run_stats([str(root)], str(tmp_path / "r"))
    html = (tmp_path / "r" / "report.html").read_text()
    assert "No record was rejected" in html and "has no records" not in html


# -- run-level warnings from the manifests --------------------------------------------------------
def _clean_manifest(root, funnel, passed_over=None, sources=("c4", "planted")):
    config = {"text": {"sources": {s: {"inputs": [{"format": "wet", "paths": ["x"]}]} for s in sources}}}
    summary = {"funnel": funnel, "rejected": {}}
    if passed_over:
        summary["passed_over"] = passed_over
    (root).mkdir(parents=True)
    write_manifest(str(root), build_manifest("documents", [], config, summary=summary))


def _row(n_in, n_out):
    return {"docs_in": n_in, "docs_out": n_out, "bytes_in": 10 * n_in, "bytes_out": 10 * n_out}


def test_warnings_name_what_went_wrong(tmp_path):
    run = tmp_path / "run"
    _clean_manifest(
        run / "text-clean",
        {
            "c4": {s: _row(10, 10) for s in ("read", "clean", "filter", "dedup")},
            "books": {s: _row(4, 4) for s in ("read", "clean", "filter", "dedup")},
            "planted": {s: _row(0, 0) for s in ("read", "clean", "filter", "dedup")},
        },
        {"planted": {"warc response": 16, "warc request": 17}},
        sources=("c4", "planted", "books", "gone"),
    )
    tok = run / "tokenizer"
    tok.mkdir()
    (tok / "tokenizer.model").write_bytes(b"x")
    write_manifest(
        str(tok),
        build_manifest(
            "tokenizer",
            [describe_shard(str(tok), "tokenizer.model")],
            {},
            summary={"byte_fallback": False, "unk_share": 0.43},
        ),
    )
    tt = run / "text-tokens"
    tt.mkdir()
    write_manifest(
        str(tt),
        build_manifest(
            "text_tokens",
            [],
            {},
            summary={"budget_tokens": 1000, "sources": {"c4": {"target": 100, "tokens": 1300, "documents": 13}}},
        ),
    )
    stats = run_stats([str(run)], str(tmp_path / "r"), fast=True)
    by_code = {}
    for w in stats["warnings"]:
        by_code.setdefault(w["code"], []).append(w)
    assert by_code["format_matched_nothing"][0]["source"] == "planted"
    assert "warc request=17, warc response=16" in by_code["format_matched_nothing"][0]["message"]  # by count
    assert by_code["source_read_nothing"][0]["source"] == "gone"  # configured, never in the funnel
    assert {w["source"] for w in by_code["budget_overshoot"]} == {"c4", None}
    assert by_code["source_not_sampled"][0]["source"] == "books"
    assert {"no_byte_fallback", "unk_tokens"} <= set(by_code)
    html = (tmp_path / "r" / "report.html").read_text()
    assert html.index("Warnings (") < html.index("At a glance") < html.index("Details")
    assert "no_byte_fallback" in html


def test_no_warnings_for_a_clean_run(tmp_path):
    run = tmp_path / "run"
    make_documents(run / "text-clean", {"c4": 3})
    make_rejects(run / "text-clean-rejects")
    assert run_warnings(inspect_datasets(expand_dirs_noting([str(run)])[0])) == []


# -- tokenizers that lose text ----------------------------------------------------------------------
def _varint(b, i):
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return v, i


def _fields(b, start, end):
    """(field number, value start, value end) of a protobuf message's varint and bytes fields."""
    i = start
    while i < end:
        tag, i = _varint(b, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            j = i
            _, i = _varint(b, i)
            yield field, j, i
        elif wire == 2:
            n, i = _varint(b, i)
            yield field, i, i + n
            i += n
        else:
            i += 4 if wire == 5 else 8


def without_byte_fallback(model: bytes) -> bytes:
    """The same real model with byte fallback switched off (TrainerSpec.byte_fallback = false and
    its byte pieces marked unused, as SentencePiece requires), edited in the protobuf bytes."""
    data = bytearray(model)
    for field, s, e in list(_fields(data, 0, len(data))):
        for sub, j, _ in _fields(data, s, e) if field in (1, 2) else ():
            if field == 2 and sub == 35:  # trainer_spec.byte_fallback
                data[j] = 0
            if field == 1 and sub == 3 and data[j] == 6:  # piece type BYTE -> UNUSED
                data[j] = 5
    return bytes(data)


@pytest.fixture(scope="session")
def no_fallback_model(sp_model_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "no-byte-fallback.model"
    path.write_bytes(without_byte_fallback(sp_model_path.read_bytes()))
    return path


def test_tokenizer_without_byte_fallback_is_seen(sp_model_path, no_fallback_model):
    from jamdata.text.tokenizer import has_byte_fallback, tokenizer_settings, unk_share

    good = spm.SentencePieceProcessor(model_file=str(sp_model_path))
    bad = spm.SentencePieceProcessor(model_file=str(no_fallback_model))
    assert bad.piece_to_id("<0x41>") != bad.unk_id()  # the byte pieces are still there...
    assert not has_byte_fallback(bad) and has_byte_fallback(good)  # ...but never used
    assert tokenizer_settings(bad)["byte_fallback"] is False
    novel = ["吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。🐈 " * 20]
    assert unk_share(good, novel) == 0.0
    assert unk_share(bad, novel) > 0.01


def test_vocab_mismatch_says_rebuild_the_tokenizer(sp_model_path, tmp_path):
    from jamdata.text.tokenizer import TextTokenizer, write_tokenizer_dataset
    from jamdata.vocab import VocabMismatchError
    from pipelines.image_tokenize import check_vocab_against

    tok = TextTokenizer(str(sp_model_path), 8192)
    write_tokenizer_dataset(str(tmp_path / "tokenizer"), tok.proto, 8192, {})
    with pytest.raises(VocabMismatchError) as e:
        check_vocab_against(str(tmp_path / "tokenizer"), TextTokenizer(str(sp_model_path), 1024).vocab)
    msg = str(e.value)
    assert "built for 8192 image codes" in msg and "rebuild the tokenizer dataset" in msg
    assert "codebook_size: 1024" in msg and "--stage tokenizer --force" in msg


def test_stats_json_warnings_roundtrip(tmp_path):
    make_documents(tmp_path / "text-clean", {"c4": 2})
    run_stats([str(tmp_path / "text-clean")], str(tmp_path / "r"), fast=True)
    assert json.loads((tmp_path / "r" / "stats.json").read_text())["warnings"] == []


def test_real_mmc4_rejects_share_their_codes(corpus):
    """The real mmc4 sample without its images: 60 rejects, each reason unique (urls, counts),
    one code."""
    from jamdata.interleaved.document import RejectedDocument
    from jamdata.interleaved.sources import mmc4_document

    reasons = []
    for line in (corpus / "interleaved" / "mmc4-sample.jsonl").read_text().splitlines():
        try:
            mmc4_document(json.loads(line), "mmc4-sample.jsonl", 0, None)
        except RejectedDocument as e:
            reasons.append(e.reason)
    assert len(reasons) == 60 and len(set(reasons)) > 20
    assert {split_reason(r)[0] for r in reasons} == {"too_few_images"}


def test_assumed_image_codes_are_said(sp_model_path, tmp_path):
    """A config without a vqvae section: the tokenizer dataset says it assumed 8192 image codes."""
    import subprocess
    import sys

    import yaml

    from tests.conftest import REPO

    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg.pop("vqvae", None)
    cfg["text"]["tokenizer"]["model"] = str(sp_model_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jamdata.cli",
            "run",
            "--config",
            str(tmp_path / "c.yaml"),
            "--out",
            str(tmp_path / "run"),
            "--stage",
            "tokenizer",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "warning [image_codes_assumed]" in r.stdout and "assumes 8192 image codes" in r.stdout
    summary = json.loads((tmp_path / "run" / "tokenizer" / "manifest.json").read_text())["summary"]
    assert summary["image_codes_assumed"] is True
