"""`jamdata instruct build|show`: interleaved instruction-tuning samples (see docs/instruct.md)."""

from __future__ import annotations

import argparse

from jamdata.cli import QUIET_HELP, command_group


def register(sub: argparse._SubParsersAction) -> None:
    group = command_group(sub, "instruct", "interleaved (text + image) instruction samples and the CM3 objective")
    b = group.add_parser("build", help="sources -> interleaved token samples (webdataset tars) + rejects")
    b.add_argument("--config", required=True, help="YAML with an `instruct` section")
    b.add_argument("--out", help="output dataset (default: RUN_DIR/instruct, RUN_DIR = run.out_dir)")
    b.add_argument("--rejects", help="rejects dataset (default: OUT-rejects)")
    b.add_argument(
        "--tokenizer", help="tokenizer dataset dir or .model (default: instruct.tokenizer or RUN_DIR/tokenizer)"
    )
    b.add_argument("--vqvae", help="VQ-VAE dir (default: instruct.vqvae or RUN_DIR/vqvae)")
    b.add_argument("--workers", type=int, help="local Beam worker processes (default: run.workers)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    b.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    b.set_defaults(func=build)

    s = group.add_parser("show", help="render a few samples as an HTML page")
    s.add_argument("dir", metavar="DIR", help="an interleaved dataset (e.g. out/demo/instruct)")
    s.add_argument("--out", required=True, help="HTML file to write")
    s.add_argument("-n", type=int, default=8, help="how many samples (default 8)")
    s.add_argument("--key", action="append", help="show this sample key (repeatable)")
    s.add_argument("--tokenizer", help="default: the path recorded in the manifest")
    s.add_argument("--vqvae", help="default: the path recorded in the manifest")
    s.set_defaults(func=show)


def build(args: argparse.Namespace) -> int:
    from pipelines.instruct_build import STAGE
    from jamdata.stage import context_from_args

    rejects = args.rejects or (f"{args.out.rstrip('/')}-rejects" if args.out else None)
    ctx = context_from_args(
        args,
        {"instruct": args.out, "instruct-rejects": rejects, "tokenizer": args.tokenizer, "vqvae": args.vqvae},
        out_is_run_dir=False,
    )
    for line in STAGE.run(ctx):
        print(line)
    return 0


def show(args: argparse.Namespace) -> int:
    from jamdata.interleaved.render import render_dataset
    from jamdata.io import atomic_write

    page = render_dataset(args.dir, args.n, args.tokenizer, args.vqvae, args.key)
    with atomic_write(args.out, "w") as f:
        f.write(page)
    print(f"wrote {args.out}")
    return 0
