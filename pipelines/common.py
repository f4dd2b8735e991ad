"""Beam building blocks every pipeline shares: deterministic sharded writes and the manifest.

Determinism: records are assigned to shards by a stable hash of their key, and each shard is
written from its records sorted by key, so output bytes do not depend on the runner, the number
of workers or the input order.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from jamdata.io import atomic_write, stable_hash
from jamdata.manifest import build_manifest, describe_shard, write_manifest
from jamdata.vocab import JointVocab
from schemas.records import to_table


def _not_a_user_error(record: logging.LogRecord) -> bool:
    """Beam logs every exception raised in a DoFn with its traceback before re-raising it; for the
    expected ones (disk full, unreadable input, ...) the command line already prints one clear line."""
    if record.exc_info and record.exc_info[1] is not None:
        from jamdata.errors import USER_ERRORS

        return not isinstance(record.exc_info[1], USER_ERRORS)
    return True


logging.getLogger("apache_beam.runners.common").addFilter(_not_a_user_error)

# (out_dir, shard_name without extension, records sorted by key) -> shard info dicts
ShardWriteFn = Callable[[str, str, list[Any]], list[dict]]


def parquet_shard_writer(schema: pa.Schema, group_field: str | None = None) -> ShardWriteFn:
    """Write dict records as one parquet file per shard (zstd, row groups of 10k rows)."""

    def write(out_dir: str, name: str, records: list[dict]) -> list[dict]:
        rel = f"{name}.parquet"
        table = to_table(records, schema)
        with atomic_write(f"{out_dir}/{rel}", "wb") as f:
            pq.write_table(table, f, compression="zstd", row_group_size=10_000)
        group = records[0].get(group_field) if group_field and records else None
        return [describe_shard(out_dir, rel, records=len(records), group=group).to_dict()]

    return write


class _WriteGroup(beam.DoFn):
    def __init__(self, out_dir: str, write_fn: ShardWriteFn):
        self.out_dir = out_dir
        self.write_fn = write_fn

    def process(self, element):
        (group, bucket), keyed = element
        records = [r for _, r in sorted(keyed, key=lambda kv: kv[0])]
        name = f"{group}/part-{bucket:05d}" if group else f"part-{bucket:05d}"
        yield from self.write_fn(self.out_dir, name, records)


class WriteShards(beam.PTransform):
    """PCollection of (sort_key, record) -> PCollection of shard info dicts.

    `group_of(record)` optionally puts records in a sub-directory (e.g. one per text source);
    `num_shards` buckets per group, or `shards_of`: a PCollection of (group, buckets) computed in
    the pipeline (e.g. from the data's size), which then decides per group (missing: one bucket).
    Keys must be unique (they define the order in a shard)."""

    def __init__(
        self,
        out_dir: str,
        write_fn: ShardWriteFn,
        num_shards: int = 1,
        group_of: Callable[[Any], str] | None = None,
        seed: int = 0,
        shards_of=None,
    ):
        super().__init__()
        self.out_dir, self.write_fn, self.num_shards = str(out_dir), write_fn, num_shards
        self.group_of, self.seed, self.shards_of = group_of, seed, shards_of

    def expand(self, pcoll):
        n, seed, group_of = self.num_shards, self.seed, self.group_of

        def assign(kv, counts=None):
            key, record = kv
            group = group_of(record) if group_of else ""
            buckets = n if counts is None else max(1, int(counts.get(group, 1)))
            return (group, stable_hash(key, seed=seed) % buckets), (key, record)

        side = () if self.shards_of is None else (beam.pvalue.AsDict(self.shards_of),)
        return (
            pcoll
            | "AssignShard" >> beam.Map(assign, *side)
            | "GroupShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteGroup(self.out_dir, self.write_fn))
        )


class ShardsFromBytes(beam.PTransform):
    """Records -> (group, shard count): ceil(the group's bytes / shard_bytes), at least 1, counted
    in the pipeline, so that a shard (sorted and written by one worker) holds about shard_bytes
    whatever the data's size. Feed it to WriteShards(shards_of=...)."""

    def __init__(self, shard_bytes: int, size_of: Callable[[Any], int], group_of: Callable[[Any], str]):
        super().__init__()
        self.shard_bytes, self.size_of, self.group_of = shard_bytes, size_of, group_of

    def expand(self, records):
        per, size_of, group_of = self.shard_bytes, self.size_of, self.group_of
        return (
            records
            | "Size" >> beam.Map(lambda r: (group_of(r), size_of(r)))
            | "SumSize" >> beam.CombinePerKey(sum)
            | "Count" >> beam.Map(lambda kv: (kv[0], max(1, -(-kv[1] // per))))
        )


class WriteManifest(beam.PTransform):
    """Shard infos -> manifest.json, written once after every shard exists.

    `summarize(shards)` may add kind-specific figures (computed from the per-shard summaries)."""

    def __init__(
        self,
        out_dir: str,
        kind: str,
        config: dict,
        vocab: JointVocab | None = None,
        summarize: Callable[[list[dict]], dict] | None = None,
        inputs: Iterable[str] = (),
    ):
        super().__init__()
        self.out_dir, self.kind, self.config, self.vocab = str(out_dir), kind, config, vocab
        self.summarize, self.inputs = summarize, list(inputs)

    def expand(self, shard_infos):
        def write(shards: list[dict]) -> str:
            summary = self.summarize(shards) if self.summarize else {}
            manifest = build_manifest(self.kind, shards, self.config, self.vocab, summary, self.inputs)
            return write_manifest(self.out_dir, manifest)

        return shard_infos | "CollectShards" >> beam.combiners.ToList() | "WriteManifest" >> beam.Map(write)
