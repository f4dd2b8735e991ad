"""`jamdata text clean`: raw text sources -> cleaned, filtered, deduplicated documents + rejects."""
from __future__ import annotations

import argparse
from pathlib import Path

from jamdata.cli import command_group


def register(sub: argparse._SubParsersAction) -> None:
    group = command_group(sub, "text", "text corpus: clean, tokenizer, sample")
    p = group.add_parser("clean", help="read the raw text sources, clean, filter, dedup (writes text-clean/ "
                                       "and text-clean-rejects/ under the run directory)",
                         description="Beam flags go after `--`, e.g. `-- --runner=DataflowRunner --project=P ...`.")
    p.add_argument("--config", required=True)
    p.add_argument("--out", help="run directory (default: run.out_dir from the config)")
    p.add_argument("--workers", type=int, help="local Beam worker processes (default: run.workers)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=run_clean)


def run_clean(args: argparse.Namespace) -> int:
    from jamdata.config import Config, beam_args_setting, workers_setting
    from pipelines.text_clean import run, summary_lines

    cfg = Config.load(args.config, overrides=args.set)
    run_cfg = cfg.section("run")
    out = Path(args.out or run_cfg.get("out_dir", str, default="out/run"))
    workers = workers_setting(args.workers, run_cfg)
    beam_args = beam_args_setting(args.beam_args, run_cfg)
    docs, rejects = out / "text-clean", out / "text-clean-rejects"
    manifest = run(cfg, str(docs), str(rejects), workers, beam_args)
    for line in summary_lines(manifest, str(docs)):
        print(line)
    print(f"rejects in {rejects}")
    return 0
