"""Budget planner, sampler and the text-sample pipeline on real text (C4 web pages, Gutenberg books)."""

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jamdata.cli import main
from jamdata.config import Config
from jamdata.formats.megatron import IndexedDataset
from jamdata.manifest import build_manifest, describe_shard, read_manifest, validate_dataset, write_manifest
from jamdata.text import sampling
from jamdata.text.tokenizer import TextTokenizer
from jamdata.vocab import VocabMismatchError
from pipelines.stages import StageContext
from pipelines.text_sample import make_plan, run_stage
from pipelines.tokenizer_train import run_tokenizer_stage
from schemas import DOCUMENT
from schemas.records import SchemaError, to_table

EPOCHS = {"c4": 1.0, "books": 1.2, "commoncrawl": 4.0}
WANT_EPOCHS = {"c4": 0.9, "books": 0.8, "commoncrawl": 2.6}  # a partial epoch, and a repeated source
PART_TOKENS = 8_000  # parts of a 40k-token shard: several per shard


def write_documents(root: Path, docs: list[dict], per_shard: int = 40) -> Path:
    """A "documents" dataset exactly as the cleaning stage lays it out."""
    shards = []
    by_source: dict[str, list[dict]] = {}
    for d in docs:
        by_source.setdefault(d["source"], []).append(d)
    for source, rows in sorted(by_source.items()):
        for i in range(0, len(rows), per_shard):
            rel = f"{source}/part-{i // per_shard:05d}.parquet"
            (root / source).mkdir(parents=True, exist_ok=True)
            pq.write_table(to_table(rows[i : i + per_shard], DOCUMENT), root / rel, row_group_size=25)
            shards.append(describe_shard(str(root), rel, records=len(rows[i : i + per_shard]), group=source))
    write_manifest(str(root), build_manifest("documents", shards, {"test": True}))
    return root


def real_docs(corpus: Path) -> list[dict]:
    docs = []
    with gzip.open(corpus / "c4" / "CC-MAIN-2019-30-docs.jsonl.gz", "rt") as f:
        for line in list(f)[:120]:
            r = json.loads(line)
            docs.append({"id": r["id"], "source": "c4", "text": r["text"], "metadata": "{}"})
    for name in ("c4-sample.01.json.gz", "c4-sample.02.json.gz"):  # small source, repeated
        with gzip.open(corpus / "c4" / name, "rt") as f:
            for j, line in enumerate(f):
                docs.append({"id": f"{name[:12]}-{j}", "source": "commoncrawl", "text": json.loads(line)["text"]})
    for path in sorted((corpus / "books" / "shakespeare").glob("*_gut.txt"))[:3]:
        text = path.read_text(encoding="utf-8")
        for k in range(0, min(len(text), 60_000), 6_000):  # chapters of a book
            docs.append({"id": f"{path.stem}-{k // 6000:02d}", "source": "books", "text": text[k : k + 6000]})
    return docs


