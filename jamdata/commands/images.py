"""`jamdata images tokenize|show` and `jamdata vqvae train`: the image tokenizer and its data."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from jamdata.cli import QUIET_HELP, command_group

    images = command_group(sub, "images", "image-caption data: VQ tokenization and inspection")
    p = images.add_parser("tokenize", help="image-caption tars/jsonl/parquet -> VQ-tokenized webdataset tars + rejects")
    p.add_argument("--config", required=True, help="YAML config (sections images, vqvae, run)")
    p.add_argument("--vqvae", required=True, help="VQ-VAE directory (vqvae.ckpt + vqvae.yaml) or a taming .ckpt")
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model or tokenizer dataset directory")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--rejects", help="rejects dataset directory (default: OUT-rejects)")
    p.add_argument("--inputs", nargs="+", help="input files/globs (default: images.inputs)")
    p.add_argument("--workers", type=int, help="local Beam worker processes (default: run.workers)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=tokenize)

    p = images.add_parser("show", help="decode samples of an image-caption dataset into a PNG contact sheet")
    p.add_argument("dir", help="image-caption dataset directory")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--vqvae", help="VQ-VAE directory (default: the one recorded in the manifest)")
    p.add_argument("-n", type=int, default=12, help="samples to show")
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--originals", nargs="*", help="input files to place each original beside its decoding")
    p.set_defaults(func=show)

    vq = command_group(sub, "vqvae", "the VQ-VAE image tokenizer")
    p = vq.add_parser(
        "train",
        help="train a VQ-VAE (checkpoints in the taming/Chameleon layout); several "
        "processes: torchrun --nproc_per_node N -m jamdata.cli vqvae train ...",
    )
    p.add_argument("--config", required=True, help="YAML config (section vqvae, vqvae.train)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--inputs", nargs="+", help="training images (tars/jsonl/parquet; default: vqvae.train.inputs)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest OUT/checkpoints/step-N (vqvae.train.resume)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=train)


def tokenize(args: argparse.Namespace) -> int:
    from jamdata.stage import context_from_args
    from pipelines.image_tokenize import STAGE

    rejects = args.rejects or f"{str(args.out).rstrip('/')}-rejects"
    ctx = context_from_args(
        args,
        {"image-caption": args.out, "image-caption-rejects": rejects, "vqvae": args.vqvae, "tokenizer": args.tokenizer},
        out_is_run_dir=False,
    )
    if args.inputs:
        ctx.config.set("images.inputs", list(args.inputs))
    for line in STAGE.run(ctx):
        print(line)
    return 0


def show(args: argparse.Namespace) -> int:
    from jamdata.image.show import render_contact_sheet

    path, n = render_contact_sheet(args.dir, args.out, args.vqvae, args.n, args.columns, args.originals)
    print(f"{n} samples -> {path}")
    return 0


def train(args: argparse.Namespace) -> int:
    """The `vqvae-train` stage with its output mapped to `--out` (training only: a configured
    `vqvae.checkpoint` to import is ignored here)."""
    from jamdata.stage import context_from_args
    from pipelines.vqvae_train import STAGE

    overrides = ["vqvae.checkpoint=null"] + (["vqvae.train.resume=true"] if args.resume else [])
    args.set = overrides + list(args.set)
    ctx = context_from_args(args, {"vqvae": args.out}, out_is_run_dir=False)
    if args.inputs:
        ctx.config.set("vqvae.train.inputs", list(args.inputs))
    for line in STAGE.run(ctx):
        print(line)
    return 0
