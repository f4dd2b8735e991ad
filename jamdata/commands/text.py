"""`jamdata text clean`: raw text sources -> cleaned, filtered, deduplicated documents + rejects."""
from __future__ import annotations

import argparse
from jamdata.cli import QUIET_HELP, command_group


def register(sub: argparse._SubParsersAction) -> None:
    group = command_group(sub, "text", "text corpus: clean, tokenizer, sample")
    p = group.add_parser("clean", help="read the raw text sources, clean, filter, dedup (writes text-clean/ "
                                       "and text-clean-rejects/ under the run directory)",
                         description="Beam flags go after `--`, e.g. `-- --runner=DataflowRunner --project=P ...`.")
    p.add_argument("--config", required=True)
    p.add_argument("--out", help="run directory (default: run.out_dir from the config)")
    p.add_argument("--workers", type=int, help="local Beam worker processes (default: run.workers)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=run_clean)


def run_clean(args: argparse.Namespace) -> int:
    from jamdata.config import Config, beam_args_setting, run_dir_setting, storage_setting, workers_setting
    from jamdata.io import join
    from pipelines.text_clean import run, summary_lines

    cfg = Config.load(args.config, overrides=args.set)
    run_cfg = cfg.section("run")
    storage_setting(run_cfg)
    out = run_dir_setting(args.out, run_cfg)
    workers = workers_setting(args.workers, run_cfg)
    beam_args = beam_args_setting(args.beam_args, run_cfg)
    docs, rejects = join(out, "text-clean"), join(out, "text-clean-rejects")
    manifest = run(cfg, str(docs), str(rejects), workers, beam_args)
    for line in summary_lines(manifest, str(docs)):
        print(line)
    print(f"rejects in {rejects}")
    return 0
