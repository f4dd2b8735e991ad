"""MinHash, LSH and the dedup Beam transforms: planted near-duplicates, determinism, book overlap."""

from __future__ import annotations

import random
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest

from jamdata.config import Config, ConfigError
from jamdata.text.dedup import LSHParams, band_keys, components, exact_hash, near_dedup_in_memory, star_components
from jamdata.text.minhash import MinHasher, candidate_probability, exact_jaccard, normalize_words
from pipelines.common import WriteShards, parquet_shard_writer
from pipelines.options import pipeline_options
from pipelines.text_dedup import TextDedup, dedup_settings
from schemas.records import DOCUMENT, REJECT

VOCAB = [f"tok{i}" for i in range(20000)]


def random_text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def edit(text: str, rng: random.Random, n_changes: int) -> str:
    """Replace n well-separated words (each change alters up to 5 word 5-grams)."""
    words = text.split()
    step = len(words) // (n_changes + 1)
    for k in range(1, n_changes + 1):
        words[k * step] = f"edited{rng.randrange(10**9)}"
    return " ".join(words)


def jaccard(a: str, b: str) -> float:
    mh = MinHasher()
    return exact_jaccard(mh.shingles(a), mh.shingles(b))


def run_dedup(docs: list[dict], cfg: dict, out: Path, workers: int = 1):
    """Run TextDedup and write kept docs / rejects as sharded parquet; return both as lists."""
    with beam.Pipeline(options=pipeline_options(workers)) as p:
        kept, rejects = p | beam.Create(docs) | beam.Reshuffle() | TextDedup(cfg)
        (
            kept
            | "KeyDocs" >> beam.Map(lambda d: (d["id"], d))
            | "WriteDocs"
            >> WriteShards(str(out / "docs"), parquet_shard_writer(DOCUMENT, "source"), 2, lambda d: d["source"])
        )
        (
            rejects
            | "KeyRej" >> beam.Map(lambda r: (f"{r['stage']}/{r['id']}", r))
            | "WriteRej" >> WriteShards(str(out / "rejects"), parquet_shard_writer(REJECT), 1)
        )
    read = lambda d: [r for f in sorted(d.rglob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return read(out / "docs"), read(out / "rejects")


def test_signatures_do_not_depend_on_batching_and_estimate_jaccard():
    rng = random.Random(1)
    texts = [random_text(rng, 300) for _ in range(20)]
    texts.append(edit(texts[0], rng, 6))
    mh = MinHasher(num_perm=256)
    all_sigs, sizes = mh.signatures(texts)
    for i, t in enumerate(texts[:5]):
        assert np.array_equal(mh.signature(t), all_sigs[i])
    assert sizes[0] == len(mh.shingles(texts[0])) == 296
    true_j = jaccard(texts[0], texts[-1])
    est = float((all_sigs[0] == all_sigs[-1]).mean())
    assert 0.8 < true_j < 0.95 and abs(est - true_j) < 0.08
    assert float((all_sigs[0] == all_sigs[1]).mean()) < 0.05  # unrelated documents
    # a document shorter than the n-gram is one shingle, an empty one has a max-valued signature
    assert len(mh.shingles("just three words")) == 1
    assert (mh.signature("") == np.iinfo(np.uint32).max).all()
    assert normalize_words("Hello, WORLD! Ünïcode—text") == ["hello", "world", "ünïcode", "text"]


def test_exact_hash_normalises_case_and_whitespace():
    assert exact_hash("Hello   World\n") == exact_hash("hello world")
    assert exact_hash("Hello World.") != exact_hash("Hello World")


def test_planted_near_duplicates_found_above_threshold_kept_below_and_book_overlap(tmp_path):
    rng = random.Random(7)
    docs, expect_dropped, expect_kept = [], {}, set()
    for i in range(6):
        base = random_text(rng, 500)
        docs.append({"id": f"web-{i:02d}-a", "source": "commoncrawl", "text": base})
        near = edit(base, rng, 2)  # J ~ 0.96
        far = edit(base, rng, 30)  # J ~ 0.54
        assert jaccard(base, near) > 0.93 and jaccard(base, far) < 0.6
        docs.append({"id": f"web-{i:02d}-b", "source": "commoncrawl", "text": near})
        docs.append({"id": f"web-{i:02d}-c", "source": "commoncrawl", "text": far})
        expect_dropped[f"web-{i:02d}-b"] = f"web-{i:02d}-a"
        expect_kept |= {f"web-{i:02d}-a", f"web-{i:02d}-c"}
    # an exact duplicate (case and spacing differ) and a copy in another source (scope: source)
    docs.append({"id": "web-00-z", "source": "commoncrawl", "text": docs[0]["text"].upper().replace(" ", "  ")})
    docs.append({"id": "c4-00", "source": "c4", "text": docs[0]["text"]})
    # books: the shorter book is wholly inside a longer one (Jaccard ~0.6, containment 1)
    book = random_text(rng, 3000)
    docs += [
        {"id": "books-b-longer", "source": "books", "text": book + " " + random_text(rng, 2000)},
        {"id": "books-a-short", "source": "books", "text": book},
        {"id": "books-c-other", "source": "books", "text": random_text(rng, 3000)},
    ]
    kept, rejects = run_dedup(docs, {"cc_rounds": 3}, tmp_path)
    assert {d["id"] for d in kept} == expect_kept | {"c4-00", "books-a-short", "books-c-other"}
    by_id = {r["id"]: r for r in rejects}
    r = by_id.pop("books-b-longer")
    assert r["stage"] == "dedup_book_overlap"
    assert r["reason"].startswith("near-duplicate of books-a-short") and "containment >= 0.9" in r["reason"]
    assert by_id["web-00-z"]["stage"] == "dedup_exact" and by_id["web-00-z"]["reason"] == "exact duplicate of web-00-a"
    for dup, rep in expect_dropped.items():
        assert by_id[dup]["stage"] == "dedup_minhash"
        assert by_id[dup]["reason"].startswith(f"near-duplicate of {rep} ")
        assert by_id[dup]["snippet"] and by_id[dup]["source"] == "commoncrawl"
    assert len(by_id) == len(expect_dropped) + 1
    # kept documents are unchanged
    assert next(d for d in kept if d["id"] == "web-03-c")["text"] == docs[3 * 3 + 2]["text"]


def test_clusters_resolve_to_smallest_key_regardless_of_order_and_workers(tmp_path):
    rng = random.Random(3)
    docs = []
    for i in range(8):
        base = random_text(rng, 300)
        for j in range(3):  # each cluster: three near-copies with shuffled ids
            docs.append(
                {"id": f"d{rng.randrange(10**6):06d}", "source": "c4", "text": edit(base, rng, 1) if j else base}
            )
        docs.append({"id": f"u{i}", "source": "c4", "text": random_text(rng, 300)})
    expected_kept, dropped = near_dedup_in_memory(docs, LSHParams())
    assert len(dropped) == 16
    outs = []
    for k, (order, workers) in enumerate([(random.Random(5).sample(docs, len(docs)), 1), (list(reversed(docs)), 2)]):
        out = tmp_path / f"run{k}"
        kept, rejects = run_dedup(order, {"exact": False, "cc_rounds": 3}, out, workers)
        assert sorted(d["id"] for d in kept) == sorted(d["id"] for d in expected_kept)
        assert {r["id"]: r["reason"].split()[2] for r in rejects} == dropped
        outs.append({f.relative_to(out): f.read_bytes() for f in sorted(out.rglob("*.parquet"))})
    assert outs[0] == outs[1]  # byte-identical for any input order and 1 or 2 workers


def test_chain_of_near_duplicates_is_one_component(tmp_path):
    """A~B and B~C but A!~C: B and C are both dropped in favour of A (the component's minimum)."""
    rng = random.Random(11)
    a = random_text(rng, 400)
    b = edit(a, rng, 3)
    words = b.split()
    for k in range(3):  # edit other positions than a->b did
        words[50 + 100 * k] = f"other{k}"
    c = " ".join(words)
    assert jaccard(a, b) > 0.9 and jaccard(b, c) > 0.9 and jaccard(a, c) < 0.86
    params = {"num_perm": 512, "bands": 128, "rows": 4, "threshold": 0.89}
    cfg = {"exact": False, "cc_rounds": 3, "minhash": params, "book_overlap": {"enabled": False}}
    docs = [
        {"id": "A", "source": "c4", "text": a},
        {"id": "B", "source": "c4", "text": b},
        {"id": "C", "source": "c4", "text": c},
    ]
    kept, rejects = run_dedup(docs, cfg, tmp_path)
    assert [d["id"] for d in kept] == ["A"]
    assert {r["id"]: r["reason"].split()[2] for r in rejects} == {"B": "A", "C": "A"}


def test_star_rounds_match_union_find():
    rng = random.Random(2)
    nodes = [f"n{i:03d}" for i in range(200)]
    edges = {tuple(sorted(rng.sample(nodes, 2))) for _ in range(150)}
    edges |= {(nodes[i], nodes[i + 1]) for i in range(100, 140)}  # a long chain
    expect = {n: r for n, r in components(edges).items() if n != r}
    got, rounds = star_components(edges, max_rounds=12)
    assert got == expect and rounds <= 12


def test_lsh_parameters_and_config_errors():
    p = LSHParams()
    assert p.bands * p.rows <= p.num_perm and 0.85 < p.lsh_threshold < 0.92
    assert candidate_probability(0.95, 7, 18) > 0.95 and candidate_probability(0.5, 7, 18) < 0.001
    assert len(band_keys(np.arange(128, dtype=np.uint32), 7, 18, "c4")) == 7
    with pytest.raises(ConfigError, match="text.clean.dedup.minhsh"):
        dedup_settings(Config({"minhsh": {}}, "text.clean.dedup"))
    with pytest.raises(ConfigError, match="bands \\* rows"):
        dedup_settings(Config({"minhash": {"bands": 20, "rows": 10}}, "text.clean.dedup"))
    with pytest.raises(ConfigError, match="sources': got 'cc'"):
        dedup_settings(Config({"minhash": {"sources": ["cc"]}}, "text.clean.dedup"))
