"""Token shards of the text-sample stage written as streamed parts: shard S of a source is the
files `<source>/part-SSSSS-PPPPP.{bin,idx}`, P = 0, 1, ..., each a Megatron indexed dataset of
about `part_tokens` tokens. Megatron reads a list of prefixes; the manifest lists every part.

Why: a whole shard (`shard_tokens`, 1e9 tokens at the reference run) gathered and sorted in one
worker is 4 GB or more per element. A part is bounded by `part_tokens`, whatever the shard size.

How the parts are cut, without a global sort: a document copy's place in its shard is its sample
key (epoch, seeded 64-bit rank, id). The key space of a source is cut into cells, (epoch, hash
bucket of the rank) with 4096 buckets per epoch, and the token histogram per bucket (already
computed for the sampling decision) says how many tokens each cell holds over all the source's
shards. Consecutive cells are grouped into ranges of about `part_tokens × shards` tokens; shards
are a seeded hash of the key, so each shard gets about `part_tokens` tokens of every range. A
part is (source, shard, range). Its documents are a contiguous run of the shard's key order, so
the parts of a shard read in name order are exactly the documents of the shard in (epoch, hash)
order: the same bytes as the shard written whole, cut at range boundaries. A cell of one shard
holds about shard_tokens / 4096 / epochs tokens, so a part is never much bigger than asked.
"""

from __future__ import annotations

import bisect

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jamdata.io import atomic_write
from jamdata.manifest import describe_shard
from jamdata.text import sampling
from jamdata.text.sampling import PlanError, SourceDecision
from schemas.records import TOKENIZED_DOCUMENT

WRITE_DOCS = 4096  # documents per write call: the part's tokens are never joined into one buffer


def cell_tokens(d: SourceDecision, hist: np.ndarray) -> np.ndarray:
    """Tokens of the sample in each cell (epoch e, bucket b), flat at e * N_BUCKETS + b; the
    partial epoch counts its boundary bucket as the tokens the decision still needs from it."""
    hist = np.asarray(hist, dtype=np.int64)
    epochs = d.full_epochs + (1 if d.boundary_bucket >= 0 else 0)
    cells = np.tile(hist, epochs)
    if d.boundary_bucket >= 0:
        last = cells[d.full_epochs * sampling.N_BUCKETS :]
        last[d.boundary_bucket] = d.boundary_remaining
        last[d.boundary_bucket + 1 :] = 0
    return cells


def part_starts(cells: np.ndarray, n_shards: int, part_tokens: int) -> list[int]:
    """Flat cell indices where parts 1, 2, ... begin: a part ends before the cell that would
    carry the tokens so far past the next multiple of `part_tokens × n_shards`."""
    cap = max(1, part_tokens) * max(1, n_shards)
    before = np.cumsum(cells) - cells  # tokens of the cells before each cell
    return (np.flatnonzero(np.diff(before // cap)) + 1).tolist()


def plan_parts(kv, targets: dict[str, int], max_epochs: dict[str, float], n_shards: dict[str, int], part_tokens: int):
    """(source, token histogram) -> (source, part starts); an impossible plan gets no parts (the
    stage fails on the decision with the plan's own message)."""
    source, hist = kv
    try:
        d = sampling.decide(source, targets.get(source, 0), hist, max_epochs.get(source, 1.0))
    except PlanError:
        return source, []
    return source, part_starts(cell_tokens(d, hist), n_shards.get(source, 1), part_tokens)


def part_of(starts: list[int], epoch: int, rank: int) -> int:
    return bisect.bisect_right(starts, epoch * sampling.N_BUCKETS + sampling.bucket_of(rank))


def part_name(source: str, shard: int, part: int) -> str:
    return f"{source}/part-{shard:05d}-{part:05d}"


def shard_number(path: str) -> int:
    """The shard of `src/part-SSSSS-PPPPP.idx` (or of a whole shard `src/part-SSSSS.idx`)."""
    return int(path.rsplit("/", 1)[-1].split(".")[0].split("-")[1])


class WriteTokenPart(beam.DoFn):
    """((source, shard, part), [(sample key, token bytes)]) -> the part's `.bin/.idx` (and HF
    parquet) plus their manifest rows. Holds one part: its token bytes and a key per document."""

    def __init__(self, out_dir: str, hf_dir: str | None, dtype: str, offsets: dict[str, int]):
        self.out_dir, self.hf_dir, self.dtype, self.offsets = out_dir, hf_dir, np.dtype(dtype), offsets

    def process(self, element):
        from jamdata.formats.megatron import IndexedDatasetWriter

        (source, shard, part), records = element
        records = sorted(records)  # (sort key, token bytes): total order even for duplicate ids
        name = part_name(source, shard + self.offsets.get(source, 0), part)
        epochs: dict[str, int] = {}
        for key, _ in records:
            epochs[str(int(key[:4]))] = epochs.get(str(int(key[:4])), 0) + 1
        writer = IndexedDatasetWriter(f"{self.out_dir}/{name}", self.dtype)
        try:
            for i in range(0, len(records), WRITE_DOCS):
                chunk = records[i : i + WRITE_DOCS]
                writer.add_documents(
                    np.frombuffer(b"".join(p for _, p in chunk), dtype=self.dtype),
                    [len(p) // self.dtype.itemsize for _, p in chunk],
                )
        except BaseException:
            writer.abort()
            raise
        docs, tokens = writer.finalize()
        summary = {
            "documents": docs,
            "tokens": tokens,
            "epochs": dict(sorted(epochs.items())),
            "shard": shard,
            "part": part,
        }
        yield {"_ds": "tokens", **describe_shard(self.out_dir, f"{name}.bin", group=source).to_dict()}
        yield {
            "_ds": "tokens",
            **describe_shard(
                self.out_dir, f"{name}.idx", records=docs, tokens=tokens, group=source, summary=summary
            ).to_dict(),
        }
        if self.hf_dir:
            table = pa.table(
                {
                    "id": pa.array([k.split(".", 2)[2] for k, _ in records], pa.string()),
                    "source": pa.array([source] * len(records), pa.string()),
                    "input_ids": pa.array(
                        [np.frombuffer(p, dtype=self.dtype).astype(np.int32) for _, p in records], pa.list_(pa.int32())
                    ),
                    "num_tokens": pa.array([len(p) // self.dtype.itemsize for _, p in records], pa.int32()),
                },
                schema=TOKENIZED_DOCUMENT,
            )
            rel = f"{name}.parquet"
            with atomic_write(f"{self.hf_dir}/{rel}", "wb") as f:
                pq.write_table(table, f, compression="zstd", row_group_size=1000)
            yield {"_ds": "hf", **describe_shard(self.hf_dir, rel, records=docs, tokens=tokens, group=source).to_dict()}
