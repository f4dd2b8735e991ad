"""The Beam steps of the text-sample stage (pipelines/text_sample.py): tokenize a row group, a
source's token histogram over hash buckets, its decision (epochs, boundary bucket), the
partial-epoch cutoff, each document's copies keyed by (source, shard, part), and the per-source
summary of what was written. Each is a function of (seed, source, id) and per-source totals."""

from __future__ import annotations


import apache_beam as beam
import numpy as np

from jamdata.io import stable_hash
from jamdata.text import sampling
from jamdata.text.sampling import PlanError
from jamdata.text.tokenizer import TextTokenizer
from pipelines import progress
from pipelines.clean_input import read_texts
from pipelines.text_sample_settings import SampleSettings
from pipelines.token_parts import part_of, shard_number


class TokenizeUnit(beam.DoFn):
    """(source, parquet file, row group) -> (source, rank, id, token bytes) per document."""

    def __init__(self, tokenizer: str, codes: int, seed: int, batch: int):
        self.tokenizer, self.codes, self.seed, self.batch = tokenizer, codes, seed, batch

    def setup(self):
        self.tok = TextTokenizer(self.tokenizer, self.codes)

    def process(self, unit):
        source, path, rg = unit
        table = read_texts(path, rg)
        ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
        for i in range(0, len(texts), self.batch):
            flat, lengths = self.tok.encode_documents(texts[i : i + self.batch])
            progress.count("documents", len(lengths))
            progress.count("tokens", int(sum(lengths)))
            data = flat.tobytes()
            item = flat.dtype.itemsize
            ends = np.cumsum(lengths) * item
            start = 0
            for doc_id, end in zip(ids[i : i + self.batch], ends.tolist()):
                yield source, sampling.doc_rank(self.seed, source, doc_id), doc_id, data[start:end]
                start = end


class HistogramFn(beam.CombineFn):
    def create_accumulator(self):
        return np.zeros(sampling.N_BUCKETS, dtype=np.int64)

    def add_input(self, acc, item):
        rank, n = item
        acc[sampling.bucket_of(rank)] += n
        return acc

    def merge_accumulators(self, accs):
        accs = list(accs)
        out = accs[0].copy()
        for a in accs[1:]:
            out += a
        return out

    def extract_output(self, acc):
        return acc


def decide(kv, targets: dict[str, int], max_epochs: dict[str, float]):
    source, hist = kv
    try:
        return source, sampling.decide(source, targets.get(source, 0), hist, max_epochs.get(source, 1.0))
    except PlanError as e:
        return source, str(e)


def cutoff(kv, decisions):
    source, items = kv
    d = decisions[source]
    if isinstance(d, str) or d.boundary_bucket < 0:
        return source, None
    return source, sampling.partial_cutoff(items, d.boundary_remaining)


def in_boundary(doc, decisions) -> bool:
    d = decisions.get(doc[0])
    return (
        not isinstance(d, str)
        and d is not None
        and d.boundary_bucket >= 0
        and sampling.bucket_of(doc[1]) == d.boundary_bucket
    )


def emit(doc, decisions, cutoffs, parts, n_shards, seed):
    source, rank, doc_id, payload = doc
    d = decisions.get(source)
    if d is None or isinstance(d, str):
        return
    for epoch in range(sampling.copies(d, cutoffs.get(source), rank, doc_id)):
        key = sampling.sample_key(epoch, rank, doc_id)
        shard = stable_hash(source, key, seed=seed) % n_shards[source]
        yield (source, shard, part_of(parts[source], epoch, rank)), (key, payload)


def source_summary(shards: list[dict], decisions: dict, s: SampleSettings) -> dict:
    per: dict[str, dict] = {}
    for src in s.shares:
        per[src] = {
            "target": s.targets[src],
            "tokens": 0,
            "documents": 0,
            "unique_documents": None,
            "available": 0,
            "max_epochs": s.max_epochs[src],
            "epochs_used": 0.0,
            "full_epochs": 0,
            "shards": 0,
            "parts": 0,
        }
    shard_ids: dict[str, set] = {}
    for sh in shards:
        if sh["path"].endswith(".idx"):
            row = per.setdefault(sh["group"], {"target": 0, "tokens": 0, "documents": 0})
            row["tokens"] += sh["tokens"]
            row["documents"] += sh["records"]
            row["parts"] = row.get("parts", 0) + 1
            shard_ids.setdefault(sh["group"], set()).add(shard_number(sh["path"]))
            row["shards"] = len(shard_ids[sh["group"]])
    for src, d in decisions.items():
        if isinstance(d, str) or src not in per:
            continue
        row = per[src]
        row.update(
            available=d.available,
            full_epochs=d.full_epochs,
            epochs_used=round(row["tokens"] / d.available, 6) if d.available else 0.0,
        )
        row["error"] = row["tokens"] - row["target"]
    return per
