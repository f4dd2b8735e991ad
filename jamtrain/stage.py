"""The `train` stage of the main job (`jamdata run`): a short CPU smoke run on the datasets the
earlier stages wrote, with a `checkpoint` manifest over its outputs."""

from __future__ import annotations

from pathlib import Path


from jamdata.stage import Stage, StageContext
from jamtrain.building import dataset_vocab
from jamtrain.settings import parse_settings
from jamtrain.train import train


def run_stage(ctx) -> list[str]:
    """Short CPU smoke run on the tokens the earlier stages wrote (the `loader` and `train`
    sections); mixture entries whose dataset the run did not produce (e.g. no instruct data) are
    left out with a note."""
    from jamdata.manifest import build_manifest, describe_shard, is_complete, output_dir, write_manifest

    cfg = ctx.config
    run_dir = str(ctx.run_dir)
    if "://" in run_dir and not run_dir.startswith("file://"):  # s3://, gs://: DeepSpeed writes local files
        return [
            f"skipped: the CPU smoke run needs a local run directory, not {ctx.run_dir}; "
            "train on GPUs with `jamtrain train --config ...` (docs/training.md)"
        ]
    s = parse_settings(cfg, out_dir=ctx.path("train"), run_dir=ctx.run_dir)  # local from here on
    notes = []
    missing = [n for n, d in s.datasets.items() if not is_complete(d)]
    if missing and len(missing) < len(s.datasets):
        for n in missing:
            s.datasets.pop(n)
            notes.append(f"mixture entry {n!r} left out: {ctx.path(n)} has no finished dataset")
        mixture = s.loader.get("mixture")
        if isinstance(mixture, dict):
            s.loader["mixture"] = {n: w for n, w in mixture.items() if n in s.datasets}
    if "seq_len" not in s.loader:  # the loader's 4096 default is far too long for a CPU smoke run
        s.loader["seq_len"] = 512
        notes.append("loader.seq_len not set: the smoke run packs 512-token rows")
    g = s.loader.get("global_batch_size")
    if isinstance(g, int) and g != s.micro_batch:  # one process: the loader's rows per step are the micro-batch
        notes.append(f"micro-batch {g} (loader.global_batch_size) instead of {s.micro_batch} ({s.deepspeed_path})")
        s.deepspeed["train_micro_batch_size_per_gpu"] = g
    s.save_every = s.save_every or s.steps
    out = Path(ctx.path("train"))
    with output_dir(out):
        result = train(s)  # joins and leaves its process group
        files = [
            str(p.relative_to(out))
            for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and "checkpoints" not in p.parts
        ]
        summary = {
            "first_loss": result.first_loss,
            "last_loss": result.last_loss,
            "steps": s.steps,
            "params": result.params,
            "eval": result.eval,
        }
        write_manifest(
            str(out),
            build_manifest(
                "checkpoint",
                [describe_shard(str(out), f) for f in files],
                cfg.section("train").to_dict(),
                dataset_vocab(s.datasets),
                summary,
                list(s.datasets.values()),
            ),
        )
    lines = notes + [
        f"{result.params:,}-parameter model, {s.steps} steps on {', '.join(s.datasets)}: "
        f"loss {result.first_loss:.3f} -> {result.last_loss:.3f} ({result.seconds:.0f}s)"
    ]
    for name, r in result.eval.items():
        if r["ppl"] is not None:
            lines.append(f"validation perplexity {name}: {r['ppl']:.2f} over {r['tokens']} held-out tokens")
    lines.append(f"weights {out / 'export' / 'model.safetensors'}, log {out / 'log.jsonl'}")
    from jamtrain.sample_files import stage_sample  # one generated sample into <run>/generated/

    return lines + stage_sample(ctx.run_dir, out, s.seed)


def stage_settings(ctx: StageContext) -> dict:
    from jamdata.loader import loader_settings
    from jamdata.settings import load_settings
    from jamtrain.settings import TrainSection

    return {
        "seed": ctx.seed,
        "loader": loader_settings(ctx.config.section("loader")),
        "train": load_settings(TrainSection, ctx.config.section("train")),
    }


STAGE = Stage(
    "train", run_stage, outputs=("train",), inputs=("text-tokens", "image-caption", "instruct"), settings=stage_settings
)
