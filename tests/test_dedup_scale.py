"""Dedup at scale: long chains converge, hot LSH buckets and hot exact hashes are never held in one
place, and sliced keys give the same answer as unsliced ones."""

from __future__ import annotations

import itertools
import json
import random
import tracemalloc
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from jamdata.text.dedup import LSHParams, near_dedup_in_memory, smallest_refs, star_components
from jamdata.text.minhash import MinHasher
from pipelines.dedup_graph import ConnectedComponents, Min, _Counted, _sliced, apply_group
from pipelines.options import pipeline_options
from pipelines.text_dedup import ExactDedup, NearDedup, _SmallestRefs, _VerifyMember

VOCAB = [f"w{i}" for i in range(50000)]


def _save(path: str):
    def save(items):
        Path(path).write_text(json.dumps(sorted(items)))

    return save


def run(build, docs, tmp_path: Path, workers: int = 1):
    """Run `build(pcoll) -> (kept, rejects)` on `docs` (a list, or (n, make) to build document i
    inside the pipeline: a large list in beam.Create is slow to embed); return (sorted kept ids,
    {rejected id: reason})."""
    kept_file, rej_file = str(tmp_path / "kept.json"), str(tmp_path / "rejects.json")
    with beam.Pipeline(options=pipeline_options(workers)) as p:
        if isinstance(docs, tuple):
            n, make = docs
            docs_in = p | beam.Create(range(n)) | beam.Map(make)
        else:
            docs_in = p | beam.Create(docs)
        kept, rejects = docs_in | beam.Reshuffle() | build
        (
            kept
            | "KeptIds" >> beam.Map(lambda d: d["id"])
            | "AllKept" >> beam.combiners.ToList()
            | "SaveKept" >> beam.Map(_save(kept_file))
        )
        (
            rejects
            | "RejIds" >> beam.Map(lambda r: (r["id"], r["reason"]))
            | "AllRej" >> beam.combiners.ToList()
            | "SaveRej" >> beam.Map(_save(rej_file))
        )
    return json.loads(Path(kept_file).read_text()), dict(json.loads(Path(rej_file).read_text()))


def test_chain_of_1000_near_duplicates_keeps_exactly_one(tmp_path):
    """Each document is the previous one with one word replaced, ids shuffled along the chain:
    the ends are unrelated, yet all 1,000 are one cluster. The former five fixed Hash-to-Min
    rounds kept 4 of them and named a wrong representative for 877; star rounds settle in 7."""
    rng = random.Random(4)
    words = [rng.choice(VOCAB) for _ in range(600)]
    ids = [f"chain-{i:04d}" for i in range(1000)]
    rng.shuffle(ids)
    docs = []
    for i in range(1000):
        words[(i * 37) % 600] = f"edit{i}"
        docs.append({"id": ids[i], "source": "c4", "text": " ".join(words)})
    mh = MinHasher()
    assert (mh.signature(docs[0]["text"]) == mh.signature(docs[-1]["text"])).mean() < 0.1
    expect_kept, _ = near_dedup_in_memory(docs, LSHParams())
    assert [d["id"] for d in expect_kept] == ["chain-0000"]
    kept, rejects = run(NearDedup(LSHParams(), cc_rounds=8), (len(docs), docs.__getitem__), tmp_path)
    assert kept == ["chain-0000"]
    assert len(rejects) == 999 and all(r.startswith("near-duplicate of chain-0000 ") for r in rejects.values())


def test_components_converge_or_say_so():
    """A bare path of 256 nodes (ids in path order, the slowest case) needs 8 rounds: 9 settle
    it, 4 do not and the job fails naming the key to raise; with mode="warn" it finishes."""
    nodes = [f"n{i:04d}" for i in range(256)]
    path = [(nodes[i], nodes[i + 1]) for i in range(255)]
    assert star_components(path)[1] == 8

    def comps(rounds, mode="error"):
        with beam.Pipeline(options=pipeline_options(1)) as p:
            reps = p | beam.Create(path) | ConnectedComponents(rounds, max_group=100, mode=mode)
            if rounds >= 8:
                assert_that(reps, equal_to([(n, "n0000") for n in nodes[1:]]))

    comps(9)
    with pytest.raises(Exception, match="did not converge in 4 .*cc_rounds"):
        comps(4)
    comps(4, mode="warn")


def _member_stream(n: int, sig: bytes, consumed: list):
    """A bucket's (key, signature, size) members, made one at a time (keys out of order)."""
    for i in range(n):
        consumed[0] += 1
        yield 1, (f"doc-{(i * 7919) % n:06d}", sig, 300)


