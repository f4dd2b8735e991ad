"""`jamdata run --config ...`: the main job, every stage in order (see pipelines/stages.py)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the whole chain (raw files -> shards -> report -> training smoke run)")
    p.add_argument("--config", required=True)
    p.add_argument("--out", help="run directory (default: run.out_dir from the config)")
    p.add_argument("--stage", action="append", help="run only this stage (repeatable)")
    p.add_argument("--force", action="store_true", help="redo stages whose outputs are already complete")
    p.add_argument("--workers", type=int, help="local Beam worker processes (default: run.workers)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--corpus", metavar="DIR",
                   help="run on the real sample corpus in DIR (e.g. ../shared/corpus): applies configs/corpus.yaml")
    p.set_defaults(func=run)


CORPUS_OVERLAY = Path(__file__).resolve().parents[2] / "configs" / "corpus.yaml"


def corpus_overlay(corpus: str) -> dict:
    """configs/corpus.yaml with `{corpus}` replaced by the corpus directory."""
    import yaml

    root = Path(corpus).resolve()
    if not (root / "README.md").exists():
        raise FileNotFoundError(f"{corpus} does not look like the sample corpus (no README.md there)")
    return yaml.safe_load(CORPUS_OVERLAY.read_text().replace("{corpus}", str(root)))


def run(args: argparse.Namespace) -> int:
    from jamdata.config import Config, beam_args_setting, workers_setting
    from pipelines.stages import StageContext, run_all

    cfg = Config.load(args.config)
    if args.corpus:
        cfg.merge(corpus_overlay(args.corpus))
    cfg.override(args.set)
    run_cfg = cfg.section("run")
    out = Path(args.out or run_cfg.get("out_dir", str, default="out/run"))
    ctx = StageContext(cfg, out, workers=workers_setting(args.workers, run_cfg),
                       beam_args=beam_args_setting(args.beam_args, run_cfg), force=args.force)
    summary = run_all(ctx, only=args.stage)
    print("\n== summary")
    for line in summary:
        print("  " + line)
    print(f"outputs under {out.resolve()}")
    return 0
