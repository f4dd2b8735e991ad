"""Statistics as a Beam pipeline: shards are read in parallel and merged by a combiner, so the
same code scales from the demo to the full run on Dataflow. `fast=True` reads manifests only."""

from __future__ import annotations

import json
from dataclasses import dataclass

import apache_beam as beam

from jamdata.config import ConfigError
from jamdata.settings import as_plain, load_settings, setting
from jamdata.stage import Stage, StageContext
from jamdata.io import absolute, atomic_write, exists, join, list_dirs, open_url
from jamdata.stats import aggregate as agg
from jamdata.stats.collect import expand_dirs_noting, finalize, inspect_datasets, plan_shards, run_task
from jamdata.stats.warnings import format_warnings, run_warnings
from jamdata.stats.report import write_report
from pipelines.options import pipeline_options


@dataclass(frozen=True)
class StatsSettings:
    """The `stats` section (docs/stats.md)."""

    fast: bool = setting(False, "read manifests only: no per-record distributions")
    loader_batches: int = setting(20, "batches of the configured loader drawn for the realised mixture (0: none)", lo=0)


class MergeStats(beam.CombineFn):
    def create_accumulator(self):
        return {}

    def add_input(self, acc, partial):
        return agg.merge_maps(acc, partial)

    def merge_accumulators(self, accs):
        out: dict = {}
        for a in accs:
            out = agg.merge_maps(out, a)
        return out

    def extract_output(self, acc):
        return acc


def compute_beam(tasks, agg_path: str, workers: int = 1, beam_args=()) -> dict[str, dict]:
    """Merged aggregates per dataset; written by the pipeline to `agg_path` (any fsspec path, so
    this works unchanged on a remote runner) and read back here."""
    if not tasks:
        return {}

    def write(pairs):
        with atomic_write(agg_path, "w") as f:
            json.dump(dict(sorted(pairs)), f)

    with beam.Pipeline(options=pipeline_options(workers, beam_args)) as p:
        (
            p
            | "Shards" >> beam.Create(tasks)
            | "Spread" >> beam.Reshuffle()
            | "ShardStats" >> beam.Map(run_task)
            | "Merge" >> beam.CombinePerKey(MergeStats())
            | "All" >> beam.combiners.ToList()
            | "Write" >> beam.Map(write)
        )
    with open_url(agg_path, "r") as f:
        return json.load(f)


def run_stats(
    dirs: list[str],
    out: str,
    fast: bool = False,
    workers: int = 1,
    beam_args=(),
    vqvae: str | None = None,
    loader_view: dict | None = None,
    deep_validate: bool = False,
    loader_problem: str | None = None,
) -> dict:
    """Compute stats.json + plots + report.html for datasets (or whole runs) into `out`."""
    datasets, shadowed = expand_dirs_noting(dirs)
    info = inspect_datasets(datasets, deep_validate=deep_validate)
    out = absolute(out)
    merged = {} if fast else compute_beam(plan_shards(info), f"{out}/aggregates.json", workers, beam_args)
    stats = finalize(info, merged, fast=fast)
    stats["warnings"] = run_warnings(info, shadowed)
    if loader_problem:
        stats["warnings"].append(
            {
                "code": "loader_view_skipped",
                "dataset": "loader",
                "source": None,
                "message": f"the loader's realised mixture is not shown: {loader_problem}",
            }
        )
    if loader_view:
        stats["loader"] = loader_view
    with atomic_write(f"{out}/stats.json", "w") as f:
        json.dump(stats, f, indent=2, sort_keys=True)
    write_report(stats, out, vqvae=vqvae)
    return stats


def run_stage(ctx: StageContext) -> list[str]:
    """Main job: report over every dataset of the run, with the loader's realised mixture."""
    from jamdata.manifest import build_manifest, describe_shard, output_dir, write_manifest

    out = ctx.path("report")
    settings = load_settings(StatsSettings, ctx.config.section("stats"))
    loader_view = None
    n_batches = settings.loader_batches
    from jamdata.loader import LoaderError

    loader_problem = None
    if n_batches and ctx.config.has("loader"):
        try:  # the report of the datasets is worth having even when the loader cannot be built
            loader_view = loader_mixture(ctx, n_batches)
        except (ConfigError, FileNotFoundError, LoaderError) as e:
            loader_problem = str(e)
    with output_dir(out):
        datasets = [
            ctx.path(n) for n in list_dirs(ctx.run_dir) if not n.startswith(".") and n not in ("report", "train")
        ]
        stats = run_stats(
            datasets,
            str(out),
            fast=settings.fast,
            workers=ctx.workers,
            beam_args=ctx.beam_args,
            vqvae=str(ctx.path("vqvae")),
            loader_view=loader_view,
            loader_problem=loader_problem,
        )
        shards = [describe_shard(str(out), n) for n in ("stats.json", "report.html")]
        write_manifest(
            str(out),
            build_manifest(
                "stats", shards, as_plain(settings), inputs=datasets, summary={"warnings": stats["warnings"]}
            ),
        )
    o = stats["overall"]
    return [
        f"{len(stats['datasets'])} datasets, {o['records'] or 0:,} records, {o['tokens'] or 0:,} tokens",
        *format_warnings(stats["warnings"]),
        f"report: {join(out, 'report.html')}",
    ]


def stage_settings(ctx: StageContext) -> dict:
    return {
        "stats": load_settings(StatsSettings, ctx.config.section("stats")),
        "loader": ctx.config.section("loader").to_dict(),
    }


STAGE = Stage(
    "stats",
    run_stage,
    outputs=("report",),
    settings=stage_settings,
    inputs=(
        "text-clean",
        "text-clean-rejects",
        "text-tokens",
        "image-caption",
        "image-caption-rejects",
        "instruct",
        "instruct-rejects",
        "vqvae",
    ),
)


def loader_mixture(ctx, n_batches: int) -> dict | None:
    """Realised dataset mixture over the first N batches of the configured loader."""
    from jamdata.loader import build_loader

    datasets = {n: ctx.path(n) for n in ("text-tokens", "image-caption", "instruct") if exists(ctx.path(n))}
    loader = build_loader(ctx.config.section("loader"), datasets, rank=0, world_size=1)
    counts: dict[str, int] = {}
    tokens: dict[str, int] = {}
    for i, batch in enumerate(loader):
        if i >= n_batches:
            break
        for di, mask in zip(batch["dataset_index"].tolist(), batch["loss_mask"]):
            name = loader.dataset_names[di]
            counts[name] = counts.get(name, 0) + 1
            tokens[name] = tokens.get(name, 0) + int(mask.sum())
    total = sum(counts.values()) or 1
    return {
        "batches": n_batches,
        "sequences": counts,
        "loss_tokens": tokens,
        "share": {k: v / total for k, v in sorted(counts.items())},
    }
