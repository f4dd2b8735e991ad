"""`jamdata text clean`: raw text sources -> cleaned, filtered, deduplicated documents + rejects."""

from __future__ import annotations

import argparse
from jamdata.cli import QUIET_HELP, command_group


def register(sub: argparse._SubParsersAction) -> None:
    group = command_group(sub, "text", "text corpus: clean, tokenizer, sample")
    p = group.add_parser(
        "clean",
        help="read the raw text sources, clean, filter, dedup (writes text-clean/ "
        "and text-clean-rejects/ under the run directory)",
        description="Beam flags go after `--`, e.g. `-- --runner=DataflowRunner --project=P ...`.",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--out", help="run directory (default: run.out_dir from the config)")
    p.add_argument("--workers", type=int, help="local Beam worker processes (default: run.workers)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=run_clean)


def run_clean(args: argparse.Namespace) -> int:
    from jamdata.stage import context_from_args
    from pipelines.text_clean import STAGE

    for line in STAGE.run(context_from_args(args)):
        print(line)
    return 0
