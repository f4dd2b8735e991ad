"""`jamdata text plan` and `jamdata text sample`: the token budget per source and its sample."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from jamdata.cli import QUIET_HELP, command_group

    group = command_group(sub, "text", "text corpus: clean, plan and sample the token budget")
    for name, helptext, func in (
        ("plan", "per-source table of target/available tokens and epochs; fails on an impossible plan", plan),
        ("sample", "tokenize clean documents and write the budgeted sample as Megatron .bin/.idx shards", sample),
    ):
        p = group.add_parser(name, help=helptext)
        p.add_argument("--config", required=True)
        p.add_argument("--out", help="run directory (default: run.out_dir)")
        p.add_argument("--input", help="clean documents dataset (default: RUN/text-clean)")
        p.add_argument("--tokenizer", help="tokenizer dataset or .model (default: RUN/tokenizer)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
        if name == "plan":
            p.add_argument("--count", choices=["exact", "estimate"], help="override text.sample.count")
        else:
            p.add_argument("--workers", type=int, help="local Beam worker processes (default: run.workers)")
            p.add_argument(
                "--export-hf", action="store_true", help="also write RUN/text-tokens-hf (HF datasets parquet)"
            )
            p.add_argument(
                "--append", action="store_true", help="add to an existing text-tokens dataset (same tokenizer)"
            )
            p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
        p.set_defaults(func=func)


def _apply_flags(cfg, args) -> None:
    """The command's flags as text.sample keys."""
    for key in ("input", "tokenizer", "count"):
        if getattr(args, key, None):
            cfg.set(f"text.sample.{key}", getattr(args, key))
    for key in ("export_hf", "append"):
        if getattr(args, key, False):
            cfg.set(f"text.sample.{key}", True)


def _load(args):
    from jamdata.stage import context_from_args

    ctx = context_from_args(args)
    _apply_flags(ctx.config, args)
    return ctx.config, ctx.run_dir


def plan(args: argparse.Namespace) -> int:
    from jamdata.text.sampling import check_plan, format_plan
    from pipelines.text_sample import make_plan

    from jamdata.io import join
    from jamdata.manifest import read_manifest
    from jamdata.text.sampling import plan_warnings

    cfg, out = _load(args)
    table, s = make_plan(cfg, out)
    print(format_plan(table, s.budget))
    check_plan(table)
    documents: dict[str, int] = {}
    clean_manifest = read_manifest(s.input or join(str(out), "text-clean"))
    for shard in clean_manifest["shards"]:
        documents[shard.get("group")] = documents.get(shard.get("group"), 0) + (shard.get("records") or 0)
    warnings = plan_warnings(table, documents)
    for line in warnings:
        print(f"warning: {line}")
    print("\n".join(compute_estimate(clean_manifest, table)))
    print(f"plan OK ({len(warnings)} warnings)" if warnings else "plan OK")
    return 0


def compute_estimate(clean_manifest: dict, table) -> list[str]:
    """Core-hours, Dataflow worker-hours and cost of text-clean (the text bytes it read, from its
    funnel) and text-sample (the plan's targets in bytes), from measured throughput (jamdata/scale.py)."""
    from jamdata.scale import BYTES_PER_TOKEN, estimate_lines

    funnel = (clean_manifest.get("summary") or {}).get("funnel") or {}
    read_mb = sum(st.get("read", {}).get("bytes_out", 0) for st in funnel.values()) / 1e6
    sample_mb = sum(p.target / (p.tokens_per_byte or 1 / BYTES_PER_TOKEN) for p in table) / 1e6
    return estimate_lines(read_mb, sample_mb)


def sample(args: argparse.Namespace) -> int:
    from jamdata.stage import context_from_args
    from pipelines.text_sample import STAGE

    ctx = context_from_args(args)
    _apply_flags(ctx.config, args)
    for line in STAGE.run(ctx):
        print(line)
    return 0