@pytest.fixture(scope="module")
def clean(corpus, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("text-clean")
    docs = real_docs(corpus)
    write_documents(root, docs)
    return root, {d["id"]: d for d in docs}


@pytest.fixture(scope="module")
def counts(clean, sp_model_path) -> dict[str, dict[str, int]]:
    tok = TextTokenizer(str(sp_model_path), 64)
    out: dict[str, dict[str, int]] = {}
    for d in clean[1].values():
        out.setdefault(d["source"], {})[d["id"]] = len(tok.encode(d["text"])) + 1
    return out


def mix(counts) -> tuple[int, dict[str, float]]:
    """Budget and shares that take WANT_EPOCHS of each source."""
    want = {s: sum(counts[s].values()) * e for s, e in WANT_EPOCHS.items()}
    budget = int(sum(want.values()))
    return budget, {s: round(100 * v / budget, 3) for s, v in want.items()}


def config(clean_dir, tokenizer, budget, shares=None, **extra) -> Config:
    sample = {
        "budget_tokens": budget,
        "shares": shares or {"c4": 1, "books": 1, "commoncrawl": 1},
        "epochs": EPOCHS,
        "shard_tokens": 40_000,
        "part_tokens": PART_TOKENS,
        "input": str(clean_dir),
        "tokenizer": str(tokenizer),
        "count": "exact",
        **extra,
    }
    return Config({"run": {"seed": 7}, "vqvae": {"codebook_size": 64}, "text": {"sample": sample}})


@pytest.fixture(scope="module")
def runs(clean, sp_model_path, counts, tmp_path_factory):
    budget, shares = mix(counts)
    out = {}
    # a and b: the shards in parts (1 and 2 workers); c: each shard whole, as one part
    for name, workers, part_tokens in (("a", 1, PART_TOKENS), ("b", 2, PART_TOKENS), ("c", 1, 10**9)):
        run_dir = tmp_path_factory.mktemp(f"run-{name}")
        cfg = config(clean[0], sp_model_path, budget, shares, export_hf=True, part_tokens=part_tokens)
        lines = run_stage(StageContext(cfg, run_dir, workers=workers))
        out[name] = (run_dir, lines)
    return out


def files_of(d: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".jam.lock"
    }


def test_identical_across_workers_and_runs(runs):
    a, b = (files_of(runs[k][0] / "text-tokens") for k in "ab")
    assert any(k.endswith(".idx") for k in a) and a == b
    assert files_of(runs["a"][0] / "text-tokens-hf") == files_of(runs["b"][0] / "text-tokens-hf")


def _shard_documents(run_dir: Path) -> dict[tuple[str, int], list[bytes]]:
    """(source, shard) -> its documents' token bytes, its parts read in manifest order."""
    out: dict[tuple[str, int], list[bytes]] = {}
    for sh in read_manifest(str(run_dir / "text-tokens"))["shards"]:
        if sh["path"].endswith(".idx"):
            ds = IndexedDataset(str(run_dir / "text-tokens" / sh["path"][:-4]))
            out.setdefault((sh["group"], sh["summary"]["shard"]), []).extend(ds[i].tobytes() for i in range(len(ds)))
    return out


def test_parts_of_a_shard_are_the_whole_shard_cut_in_key_order(runs):
    parts = read_manifest(str(runs["a"][0] / "text-tokens"))
    whole = read_manifest(str(runs["c"][0] / "text-tokens"))
    idx = [sh for sh in parts["shards"] if sh["path"].endswith(".idx")]
    per_shard: dict[tuple[str, int], int] = {}
    for sh in idx:
        per_shard[(sh["group"], sh["summary"]["shard"])] = per_shard.get((sh["group"], sh["summary"]["shard"]), 0) + 1
    assert max(per_shard.values()) >= 3  # the test cuts shards into several parts
    assert all(sh["path"].split("/")[-1].count("-") == 2 for sh in idx)  # part-SSSSS-PPPPP.idx
    assert len(idx) > sum(1 for sh in whole["shards"] if sh["path"].endswith(".idx"))
    assert parts["totals"]["tokens"] == whole["totals"]["tokens"]
    # the same documents in the same order in every shard, only cut into files
    assert _shard_documents(runs["a"][0]) == _shard_documents(runs["c"][0])
    # a part holds about part_tokens (its range is cut from the token histogram) plus at most the
    # rest of one document: on this small sample single web pages reach 40k tokens
    for sh in idx:
        lengths = IndexedDataset(str(runs["a"][0] / "text-tokens" / sh["path"][:-4])).index.sequence_lengths
        assert sh["tokens"] - int(lengths.max()) <= 2 * PART_TOKENS, sh["path"]


def test_targets_met_and_small_source_repeated(runs, counts):
    m = read_manifest(str(runs["a"][0] / "text-tokens"))
    assert m["kind"] == "text_tokens" and validate_dataset(str(runs["a"][0] / "text-tokens")) == []
    tok_fp = m["summary"]["tokenizer"]["fingerprint"]
    assert tok_fp == m["vocab_fingerprint"]
    for src, row in m["summary"]["sources"].items():
        avail = sum(counts[src].values())
        assert row["available"] == avail
        assert abs(row["tokens"] - row["target"]) <= max(0.001 * row["target"], max(counts[src].values()))
        assert row["full_epochs"] == row["target"] // avail
    small = m["summary"]["sources"]["commoncrawl"]
    assert small["full_epochs"] >= 2 and small["epochs_used"] == pytest.approx(
        small["target"] / small["available"], rel=0.05
    )
    assert sum(r["tokens"] for r in m["summary"]["sources"].values()) == m["totals"]["tokens"]
    assert any("commoncrawl" in line and "target" in line for line in runs["a"][1])


def _read_sample(run_dir: Path):
    """(source, id, tokens) for every document in the shards, ids from the HF export."""
    m = read_manifest(str(run_dir / "text-tokens"))
    out = []
    for sh in m["shards"]:
        if not sh["path"].endswith(".idx"):
            continue
        prefix = sh["path"][:-4]
        ds = IndexedDataset(str(run_dir / "text-tokens" / prefix))
        ids = pq.read_table(run_dir / "text-tokens-hf" / f"{prefix}.parquet").column("id").to_pylist()
        assert len(ids) == len(ds) == sh["records"]
        out += [(sh["group"], i, ds[k]) for k, i in enumerate(ids)]
    return out


def test_round_trip_and_copies_match_reference_sampler(runs, clean, counts, sp_model_path):
    tok = TextTokenizer(str(sp_model_path), 64)
    sample = _read_sample(runs["a"][0])
    seen: dict[str, dict[str, int]] = {}
    for src, doc_id, tokens in sample:
        assert tokens[-1] == tok.vocab.eos_id and tok.vocab.eos_id not in tokens[:-1]
        assert tok.decode(tokens) == clean[1][doc_id]["text"]
        seen.setdefault(src, {}).setdefault(doc_id, 0)
        seen[src][doc_id] += 1
    budget, shares = mix(counts)
    targets = sampling.targets(budget, shares)
    for src, docs in counts.items():
        want = sampling.sample_source(list(docs.items()), targets[src], EPOCHS[src], 7, src)
        assert {k: v for k, v in want.items() if v} == seen[src]
    assert set(seen["commoncrawl"].values()) == {2, 3}  # 2.6 epochs: two whole, then a partial epoch


@pytest.mark.slow  # importing megatron-core (and torch) alone takes 10-30 s
def test_megatron_core_reads_the_shards(runs):
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset

    m = read_manifest(str(runs["b"][0] / "text-tokens"))
    checked = 0
    for sh in m["shards"]:
        if sh["path"].endswith(".idx"):
            prefix = str(runs["b"][0] / "text-tokens" / sh["path"][:-4])
            ours, theirs = IndexedDataset(prefix), MegatronIndexedDataset(prefix)
            assert len(theirs) == len(ours) == sh["records"]
            for i in range(len(ours)):
                assert np.array_equal(theirs[i], ours[i])
            assert int(theirs.sequence_lengths.sum()) == sh["tokens"]
            checked += 1
    assert checked >= 3


def test_hf_export_loads_with_datasets(runs, tmp_path):
    import datasets

    hf = runs["a"][0] / "text-tokens-hf"
    ds = datasets.load_dataset(
        "parquet", data_files=sorted(str(p) for p in hf.rglob("*.parquet")), split="train", cache_dir=str(tmp_path)
    )
    m = read_manifest(str(runs["a"][0] / "text-tokens"))
    assert len(ds) == m["totals"]["records"]
    assert sum(ds["num_tokens"]) == m["totals"]["tokens"]
    row = ds[0]
    assert len(row["input_ids"]) == row["num_tokens"] and row["source"] in WANT_EPOCHS


def test_sampler_independent_of_input_order():
    rng = random.Random(3)
    docs = [(f"d{i}", rng.randint(5, 400)) for i in range(500)]
    total = sum(n for _, n in docs)
    for target in (total // 3, total, int(total * 2.37)):
        a = sampling.sample_source(docs, target, 3.0, 11, "wikipedia")
        shuffled = docs[:]
        rng.shuffle(shuffled)
        assert sampling.sample_source(shuffled, target, 3.0, 11, "wikipedia") == a
        got = sum(n * a[i] for i, n in docs)
        assert abs(got - target) <= max(0.001 * target, 400)
        assert set(a.values()) <= {target // total, target // total + 1}
    assert sampling.sample_source(docs, total // 3, 3.0, 12, "wikipedia") != sampling.sample_source(
        docs, total // 3, 3.0, 11, "wikipedia"
    )


def test_targets_sum_to_budget_and_llama_shares():
    t = sampling.targets(30_000_000_000, {"commoncrawl": 67, "c4": 15, "wikipedia": 4.5, "books": 4.5, "arxiv": 2.5})
    assert sum(t.values()) == 30_000_000_000
    for src, share in (("commoncrawl", 67), ("arxiv", 2.5), ("wikipedia", 4.5)):
        assert abs(t[src] - 30e9 * share / 93.5) < 1


def test_plan_table_and_impossible_plan(clean, sp_model_path, counts, tmp_path, capsys):
    budget, shares = mix(counts)
    cfg = config(clean[0], sp_model_path, budget, shares)
    plan, s = make_plan(cfg, tmp_path)
    rows = {p.source: p for p in plan}
    assert rows["c4"].available == sum(counts["c4"].values()) and not rows["c4"].estimated
    sampling.check_plan(plan)
    est = {
        p.source: p
        for p in make_plan(
            config(clean[0], sp_model_path, budget, shares, count="estimate", estimate_sample_bytes=20_000), tmp_path
        )[0]
    }
    assert est["c4"].estimated and est["c4"].available == pytest.approx(rows["c4"].available, rel=0.15)
    # the command: a budget the small source cannot meet in 4 epochs
    cfg_path = tmp_path / "cfg.yaml"
    import yaml

    big = cfg.to_dict()
    big["text"]["sample"]["budget_tokens"] = budget * 2
    cfg_path.write_text(yaml.safe_dump(big))
    assert main(["text", "plan", "--config", str(cfg_path)]) == 1
    out, err = capsys.readouterr()
    assert "target" in out and "commoncrawl" in out and "shortfall" in out
    short = [p for p in make_plan(Config(big), tmp_path)[0] if p.shortfall]
    assert "source 'commoncrawl' is short by" in err and f"{short[0].shortfall:,}" in err
    big["text"]["sample"]["budget_tokens"] = budget
    cfg_path.write_text(yaml.safe_dump(big))
    assert main(["text", "plan", "--config", str(cfg_path)]) == 0
    assert "plan OK" in capsys.readouterr().out


def test_bad_inputs_name_the_file(clean, sp_model_path, counts, tmp_path, runs):
    budget, shares = mix(counts)
    bad = tmp_path / "bad-clean"
    (bad / "c4").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["x"], "body": ["text"]}), bad / "c4" / "part-00000.parquet")
    write_manifest(
        str(bad), build_manifest("documents", [describe_shard(str(bad), "c4/part-00000.parquet", 1, group="c4")], {})
    )
    with pytest.raises(SchemaError, match=r"c4/part-00000.parquet"):
        run_stage(StageContext(config(bad, sp_model_path, budget, shares), tmp_path / "r1"))
    with pytest.raises(FileNotFoundError, match="no-tokenizer"):
        run_stage(StageContext(config(clean[0], tmp_path / "no-tokenizer", budget, shares), tmp_path / "r2"))
    # append to an existing dataset with a different tokenizer: both named
    tok_cfg = Config(
        {
            "vqvae": {"codebook_size": 64},
            "text": {"tokenizer": {"vocab_size": 1000, "train_bytes": 200_000, "input": str(clean[0])}},
        }
    )
    run_tokenizer_stage(StageContext(tok_cfg, tmp_path / "r3"))
    cfg = config(clean[0], tmp_path / "r3" / "tokenizer", budget, shares, append=True)
    import shutil

    shutil.copytree(runs["a"][0] / "text-tokens", tmp_path / "r3" / "text-tokens")
    with pytest.raises(VocabMismatchError, match=r"text-tokens/manifest.json.*tokenizer"):
        run_stage(StageContext(cfg, tmp_path / "r3"))


