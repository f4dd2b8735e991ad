"""`jamdata tokenizer train|info`: the SentencePiece model of the joint vocabulary."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from jamdata.cli import command_group

    group = command_group(sub, "tokenizer", "train or inspect the text tokenizer")
    p = group.add_parser("train", help="train a LLaMA-style BPE tokenizer on clean documents (or load a .model)")
    p.add_argument("--config", required=True)
    p.add_argument("--out", help="run directory (default: run.out_dir); writes RUN/tokenizer")
    p.add_argument("--input", help="clean documents dataset (default: RUN/text-clean)")
    p.add_argument("--model", help="use this existing SentencePiece .model instead of training")
    p.add_argument("--vocab-size", type=int, help="text pieces (default: text.tokenizer.vocab_size)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=train)
    q = group.add_parser("info", help="show a tokenizer's joint vocabulary and how it tokenizes a text")
    q.add_argument("path", help="tokenizer dataset directory or .model file")
    q.add_argument("--image-codes", type=int, default=8192)
    q.add_argument("--text", default="In 2024, the café served 12 π-shaped pies.")
    q.set_defaults(func=info)


def train(args: argparse.Namespace) -> int:
    from jamdata.stage import context_from_args
    from pipelines.tokenizer_train import STAGE

    ctx = context_from_args(args)
    for key, value in (("input", args.input), ("model", args.model), ("vocab_size", args.vocab_size)):
        if value is not None:
            ctx.config.set(f"text.tokenizer.{key}", value)
    for line in STAGE.run(ctx):
        print(line)
    print(f"tokenizer dataset: {ctx.path('tokenizer')}")
    return 0


def info(args: argparse.Namespace) -> int:
    from jamdata.text.tokenizer import TextTokenizer, tokenizer_settings

    tok = TextTokenizer(args.path, args.image_codes)
    v = tok.vocab
    print(f"model: {tok.path}")
    print(
        f"text pieces: {v.text_size}  specials: {v.special_offset}..{v.image_offset - 1}  "
        f"image codes: {v.image_offset}..{v.size - 1}  dtype: {v.dtype}"
    )
    print(f"fingerprint: {v.fingerprint}")
    print("settings: " + ", ".join(f"{k}={val}" for k, val in tokenizer_settings(tok.sp).items()))
    ids = tok.encode(args.text)
    print(f"{args.text!r} -> {ids}")
    print("pieces: " + " ".join(tok.sp.id_to_piece(i) for i in ids))
    return 0