def test_hot_bucket_is_streamed_once_with_bounded_memory():
    """20,000 members of one bucket: the summary combiner keeps max_compare members, the
    verification step reads the members once from a generator and holds none of them."""
    params = LSHParams()
    sig = np.arange(params.num_perm, dtype=np.uint32).tobytes()
    consumed = [0]
    combine = _Counted(_SmallestRefs(params.max_compare))
    acc = combine.create_accumulator()
    for _, m in _member_stream(20000, sig, consumed):
        acc = combine.add_input(acc, m)
    count, refs = acc
    assert count == 20000 and len(refs) == params.max_compare and refs[0][0] == "doc-000000"

    consumed = [0]
    stream = itertools.chain([(0, refs)], _member_stream(20000, sig, consumed))  # summary, then members
    tracemalloc.start()
    edges = 0
    for smaller, key in apply_group((("bucket", 0), stream), _VerifyMember(params)):
        assert smaller == "doc-000000"
        edges += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert consumed[0] == 20000 and edges == 19999
    # measured ~58 kB; a list of these 20k members alone is 2.6 MB (they share one signature)
    assert peak < 1_000_000, f"verification held {peak} bytes"
    # a hot bucket is cut into slices by member key: no slice is much above max_group
    slices: dict = {}
    for _, m in _member_stream(20000, sig, [0]):
        (_, s), _ = _sliced(("bucket", m), {"bucket": 10}, lambda v: v[0])
        slices[s] = slices.get(s, 0) + 1
    assert len(slices) == 10 and max(slices.values()) < 2300


def test_bucket_of_20000_near_identical_documents_keeps_one(tmp_path):
    """Pages that differ only in case and punctuation share their band: a bucket of 20,000, cut
    into 10 slices (max_group=2000); the verified pairs already form one star, one document kept."""
    rng = random.Random(9)
    words = [rng.choice(VOCAB) for _ in range(60)]

    def page(i):
        w = list(words)
        w[i % 60] = w[i % 60].upper() + "!"
        w[(i // 60) % 60] += ","
        return {"id": f"page-{(i * 7919) % 20000:05d}", "source": "commoncrawl", "text": " ".join(w)}

    params = LSHParams(num_perm=32, bands=1, rows=16)
    kept, rejects = run(NearDedup(params, cc_rounds=1, max_group=2000), (20000, page), tmp_path)
    assert kept == ["page-00000"] and len(rejects) == 19999
    assert set(rejects.values()) == {"near-duplicate of page-00000 (MinHash LSH 1x16, jaccard >= 0.87)"}


def test_exact_duplicates_are_combined_to_the_winner(tmp_path):
    """1,000 copies (case and spacing differ): the per-hash summary is (count, smallest key), a
    fixed-size value however many copies there are; every copy names the winner."""
    rng = random.Random(5)
    text = " ".join(rng.choice(VOCAB) for _ in range(50))
    ids = [f"copy-{i:04d}" for i in range(1000)]
    rng.shuffle(ids)
    docs = [
        {"id": d, "source": "c4", "text": text.upper() if k % 2 else text.replace(" ", "  ")} for k, d in enumerate(ids)
    ] + [{"id": "other", "source": "c4", "text": "something else"}]
    combine = _Counted(Min())
    acc = combine.create_accumulator()
    for d in docs[:1000]:
        acc = combine.add_input(acc, (d["id"], d["id"]))
    assert acc == (1000, ("copy-0000", "copy-0000"))
    for max_group in (10_000, 100):  # one group per hash, or the hash cut into 10 slices
        kept, rejects = run(ExactDedup(max_group=max_group), docs, tmp_path)
        assert kept == ["copy-0000", "other"]
        assert len(rejects) == 999 and set(rejects.values()) == {"exact duplicate of copy-0000"}


def test_sliced_buckets_give_the_same_clusters_on_two_workers(tmp_path):
    """Clusters of near-copies with max_group=2 (every bucket sliced) and 2 workers: the same
    kept set and the same named representatives as the in-memory reference."""
    rng = random.Random(3)
    docs = []
    for i in range(6):
        base = [rng.choice(VOCAB) for _ in range(300)]
        for j in range(5):
            w = list(base)
            if j:
                w[rng.randrange(300)] = f"e{rng.randrange(10**6)}"
            docs.append({"id": f"d{rng.randrange(10**6):06d}", "source": "c4", "text": " ".join(w)})
    expect_kept, dropped = near_dedup_in_memory(docs, LSHParams())
    assert len(dropped) == 24
    kept, rejects = run(NearDedup(LSHParams(), cc_rounds=4, max_group=2), docs, tmp_path, workers=2)
    assert kept == sorted(d["id"] for d in expect_kept)
    assert {k: r.split()[2] for k, r in rejects.items()} == dropped


def test_smallest_refs_merge_in_any_order():
    members = [(f"k{i:03d}", bytes([i % 7]) * 4, i) for i in range(100)]
    random.Random(0).shuffle(members)
    parts = [smallest_refs(members[i : i + 13], 5) for i in range(0, 100, 13)]
    assert smallest_refs([m for p in reversed(parts) for m in p], 5) == smallest_refs(members, 5)
    assert [m[0] for m in smallest_refs(members, 5)] == ["k000", "k001", "k002", "k003", "k004"]


def test_scale_settings():
    from jamdata.config import Config, ConfigError
    from pipelines.text_dedup import dedup_settings

    s = dedup_settings(Config({}, "text.clean.dedup"))
    assert (s["cc_rounds"], s["cc_unconverged"], s["max_group"]) == (12, "error", 10_000)
    with pytest.raises(ConfigError, match="text.clean.dedup.cc_unconverged"):
        dedup_settings(Config({"cc_unconverged": "ignore"}, "text.clean.dedup"))
    with pytest.raises(ConfigError, match="text.clean.dedup.max_group"):
        dedup_settings(Config({"max_group": 1}, "text.clean.dedup"))
