"""`jamdata run --config ...`: the main job, every stage in order (see pipelines/stages.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from jamdata.cli import QUIET_HELP


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the whole chain (raw files -> shards -> report -> training smoke run)")
    p.add_argument("--config", required=True)
    p.add_argument("--out", help="run directory (default: run.out_dir from the config)")
    p.add_argument("--stage", action="append", help="run only this stage (repeatable)")
    p.add_argument("--force", action="store_true", help="redo stages whose outputs are already complete")
    p.add_argument("--workers", type=int, help="local Beam worker processes (default: run.workers)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument(
        "--corpus",
        metavar="DIR",
        help="run on the real sample corpus in DIR (e.g. ../shared/corpus): applies configs/corpus.yaml",
    )
    p.add_argument("--quiet", action="store_true", help=f"{QUIET_HELP}; no per-stage lines, only the summary")
    p.set_defaults(func=run)


def corpus_overlay(corpus: str) -> dict:
    """configs/corpus.yaml with `{corpus}` replaced by the corpus directory."""
    import yaml

    root = Path(corpus).resolve()
    if not (root / "README.md").exists():
        raise FileNotFoundError(f"{corpus} does not look like the sample corpus (no README.md there)")
    from jamdata.config import bundled_configs

    overlay = bundled_configs()["corpus"]  # in a checkout or an installed package alike
    return yaml.safe_load(overlay.read_text().replace("{corpus}", str(root)))


def run(args: argparse.Namespace) -> int:
    from jamdata.config import Config, beam_args_setting, run_dir_setting, storage_setting, workers_setting
    from pipelines.stages import StageContext, run_all

    cfg = Config.load(args.config)
    if args.corpus:
        cfg.merge(corpus_overlay(args.corpus))
    cfg.override(args.set)
    run_cfg = cfg.section("run")
    storage_setting(run_cfg)
    out = run_dir_setting(args.out, run_cfg)
    ctx = StageContext(
        cfg,
        out,
        workers=workers_setting(args.workers, run_cfg),
        beam_args=beam_args_setting(args.beam_args, run_cfg),
        force=args.force,
    )
    summary = run_all(ctx, only=args.stage, log=(lambda _line: None) if args.quiet else print)
    print("\n== summary")
    for line in summary:
        print("  " + line)
    print(f"outputs under {out}")
    return 0