def test_trained_tokenizer_stage_and_append(clean, tmp_path):
    tok_cfg = Config(
        {
            "vqvae": {"codebook_size": 32},
            "text": {
                "tokenizer": {"vocab_size": 500, "train_bytes": 300_000, "input": str(clean[0])},
                "sample": {"shares": {"c4": 1, "books": 1}},
            },
        }
    )
    lines = run_tokenizer_stage(StageContext(tok_cfg, tmp_path))
    assert "500 pieces" in lines[0]
    m = read_manifest(str(tmp_path / "tokenizer"))
    assert m["kind"] == "tokenizer" and m["vocab"]["n_image_codes"] == 32
    cfg = config(clean[0], tmp_path / "tokenizer", 30_000)
    cfg.set("vqvae.codebook_size", 32)
    run_stage(StageContext(cfg, tmp_path))
    first = read_manifest(str(tmp_path / "text-tokens"))
    cfg.set("text.sample.append", True)
    run_stage(StageContext(cfg, tmp_path))
    both = read_manifest(str(tmp_path / "text-tokens"))
    assert len(both["shards"]) == 2 * len(first["shards"])
    assert both["totals"]["tokens"] == 2 * first["totals"]["tokens"]
    assert validate_dataset(str(tmp_path / "text-tokens")) == []


