"""`jamtrain model init|fuse|info` (and the shortcut `jamtrain fuse`): make, fuse and inspect weights."""
from __future__ import annotations

import argparse
import json

from jamdata.cli import command_group


def _init(args: argparse.Namespace) -> int:
    import torch

    from jamtrain.models import Backbone, backbone_config, save_model
    from jamdata.config import Config

    section = {"preset": args.preset, "positions": args.positions, "activation": args.activation}
    for key in ("n_layers", "d_model", "n_heads", "d_ff", "max_seq_len"):
        if getattr(args, key) is not None:
            section[key] = getattr(args, key)
    torch.manual_seed(args.seed)
    model = Backbone(backbone_config(Config(section, "model"), args.vocab_size))
    save_model(model, args.out)
    print(f"wrote {args.out}: backbone {model.cfg.n_layers}x{model.cfg.d_model}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")
    return 0


def _fuse(args: argparse.Namespace) -> int:
    from jamtrain.models import fuse_cross, fuse_uniform, fuse_width, load_backbone, save_model

    text, image = load_backbone(args.text), load_backbone(args.image)
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
    p.add_argument("--head", choices=["text", "image", "average"], default="average",
                   help="width/cross: what the new output head reproduces at initialisation")
    p.add_argument("--every", type=int, default=1, help="cross: a cross-attention block after every k-th layer")
    p.add_argument("--cross-heads", type=int, default=0, help="cross: heads of the cross blocks (0 = backbone's)")
    p.add_argument("--embedding", choices=["shared", "separate"], default="shared",
                   help="cross: one merged input embedding (text rows + image rows) or one per backbone")
    p.add_argument("--text-rows", type=int, help="cross: embedding rows [0, N) come from the text parent")
    p.set_defaults(func=_fuse)


def register(sub: argparse._SubParsersAction) -> None:
    group = command_group(sub, "model", "create, fuse and inspect model weights")
    p = group.add_parser("init", help="write a freshly initialised backbone (e.g. parents for a demo)")
    p.add_argument("--preset", default="tiny", help="tiny, small, 1b, 7b")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--positions", choices=["learned", "rotary"], default="learned")
    p.add_argument("--activation", choices=["gelu", "swiglu"], default="gelu")
    for key in ("n_layers", "d_model", "n_heads", "d_ff", "max_seq_len"):
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_init)
    _add_fuse_args(group.add_parser("fuse", help="fuse two backbones: JAM-Uniform, JAM-Width or JAM-Cross"))
    p = group.add_parser("info", help="print a checkpoint's architecture and size")
    p.add_argument("path")
    p.set_defaults(func=_info)
    _add_fuse_args(sub.add_parser("fuse", help="shortcut for `jamtrain model fuse`"))
