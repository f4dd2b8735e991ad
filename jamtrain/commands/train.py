"""`jamtrain train | eval | export`: the DeepSpeed training loop, held-out perplexity, weight export.

Launch the same command as one plain process (CPU, gloo), under `torchrun -m jamtrain.cli train ...`
or under `deepspeed --no_local_rank --module jamtrain.cli train ...` (ranks come from the environment).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train (or --resume) a JAM model with DeepSpeed; --dry-run sizes the run")
    p.add_argument("--config", required=True, help="YAML with run, loader and train sections")
    own = p.add_mutually_exclusive_group()
    own.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the output directory from its newest complete checkpoint",
    )
    own.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the previous run's checkpoints, log, evaluation and export in the output "
        "directory, then start afresh (without it, a directory holding a run is refused)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print parameters, memory per GPU, tokens per step and total steps; train nothing",
    )
    p.add_argument("--out", help="training output directory (default: train.out_dir)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_train)

    e = sub.add_parser("eval", help="validation perplexity per dataset on held-out data")
    e.add_argument("--config", required=True, help="the training config (datasets, loader.seq_len, train.eval)")
    src = e.add_mutually_exclusive_group()
    src.add_argument(
        "--weights", help="export directory (model.json + model.safetensors); default: train.out_dir/export"
    )
    src.add_argument("--checkpoint", help="a checkpoint directory (step-NNNNNNNN) or the checkpoints/ directory")
    e.add_argument("--max-samples", type=int, help="held-out samples per dataset (default: train.eval.max_samples)")
    e.add_argument("--json", help="also write the figures to this JSON file")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    e.set_defaults(func=_eval)

    x = sub.add_parser("export", help="write a checkpoint's weights as one safetensors file + model.json")
    x.add_argument(
        "--checkpoint", required=True, help="a checkpoint directory (step-NNNNNNNN) or the checkpoints/ directory"
    )
    x.add_argument("--out", required=True, help="output directory")
    x.set_defaults(func=_export)


def _settings(args: argparse.Namespace, out: str | None = None):
    from jamdata.config import Config, storage_setting
    from jamtrain.settings import parse_settings

    cfg = Config.load(args.config, overrides=args.set)
    storage_setting(cfg.section("run"))  # datasets may be in a bucket; the training directory may not
    return parse_settings(cfg, out_dir=out)


def _fail(e: Exception, rank0_only: bool = False) -> int:
    """One line on stderr. `rank0_only`: an error every rank holds alike (rank 0 decided it and
    sent it to the others), printed once rather than once per rank."""
    if rank0_only and os.environ.get("RANK", "0") != "0":  # the launcher's rank: the group is left by now
        return 1
    print(f"jamtrain: error: {e}", file=sys.stderr)
    return 1


def _train(args: argparse.Namespace) -> int:
    from jamtrain.checkpoint import CheckpointError
    from jamtrain.rundir import TrainDirError, TrainDirLocked
    from jamtrain.sizing import dry_run
    from jamtrain.train import train

    s = _settings(args, args.out)
    if args.dry_run:
        dry_run(s)
        return 0
    try:
        result = train(s, resume=args.resume, overwrite=args.overwrite)
    except (TrainDirError, TrainDirLocked) as e:  # the output directory's claim, decided by rank 0
        return _fail(e, rank0_only=True)
    except CheckpointError as e:
        return _fail(e)
    if result.first_loss is not None:
        if os.environ.get("RANK", "0") == "0":  # the launcher's rank (train() has left its group)
            print(
                f"done: loss {result.first_loss:.4f} -> {result.last_loss:.4f} in {result.seconds:.1f}s; "
                f"outputs in {s.out_dir}"
            )
    return 0


def _pick_checkpoint(path: str):
    from jamtrain import checkpoint as ckpt

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such checkpoint directory")
    if ckpt.TAG_RE.match(p.name):
        return p
    choice = ckpt.find_resumable(p, warn=lambda m: print(m, file=sys.stderr))
    if choice.path is None:
        raise ckpt.CheckpointError(f"no complete checkpoint in {p}")
    return choice.path


def _eval(args: argparse.Namespace) -> int:
    import tempfile

    from jamtrain.checkpoint import CheckpointError
    from jamtrain.evaluate import evaluate
    from jamtrain.building import dataset_vocab
    from jamtrain.export import export_checkpoint, load_exported

    s = _settings(args)
    try:
        if args.checkpoint:
            tmp = tempfile.TemporaryDirectory()
            export_checkpoint(_pick_checkpoint(args.checkpoint), Path(tmp.name))
            weights = Path(tmp.name)
        else:
            weights = Path(args.weights or s.out_dir / "export")
        model, info = load_exported(weights)
    except CheckpointError as e:
        return _fail(e)
    sets = s.eval_sets()
    if not sets:
        return _fail(
            ValueError("nothing to evaluate: train.eval.holdout_fraction is 0 and train.eval.datasets is empty")
        )
    vocab = dataset_vocab({n: d for n, (d, _) in sets.items()})
    if vocab.size != info["vocab_size"]:
        return _fail(ValueError(f"model vocabulary {info['vocab_size']} != datasets' joint vocabulary {vocab.size}"))
    results = evaluate(
        model, sets, vocab, s.seq_len, s.eval_batch_size, args.max_samples or s.eval_max_samples, policy=s.shard_policy
    )
    print(f"{'dataset':<16}{'samples':>9}{'tokens':>10}{'ppl':>11}{'text ppl':>11}{'image ppl':>11}")
    fmt = lambda x: f"{x:11.2f}" if x is not None else f"{'-':>11}"  # noqa: E731
    for name, r in results.items():
        print(f"{name:<16}{r['samples']:>9}{r['tokens']:>10}{fmt(r['ppl'])}{fmt(r['text_ppl'])}{fmt(r['image_ppl'])}")
    if args.json:
        from jamdata.io import atomic_write

        with atomic_write(args.json, "w") as f:
            json.dump({"weights": str(weights), "step": info.get("step"), "datasets": results}, f, indent=1)
    return 0


def _export(args: argparse.Namespace) -> int:
    from jamtrain.checkpoint import CheckpointError
    from jamtrain.export import export_checkpoint

    try:
        path = _pick_checkpoint(args.checkpoint)
        export_checkpoint(path, Path(args.out))
    except CheckpointError as e:
        return _fail(e)
    print(f"exported {path} -> {Path(args.out) / 'model.safetensors'} (+ model.json)")
    return 0