@pytest.mark.slow
def test_real_corpus_through_the_cleaning_stage(corpus, tmp_path):
    """Raw C4, Wikipedia and Gutenberg files -> text-clean -> tokenizer -> text-sample."""
    import yaml

    from pipelines.text_clean import run_stage as run_clean

    books = sorted(str(p) for p in (corpus / "books" / "shakespeare").glob("*_gut.txt"))[:2]
    cfg = Config(
        {
            "run": {"seed": 3},
            "vqvae": {"codebook_size": 128},
            "text": {
                "sources": {
                    "c4": {"format": "c4", "paths": str(corpus / "c4" / "c4-sample.0*.json.gz")},
                    "wikipedia": {
                        "format": "wiki_xml",
                        "paths": str(corpus / "wikipedia" / "enwiki-pages-articles-shortened.xml.bz2"),
                    },
                    "books": {"format": "text", "paths": books},
                },
                "tokenizer": {"vocab_size": 3000, "train_bytes": 400_000},
                "sample": {
                    "budget_tokens": 60_000,
                    "shares": {"c4": 40, "wikipedia": 40, "books": 20},
                    "epochs": {"c4": 3, "wikipedia": 1, "books": 1},
                    "shard_tokens": 10_000,
                },
            },
        }
    )
    yaml.safe_dump(cfg.to_dict())  # the config is plain YAML
    ctx = StageContext(cfg, tmp_path)
    run_clean(ctx)
    run_tokenizer_stage(ctx)
    lines = run_stage(ctx)
    m = read_manifest(str(tmp_path / "text-tokens"))
    assert validate_dataset(str(tmp_path / "text-tokens")) == []
    clean_texts = {}
    for p in (tmp_path / "text-clean").rglob("*.parquet"):
        t = pq.read_table(p)
        clean_texts.update(zip(t.column("id").to_pylist(), t.column("text").to_pylist()))
    tok = TextTokenizer(str(tmp_path / "tokenizer"), 128)
    longest = max(len(tok.encode(t)) + 1 for t in clean_texts.values())
    rows = m["summary"]["sources"]
    for src, row in rows.items():
        assert 0 <= row["tokens"] - row["target"] <= max(0.001 * row["target"], longest)
    assert rows["c4"]["full_epochs"] >= 1 and rows["c4"]["epochs_used"] > 1  # 20 short pages, repeated
    # every sampled document decodes to a clean document
    texts = set(clean_texts.values())
    for sh in m["shards"]:
        if sh["path"].endswith(".idx"):
            ds = IndexedDataset(str(tmp_path / "text-tokens" / sh["path"][:-4]))
            for i in range(len(ds)):
                assert tok.decode(ds[i]) in texts
    assert any(line.startswith("c4:") for line in lines)
