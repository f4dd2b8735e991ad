"""`jamtrain model init|fuse|info|import|extend-vocab|export-hf` (and the shortcut `jamtrain fuse`): make,
fuse and inspect weights; bring Hugging Face LLaMA checkpoints in and out."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from jamdata.cli import command_group

if TYPE_CHECKING:  # torch is imported by the commands that need it
    from torch import nn


def _init(args: argparse.Namespace) -> int:
    import torch

    from jamtrain.models import Backbone, backbone_config, model_settings, save_model

    section = {"preset": args.preset, "positions": args.positions, "activation": args.activation, "norm": args.norm}
    for key in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
        if getattr(args, key) is not None:
            section[key] = getattr(args, key)
    torch.manual_seed(args.seed)
    model = Backbone(backbone_config(model_settings(section, "model"), args.vocab_size, "model"))
    save_model(model, args.out)
    print(
        f"wrote {args.out}: backbone {model.cfg.n_layers}x{model.cfg.d_model}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )
    return 0


def _fuse(args: argparse.Namespace) -> int:
    from jamtrain.models import fuse_cross, fuse_uniform, fuse_width, load_backbone, save_model

    text, image = load_backbone(args.text), load_backbone(args.image)
    model: nn.Module
    if args.mode == "uniform":
        model = fuse_uniform(text, image, args.weight)
    elif args.mode == "width":
        model = fuse_width(text, image, args.head)
    else:
        if args.text_rows is None:
            from jamdata.errors import ModelError

            raise ModelError("--text-rows is required for --mode cross (the joint vocabulary's image_offset)")
        model = fuse_cross(text, image, args.text_rows, args.every, args.cross_heads, args.embedding, args.head)
    save_model(model, args.out)
    print(f"wrote {args.out}: JAM-{args.mode.capitalize()}, {sum(p.numel() for p in model.parameters()):,} parameters")
    return 0


DTYPES = ("auto", "float32", "bfloat16", "float16")


def _dtype(name: str):
    import torch

    return None if name == "auto" else getattr(torch, name)


def parse_size(text: str) -> int:
    """Bytes from "5GB", "500MB", "64KiB" or a plain number (decimal units, as Hugging Face uses)."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    try:
        return int(float(num) * units[t[len(num) :]])
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB)") from None


def _target_vocab(args: argparse.Namespace, model_rows: int) -> int | None:
    """The vocabulary size to grow to: the joint vocabulary of --vocab (checked against the
    model's rows) or --vocab-size."""
    if getattr(args, "vocab", None):
        import fsspec

        from jamdata.vocab import JointVocab
        from jamtrain.models.resize import check_text_rows

        path = args.vocab if args.vocab.endswith(".json") else args.vocab.rstrip("/") + "/vocab.json"
        with fsspec.open(path, "r") as f:
            vocab = JointVocab.from_dict(json.load(f))
        check_text_rows(model_rows, vocab)
        return vocab.size
    return getattr(args, "vocab_size", None)


def _import(args: argparse.Namespace) -> int:
    from jamtrain.models.hf import import_checkpoint, read_config
    from jamtrain.models.resize import NOISE

    target = _target_vocab(args, read_config(args.src).vocab_size) if (args.vocab or args.vocab_size) else None
    cfg, out = import_checkpoint(
        args.src, args.out, _dtype(args.dtype), target, args.seed, NOISE if args.noise is None else args.noise
    )
    print(
        f"wrote {out}: LLaMA-style backbone {cfg.n_layers}x{cfg.d_model}, {cfg.n_heads} heads "
        f"({cfg.kv_heads} key/value), vocabulary {cfg.vocab_size}, "
        f"{'tied' if cfg.tie_embeddings else 'untied'} embeddings"
    )
    return 0


def _extend(args: argparse.Namespace) -> int:
    from jamdata.errors import ModelError
    from jamtrain.models import BackboneConfig, read_checkpoint
    from jamtrain.models.checkpoint import save_state
    from jamtrain.models.resize import NOISE, extend_state

    meta, state = read_checkpoint(args.path)
    if not meta or meta.get("kind") != "backbone":
        raise ModelError(f"{args.path}: not a backbone checkpoint (extend the parents before fusing them)")
    cfg = BackboneConfig.from_dict(meta["config"])
    target = _target_vocab(args, cfg.vocab_size)
    if target is None:  # the command requires --vocab or --vocab-size
        raise ModelError("give the vocabulary to grow to: --vocab or --vocab-size")
    new_cfg, state = extend_state(state, cfg, target, args.seed, NOISE if args.noise is None else args.noise)
    save_state({k: v.contiguous() for k, v in state.items()}, {**meta, "config": new_cfg.to_dict()}, args.out)
    print(f"wrote {args.out}: vocabulary {cfg.vocab_size} -> {target} rows ({target - cfg.vocab_size} new)")
    return 0


