"""Statistics report: figures agree with counts recomputed from the shards; odd datasets are
reported, not crashed on; the HTML opens in a real headless browser."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from jamdata.formats.megatron import IndexedDataset, IndexedDatasetWriter
from jamdata.formats.wds import TarShardWriter, iter_samples
from jamdata.manifest import build_manifest, describe_shard, write_manifest
from jamdata.vocab import JointVocab
from pipelines.common import parquet_shard_writer
from pipelines.stats import run_stats
from schemas import DOCUMENT, REJECT

VOCAB = JointVocab(1000, "f" * 64, n_image_codes=64)


def make_documents(root, docs_per_source):
    write = parquet_shard_writer(DOCUMENT, "source")
    shards = []
    for src, n in docs_per_source.items():
        recs = [
            {
                "id": f"{src}/{i}",
                "source": src,
                "text": "word " * (i + 1) + "é",
                "url": None,
                "metadata": "{}",
                "language": "en" if i % 3 else "fr",
                "quality_score": 0.5,
            }
            for i in range(n)
        ]
        if recs:
            shards += write(str(root), f"{src}/part-00000", recs)
    write_manifest(
        str(root),
        build_manifest(
            "documents", shards, {}, summary={"funnel": {"c4": {"in": 10, "out": docs_per_source.get("c4", 0)}}}
        ),
    )
    return root


def make_rejects(root):
    recs = [
        {
            "id": f"r{i}",
            "source": "c4",
            "stage": "c4_quality",
            "reason": ["too short", "lorem ipsum"][i % 2],
            "snippet": f"bad text {i}",
        }
        for i in range(5)
    ]
    shards = parquet_shard_writer(REJECT)(str(root), "part-00000", recs)
    write_manifest(str(root), build_manifest("rejects", shards, {}))


def make_text_tokens(root):
    shards = []
    rng = np.random.default_rng(0)
    for src in ("c4", "wikipedia"):
        (root / src).mkdir(parents=True, exist_ok=True)
        w = IndexedDatasetWriter(str(root / src / "part-00000"), VOCAB.dtype)
        for _ in range(7):
            w.add_document(np.append(rng.integers(0, 1000, rng.integers(3, 50)), VOCAB.eos_id))
        docs, toks = w.finalize()
        shards.append(describe_shard(str(root), f"{src}/part-00000.bin", group=src))
        shards.append(describe_shard(str(root), f"{src}/part-00000.idx", records=docs, tokens=toks, group=src))
    write_manifest(str(root), build_manifest("text_tokens", shards, {}, VOCAB))


def make_image_caption(root):
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    with TarShardWriter(str(root / "part-00000.tar")) as w:
        for i in range(6):
            codes = rng.integers(0, 40, (4, 4)).astype(np.uint16)  # codes 40..63 stay dead
            cap = np.arange(i + 2, dtype=np.int32)
            toks = np.concatenate([cap, [VOCAB.boi_id], VOCAB.image_ids(codes.ravel()), [VOCAB.eoi_id]]).astype(
                np.int32
            )
            w.write(
                f"s{i}",
                {
                    "json": {"caption": "x" * (i + 5), "width": 100 + i, "height": 80, "order": "caption_first"},
                    "image_codes.npy": codes,
                    "caption_ids.npy": cap,
                    "tokens.npy": toks,
                },
            )
        n = w.records
    shard = describe_shard(str(root), "part-00000.tar", records=n, tokens=None)
    write_manifest(str(root), build_manifest("image_caption", [shard], {}, VOCAB))


def make_interleaved(root):
    root.mkdir(parents=True)
    with TarShardWriter(str(root / "part-00000.tar")) as w:
        for i in range(4):
            toks = [5, 6, VOCAB.break_id] + [VOCAB.boi_id] + list(VOCAB.image_ids([1, 2])) + [VOCAB.eoi_id] * 1
            toks = toks * (i + 1)
            mask = ([0] * 3 + [1] * 4) * (i + 1)
            w.write(
                f"k{i}",
                {
                    "tokens.npy": np.array(toks, np.int32),
                    "loss_mask.npy": np.array(mask, np.uint8),
                    "json": {"source": "howto", "segments": [{"modality": "text"}, {"modality": "image"}] * (i + 1)},
                },
            )
    write_manifest(
        str(root), build_manifest("interleaved", [describe_shard(str(root), "part-00000.tar", records=4)], {}, VOCAB)
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    make_documents(root / "text-clean", {"c4": 5, "wikipedia": 3})
    make_rejects(root / "text-clean-rejects")
    make_text_tokens(root / "text-tokens")
    make_image_caption(root / "image-caption")
    make_interleaved(root / "instruct")
    return root


def test_figures_match_shards(run_dir, tmp_path):
    stats = run_stats([str(run_dir)], str(tmp_path / "report"))
    on_disk = json.loads((tmp_path / "report" / "stats.json").read_text())
    assert on_disk == json.loads(json.dumps(stats))
    ds = stats["datasets"]
    assert set(ds) == {"text-clean", "text-clean-rejects", "text-tokens", "image-caption", "instruct"}
    # documents: counts and char sums per source, recomputed from parquet
    for src in ("c4", "wikipedia"):
        t = pq.read_table(run_dir / "text-clean" / src / "part-00000.parquet").to_pylist()
        g = ds["text-clean"]["groups"][src]
        assert g["chars"]["count"] == len(t)
        assert g["chars"]["sum"] == sum(len(r["text"]) for r in t)
        assert g["bytes"]["sum"] == sum(len(r["text"].encode()) for r in t)
        assert g["language"]["counts"] == {
            lang: sum(r["language"] == lang for r in t) for lang in {r["language"] for r in t}
        }
        assert g["chars"]["max"] == max(len(r["text"]) for r in t)
    # rejects by reason code (free-text reasons get a code made of their words)
    assert ds["text-clean-rejects"]["groups"]["c4"]["rejects"]["counts"] == {
        "c4_quality: too_short": 3,
        "c4_quality: lorem_ipsum": 2,
    }
    # text tokens per source from the .idx/.bin
    for src in ("c4", "wikipedia"):
        d = IndexedDataset(str(run_dir / "text-tokens" / src / "part-00000"))
        lengths = [len(d[i]) for i in range(len(d))]
        g = ds["text-tokens"]["groups"][src]["tokens"]
        assert (g["count"], g["sum"], g["p50"]) == (
            len(lengths),
            sum(lengths),
            float(np.percentile(lengths, 50, method="inverted_cdf")),
        )
    # codebook usage recomputed from the tar
    codes = np.concatenate(
        [
            s.decoded()["image_codes.npy"].ravel()
            for s in iter_samples(str(run_dir / "image-caption" / "part-00000.tar"))
        ]
    )
    cu = ds["image-caption"]["groups"]["all"]["codes"]
    assert cu["counts"] == np.bincount(codes, minlength=64).tolist()
    assert cu["used"] == len(set(codes.tolist())) and cu["dead_share"] == pytest.approx(1 - cu["used"] / 64)
    assert ds["image-caption"]["groups"]["all"]["width"]["sum"] == sum(100 + i for i in range(6))
    # interleaved
    il = ds["instruct"]["groups"]["all"]
    assert il["images_per_sample"]["sum"] == 1 + 2 + 3 + 4
    assert il["loss_tokens"]["sum"] == 4 * (1 + 2 + 3 + 4)
    assert il["segments_per_sample"]["max"] == 8
    assert stats["overall"]["records"] == 8 + 5 + 14 + 6 + 4
    html = (tmp_path / "report" / "report.html").read_text()
    assert "funnel" in html and "codebook usage" in html and "data:image/png;base64," in html
    assert len(list((tmp_path / "report" / "plots").glob("*.png"))) >= 5


def test_odd_datasets_are_reported(tmp_path):
    make_documents(tmp_path / "empty", {})
    make_documents(tmp_path / "one", {"c4": 1})
    make_documents(tmp_path / "missing", {"c4": 2, "books": 2})
    (tmp_path / "missing" / "books" / "part-00000.parquet").unlink()
    (tmp_path / "nothing").mkdir()
    stats = run_stats([str(tmp_path / n) for n in ("empty", "one", "missing", "nothing")], str(tmp_path / "r"))
    ds = stats["datasets"]
    assert ds["empty"]["status"] == "empty"
    assert ds["one"]["status"] == "ok" and ds["one"]["groups"]["c4"]["chars"]["count"] == 1
    assert ds["missing"]["status"] == "problems" and "missing" in ds["missing"]["problems"][0]
    assert ds["missing"]["groups"]["c4"]["chars"]["count"] == 2  # the rest is still reported
    assert ds["nothing"]["status"] == "not a dataset"
    html = (tmp_path / "r" / "report.html").read_text()
    assert "no records" in html and "Problems found" in html


def test_fast_path_and_compare_cli(run_dir, tmp_path):
    fast = run_stats([str(run_dir)], str(tmp_path / "fast"), fast=True)
    assert fast["datasets"]["text-tokens"]["shard_totals"]["c4"]["records"] == 7
    assert fast["datasets"]["text-tokens"]["groups"] == {}
    b = tmp_path / "b"
    shutil.copytree(run_dir, b)
    make_documents(b / "text-clean", {"c4": 9, "wikipedia": 3})
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "jamdata.cli",
            "stats",
            "--compare",
            str(run_dir),
            str(b),
            "--out",
            str(tmp_path / "cmp"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    row = next(r for r in cmp["rows"] if r["dataset"] == "text-clean" and r["figure"] == "records")
    assert (row["A"], row["B"], row["change"]) == (8, 12, "+50.0%")


def test_report_opens_in_headless_browser(run_dir, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Chromium not installed (apt-get install chromium) — browser check skipped")
    run_stats([str(run_dir)], str(tmp_path / "rep"))
    shot = tmp_path / "shot.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'prof'}",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", (tmp_path / "rep" / "report.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0 and "jam dataset report" in dom.stdout and "codebook usage" in dom.stdout
    subprocess.run(
        [
            chromium,
            *flags,
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            (tmp_path / "rep" / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 10_000
