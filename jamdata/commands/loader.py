"""`jamdata loader inspect --config C --step N`: the sample keys of every row of global step N.

A row's samples depend on the packing of every earlier row of its lanes, so step N is found by
replaying the loader from step 0 (or from a saved `--state`) to N, which takes time in proportion
to the distance. Distances beyond `--max-replay` steps are refused up front instead of running
for hours (or, for a mistyped step, for ever)."""

from __future__ import annotations

import argparse
import json

from jamdata.cli import command_group

MAX_REPLAY = 100_000  # about a minute at the ~0.5 ms a small step takes to pack


def register(sub: argparse._SubParsersAction) -> None:
    group = command_group(sub, "loader", "the training loader: inspect the global data order")
    p = group.add_parser("inspect", help="print the sample keys of every row of global step N (no training)")
    p.add_argument("--config", required=True)
    p.add_argument("--step", type=int, required=True, help="global step (0-based)")
    p.add_argument("--out", help="run directory holding the datasets (default: run.out_dir)")
    p.add_argument("--state", help="a saved loader state (JSON) at or before --step, to start from instead of step 0")
    p.add_argument(
        "--max-replay",
        type=int,
        default=MAX_REPLAY,
        metavar="STEPS",
        help=f"refuse a --step more than this many steps after the start (default {MAX_REPLAY:,})",
    )
    p.add_argument("--tokens", type=int, default=0, metavar="K", help="also print the first K tokens of each row")
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=inspect)


def inspect(args: argparse.Namespace) -> int:
    from jamdata.config import Config, storage_setting
    from jamdata.loader import build_loader, dataset_dirs
    from jamdata.loader.sources import LoaderError

    cfg = Config.load(args.config, overrides=args.set)
    storage_setting(cfg.section("run"))
    loader = build_loader(cfg.section("loader"), dataset_dirs(cfg, args.out), num_workers=0)
    if args.step < 0:
        raise LoaderError("--step must be >= 0")
    if args.state:
        from jamdata.io import open_url

        with open_url(args.state, "r") as f:  # a local path or a URL
            loader.load_state_dict(json.load(f))
        if loader.step > args.step:
            raise LoaderError(f"--state is at step {loader.step}, after --step {args.step}")
    distance = args.step - loader.step
    if distance > args.max_replay:
        raise LoaderError(
            f"--step {args.step} is {distance:,} steps after the start (step {loader.step}; "
            f"{len(loader):,} steps per epoch) and would be replayed one by one; the limit is "
            f"--max-replay {args.max_replay:,}: start nearer with --state (a loader state saved at "
            "or before the step) or raise --max-replay"
        )
    spec = loader.spec
    while True:  # positions come from packing every earlier row of the same lanes (bounded above)
        for batch in loader:
            step = loader.step - 1
            if step == args.step:
                _print(batch, step, spec, loader.dataset_names, args)
                return 0


def _print(batch, step, spec, names, args) -> None:
    for j, keys in enumerate(batch["keys"]):
        lane, lane_row = spec.lane_of(step, j)
        seg = batch["segment_ids"][j]
        row = {
            "step": step,
            "row": j,
            "lane": lane,
            "lane_row": lane_row,
            "dataset": names[int(batch["dataset_index"][j])],
            "tokens": int((seg >= 0).sum()),
            "targets": int(batch["loss_mask"][j].sum()),
            "keys": keys,
        }
        if args.tokens:
            row["first_tokens"] = batch["tokens"][j][: args.tokens].tolist()
        if args.json:
            print(json.dumps(row))
        else:
            extra = f" first={row['first_tokens']}" if args.tokens else ""
            print(
                f"step {step} row {j} [{row['dataset']}, lane {lane} row {lane_row}] "
                f"{row['tokens']} tokens, {row['targets']} targets: {' '.join(keys)}{extra}"
            )