def _export_hf(args: argparse.Namespace) -> int:
    from jamtrain.models import load_model
    from jamtrain.models.checkpoint import read_description
    from jamtrain.models.hf_export import export_hf

    meta = read_description(args.path)
    base = (meta or {}).get("hf_config")
    dtype = _dtype(args.dtype)
    if dtype is None and base and isinstance(base.get("dtype") or base.get("torch_dtype"), str):
        import torch

        dtype = getattr(torch, base.get("dtype") or base.get("torch_dtype"), None)
    files = export_hf(load_model(args.path), args.out, dtype, args.max_shard_size, base, args.overwrite)
    print(f"wrote {args.out}: {', '.join(files)}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from jamtrain.models import read_checkpoint

    meta, state = read_checkpoint(args.path)
    n = sum(t.numel() for t in state.values())
    print(json.dumps({"path": args.path, "model": meta, "tensors": len(state), "parameters": n}, indent=2))
    return 0


def _add_fuse_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["uniform", "width", "cross"], required=True)
    p.add_argument("--text", required=True, help="text parent checkpoint (.safetensors or .pt)")
    p.add_argument("--image", required=True, help="image-text parent checkpoint, same architecture")
    p.add_argument("--out", required=True, help="output file (.safetensors or .pt)")
    p.add_argument("--weight", type=float, default=0.5, help="uniform: weight of the text parent")
    p.add_argument(
        "--head",
        choices=["text", "image", "average"],
        default="average",
        help="width: what the new head reproduces at initialisation; cross: the 2d -> d layer "
        "starts as [a*I | (1-a)*I], a = 1, 0, 0.5",
    )
    p.add_argument("--every", type=int, default=1, help="cross: a cross-attention block after every k-th layer")
    p.add_argument("--cross-heads", type=int, default=0, help="cross: heads of the cross blocks (0 = backbone's)")
    p.add_argument(
        "--embedding",
        choices=["shared", "separate"],
        default="shared",
        help="cross: one merged input embedding (text rows + image rows) or one per backbone",
    )
    p.add_argument("--text-rows", type=int, help="cross: embedding rows [0, N) come from the text parent")
    p.set_defaults(func=_fuse)


def _add_vocab_args(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument(
        "--vocab",
        help="grow to this joint vocabulary: its vocab.json or the tokenizer dataset "
        "directory (the model's rows must be its text pieces)",
    )
    g.add_argument("--vocab-size", type=int, help="grow to this many rows")
    p.add_argument("--seed", type=int, default=0, help="seed of the new rows' noise")
    p.add_argument("--noise", type=float, help="noise of the new rows, relative to the rows' std (default 3e-3)")


def register(sub: argparse._SubParsersAction) -> None:
    group = command_group(sub, "model", "create, fuse and inspect model weights")
    p = group.add_parser("init", help="write a freshly initialised backbone (e.g. parents for a demo)")
    p.add_argument("--preset", default="tiny", help="tiny, small, 1b, 7b")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--positions", choices=["learned", "rotary"], default="learned")
    p.add_argument("--activation", choices=["gelu", "swiglu"], default="gelu")
    p.add_argument("--norm", choices=["layernorm", "rmsnorm"], default="layernorm")
    for key in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_init)
    _add_fuse_args(group.add_parser("fuse", help="fuse two backbones: JAM-Uniform, JAM-Width or JAM-Cross"))
    p = group.add_parser("info", help="print a checkpoint's architecture and size")
    p.add_argument("path")
    p.set_defaults(func=_info)
    p = group.add_parser("import", help="a Hugging Face LlamaForCausalLM directory -> a jam checkpoint")
    p.add_argument("src", help="directory with config.json + model.safetensors (or shards + index); path or URL")
    p.add_argument("--out", required=True, help="output file (.safetensors or .pt)")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="cast the weights (auto: as stored)")
    _add_vocab_args(p, required=False)
    p.set_defaults(func=_import)
    p = group.add_parser("extend-vocab", help="append rows for the special tokens and image codes")
    p.add_argument("path", help="a backbone checkpoint (e.g. from `jamtrain model import`)")
    p.add_argument("--out", required=True)
    _add_vocab_args(p, required=True)
    p.set_defaults(func=_extend)
    p = group.add_parser("export-hf", help="a backbone checkpoint -> a Hugging Face LlamaForCausalLM directory")
    p.add_argument("path")
    p.add_argument("--out", required=True, help="output directory (path or URL)")
    p.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="auto: the imported model's dtype, else the checkpoint's"
    )
    p.add_argument("--max-shard-size", type=parse_size, help="shard the weights, e.g. 5GB (default: one file)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    p.set_defaults(func=_export_hf)
    _add_fuse_args(sub.add_parser("fuse", help="shortcut for `jamtrain model fuse`"))
