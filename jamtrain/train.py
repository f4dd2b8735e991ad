"""The training loop: JAM model + mixed streaming loader + DeepSpeed, with exact resume.

One code path for a laptop (one plain CPU process, gloo, fp32), `torchrun` / the `deepspeed`
launcher on CPU or GPUs (bf16), from the `train` section of a config and an editable DeepSpeed
JSON (ZeRO stage, micro-batch, gradient accumulation, clipping). See docs/training.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from jamdata.stage import Stage, StageContext
from jamdata.vocab import JointVocab
from jamtrain import checkpoint as ckpt
from jamtrain import rundir
from jamtrain.building import (
    count_params,
    dataset_vocab,
    default_loader_factory,
    default_model_factory,
    lift_scalar_params,
    model_for_vocab,
    param_groups,
    resolved_ds_config,
    run_precision,
    torch_dtype,
)
from jamtrain.distributed import device_name, setup_distributed
from jamtrain.evaluate import evaluate
from jamtrain.export import (
    export_engine,
)
from jamtrain.loss import mask_heldout, masked_loss
from jamtrain.schedule import build_scheduler
from jamtrain.settings import (
    Settings,
    parse_settings,
)
from jamtrain.sizing import (
    check_lengths,
    flops_per_token,
)
from jamtrain.throughput import mfu, real_tokens, run_peak

log = logging.getLogger(__name__)
FAULT_ENV = "JAMTRAIN_FAULT"  # fault injection for the resume tests: kill-after-step:K | kill-in-save:K


def _fault(kind: str, step: int) -> bool:
    spec = os.environ.get(FAULT_ENV, "")
    want, _, at = spec.partition(":")
    return want == kind and at.isdigit() and int(at) == step


class JsonLog:
    def __init__(self, path: Path | None):
        self.f = open(path, "a") if path else None

    def write(self, record: dict) -> None:
        if self.f:
            self.f.write(json.dumps(record, sort_keys=True) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.f:
            self.f.close()


# -- the loop ----------------------------------------------------------------------------------
@dataclass
class Result:
    losses: dict[int, float]
    first_loss: float | None
    last_loss: float | None
    eval: dict
    export_dir: Path | None
    resumed_from: int
    params: int
    seconds: float


def train(
    s: Settings,
    resume: bool = False,
    model_factory: Callable | None = None,
    loader_factory: Callable | None = None,
    echo: Callable[[str], None] = print,
    overwrite: bool = False,
) -> Result:
    """Run (or continue) training as configured; collective over all ranks. The output directory
    is locked for the run and must hold no other run's outputs unless `resume` continues that run
    or `overwrite` deletes it first (jamtrain.rundir)."""
    t_start = time.time()
    rank, world, _ = setup_distributed(s.cpu_shm_comm)
    with contextlib.ExitStack() as owned:
        run_id = _claim(owned, s.out_dir, resume, overwrite, rank, echo)
        return _run(s, resume, run_id, model_factory, loader_factory, echo, rank, world, t_start)


def _claim(
    owned: contextlib.ExitStack, out_dir: Path, resume: bool, overwrite: bool, rank: int, echo: Callable[[str], None]
) -> str:
    """Rank 0 locks and claims the output directory; every rank gets the run id or the same error."""
    got: list[Any] = [None]
    if rank == 0:
        try:
            owned.enter_context(rundir.locked(out_dir))
            claim = rundir.claim(out_dir, resume, overwrite)
            if claim.cleared:
                echo(f"--overwrite: deleted the previous run's {', '.join(claim.cleared)} in {out_dir}")
            got[0] = claim.run_id
        except Exception as e:  # sent to the other ranks, so all of them stop with the same message
            got[0] = e
    torch.distributed.broadcast_object_list(got, src=0)
    if isinstance(got[0], Exception):
        raise got[0]
    return got[0]


def _run(
    s: Settings,
    resume: bool,
    run_id: str,
    model_factory: Callable | None,
    loader_factory: Callable | None,
    echo: Callable[[str], None],
    rank: int,
    world: int,
    t_start: float,
) -> Result:
    """The run itself, in a directory this process group owns."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    cpu = get_accelerator().device_name() == "cpu"
    if cpu and s.cpu_threads:
        torch.set_num_threads(s.cpu_threads)
    device = torch.device(device_name())
    say = echo if rank == 0 else (lambda _m: None)
    vocab = dataset_vocab(s.datasets)
    out_dir, ckpt_dir = s.out_dir, s.out_dir / rundir.CKPT_DIR

    s.model = model_for_vocab(s.model, vocab)
    check_lengths(s, vocab.size)
    torch.manual_seed(s.seed)
    ds_cfg = resolved_ds_config(s, cpu)
    # fused parents: materialised on this rank's device, or under ZeRO-3 partitioned as they are built
    model = (
        model_factory
        or functools.partial(
            default_model_factory,
            device=device,
            dtype=torch_dtype(run_precision(s, cpu)),
            zero=ds_cfg if s.zero_stage >= 3 else None,
        )
    )(s.model, vocab.size)
    n_params = count_params(model)
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        say(f"model built partitioned over {world} rank(s) (ZeRO-3, deepspeed.zero.Init)")
    lift_scalar_params(model)
    optimizer = torch.optim.AdamW(param_groups(model, s.weight_decay), lr=s.lr, betas=s.betas, eps=s.eps)
    scheduler = build_scheduler(optimizer, s.warmup_steps, s.steps, s.decay, s.min_lr_ratio)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)
    loader = (loader_factory or default_loader_factory)(s, rank, world)
    names = list(getattr(loader, "dataset_names", list(s.datasets)))

    torch.manual_seed(s.seed + 1000 + rank)  # dropout etc.: per rank; a resume restores the saved state
    start = 0
    if resume:
        choice = ckpt.find_resumable(ckpt_dir, deep=s.verify_checkpoints == "sha256", warn=say) if rank == 0 else None
        picked = [str(choice.path) if choice and choice.path else None]
        torch.distributed.broadcast_object_list(picked, src=0)
        if picked[0] is None:
            say(f"no complete checkpoint in {ckpt_dir}; starting from step 0")
        else:
            state = ckpt.load(engine, Path(picked[0]), rank, world)
            loader.load_state_dict(state["loader"])
            ckpt.set_rng_state(state["rng"])
            start = int(state["step"])
            say(f"resumed from {picked[0]} (step {start})")
        if rank == 0:  # the steps after the checkpoint run again: log each of them once
            rundir.truncate_log(out_dir / rundir.LOG, start)

    tokens_per_step = s.micro_batch * s.seq_len * s.grad_accum * world
    fpt = flops_per_token(n_params, s.model, vocab.size, s.seq_len, echo=say)  # parents' architecture
    peak, peak_note = run_peak(s.peak_tflops, cpu, run_precision(s, cpu))
    say(
        f"model {n_params:,} parameters | {world} rank(s) on {device.type} | ZeRO-{s.zero_stage} | "
        f"micro-batch {s.micro_batch} x accumulation {s.grad_accum} x {world} = {tokens_per_step:,} tokens/step | "
        f"steps {start + 1}..{s.steps}"
    )
    say(f"throughput counts real (non-padding) tokens; {fpt:.6g} training FLOPs per token; {peak_note}")
    jlog = JsonLog(out_dir / rundir.LOG if rank == 0 else None)
    losses: dict[int, float] = {}
    eval_results: dict = {}
    data = _batches(loader)
    engine.train()
    try:
        for step in range(start + 1, s.steps + 1):
            t0 = time.time()
            lr = engine.get_lr()[0]  # the rate this step's update uses
            stats = torch.zeros(5 + 2 * len(names), dtype=torch.float64, device=device)  # last: real tokens
            for _ in range(s.grad_accum):
                batch = next(data)
                tokens = batch["tokens"].to(device).long()  # the loader sends int32 (half the bytes)
                seg = batch.get("segment_ids")
                logits = engine(tokens[:, :-1], segment_ids=None if seg is None else seg[:, :-1].to(device))
                loss, part = masked_loss(
                    logits,
                    tokens,
                    mask_heldout(batch, names, s.holdout),
                    vocab.image_offset,
                    batch.get("dataset_index"),
                    len(names),
                )
                engine.backward(loss)
                engine.step()
                stats[:-1] += part.to(device)
                stats[-1] += real_tokens(batch)
            torch.distributed.all_reduce(stats)
            dt = time.time() - t0
            slots = s.micro_batch * (s.seq_len - 1) * s.grad_accum * world  # input positions per step
            rec = _record(step, stats, names, engine, lr, dt, slots, fpt, peak, world)
            losses[step] = rec["loss"]
            jlog.write(rec)
            if step % s.log_every == 0 or step == s.steps or step == start + 1:
                say(_progress(rec, s.steps))
            if s.save_every and (step % s.save_every == 0 or step == s.steps):
                _save(engine, loader, s, ckpt_dir, step, rank, world, n_params, run_id)
            if s.eval_every and step % s.eval_every == 0 and step != s.steps:
                eval_results = _evaluate(engine, s, vocab, device, rank, world)
                jlog.write({"step": step, "eval": eval_results})
                say(_eval_line(step, eval_results))
            if _fault("kill-after-step", step):
                os.kill(os.getpid(), signal.SIGKILL)
        export_dir = None
        if s.export:  # before the final evaluation: the trained weights are kept whatever it meets
            export_dir = out_dir / "export"
            if s.zero_stage >= 3 and not (ckpt_dir / ckpt.tag_for(s.steps)).exists():  # weights are gathered from it
                _save(engine, loader, s, ckpt_dir, s.steps, rank, world, n_params, run_id)
            export_engine(engine, s, vocab, export_dir, s.steps, rank, ckpt_dir)
            say(f"exported weights to {export_dir / 'model.safetensors'}")
        if start < s.steps or not eval_results:
            eval_results = _evaluate(engine, s, vocab, device, rank, world)
            jlog.write({"step": s.steps, "eval": eval_results})
            say(_eval_line(s.steps, eval_results))
        if rank == 0:
            from jamdata.io import atomic_write

            with atomic_write(out_dir / "eval.json", "w") as f:
                json.dump({"step": s.steps, "datasets": eval_results}, f, indent=1, sort_keys=True)
    finally:
        jlog.close()
    first = losses[min(losses)] if losses else None
    last = losses[max(losses)] if losses else None
    return Result(losses, first, last, eval_results, export_dir, start, n_params, time.time() - t_start)


def _batches(loader) -> Iterator[dict]:
    """The loader's batches across epochs (each `iter(loader)` is one epoch from where it stands)."""
    while True:
        n = 0
        for batch in loader:
            n += 1
            yield batch
        if n == 0:
            raise RuntimeError("the loader yielded no batches (empty datasets?)")


def _record(
    step: int,
    stats: torch.Tensor,
    names: list[str],
    engine,
    lr: float,
    dt: float,
    slots: int,
    flops_per_token: float,
    peak: float | None,
    world: int,
) -> dict:
    """One log record; `stats` ends with the step's real input tokens over all ranks, `slots` is
    the input positions the step had room for (their difference is padding)."""
    v = [float(x) for x in stats.cpu()]
    n = v[1] + v[3]
    rec: dict[str, Any] = {
        "step": step,
        "loss": (v[0] + v[2]) / n if n else 0.0,
        "loss_text": v[0] / v[1] if v[1] else None,
        "tokens_text": int(v[1]),
        "loss_image": v[2] / v[3] if v[3] else None,
        "tokens_image": int(v[3]),
        "lr": lr,
        "grad_norm": _float(engine.get_global_grad_norm()),
        "seconds": dt,
        "tokens": int(v[-1]),  # input tokens of all ranks and micro-batches, padding left out
        "padding": 1.0 - v[-1] / slots if slots else 0.0,
        "tokens_per_s": v[-1] / dt if dt > 0 else None,
    }
    rec["mfu"] = mfu(rec["tokens_per_s"], flops_per_token, peak, world)
    for i, name in enumerate(names):
        nd = v[5 + 2 * i]
        rec[f"loss/{name}"] = v[4 + 2 * i] / nd if nd else None
        rec[f"tokens/{name}"] = int(nd)
    return rec


def _float(x) -> float | None:
    if x is None:
        return None
    x = float(x.item() if torch.is_tensor(x) else x)
    return x if math.isfinite(x) else None


def _progress(rec: dict, total: int) -> str:
    parts = [f"step {rec['step']}/{total}", f"loss {rec['loss']:.4f}"]
    for key, label in (("loss_text", "text"), ("loss_image", "image")):
        if rec[key] is not None:
            parts.append(f"{label} {rec[key]:.3f}")
    parts.append(f"lr {rec['lr']:.2e}")
    if rec["tokens_per_s"]:
        parts.append(f"{rec['tokens_per_s']:,.0f} tok/s")
    if rec["mfu"] is not None:
        parts.append(f"MFU {100 * rec['mfu']:.1f}%")
    return " | ".join(parts)


def _eval_line(step: int, results: dict) -> str:
    parts = []
    for name, r in results.items():
        if r["ppl"] is None:
            parts.append(f"{name} (no held-out tokens)")
        else:
            parts.append(f"{name} ppl {r['ppl']:.2f} ({r['tokens']} tokens)")
    return f"validation at step {step}: " + ", ".join(parts)


def _save(
    engine,
    loader,
    s: Settings,
    ckpt_dir: Path,
    step: int,
    rank: int,
    world: int,
    n_params: int,
    run_id: str | None = None,
) -> None:
    state = {"loader": loader.state_dict(), "rng": ckpt.rng_state()}
    meta = {
        "model": s.model,
        "params": n_params,
        "zero_stage": s.zero_stage,
        "seq_len": s.seq_len,
        "datasets": s.datasets,
        "steps": s.steps,
        "vocab": dataset_vocab(s.datasets).to_dict(),
        "run_id": run_id,
    }
    kill = _fault("kill-in-save", step)
    ckpt.save(
        engine,
        ckpt_dir,
        step,
        rank,
        world,
        state,
        meta,
        s.keep_checkpoints,
        hash_files=s.verify_checkpoints == "sha256",
        before_seal=(lambda: os.kill(os.getpid(), signal.SIGKILL)) if kill else None,
    )


def _evaluate(engine, s: Settings, vocab: JointVocab, device, rank: int, world: int) -> dict:
    engine.eval()
    try:
        return evaluate(
            engine.module,
            s.eval_sets(),
            vocab,
            s.seq_len,
            s.eval_batch_size,
            s.eval_max_samples,
            device,
            rank,
            world,
            s.shard_policy,
        )
    finally:
        engine.train()


# -- export ------------------------------------------------------------------------------------
def run_stage(ctx) -> list[str]:
    """Short CPU smoke run on the tokens the earlier stages wrote (the `loader` and `train`
    sections); mixture entries whose dataset the run did not produce (e.g. no instruct data) are
    left out with a note."""
    from jamdata.manifest import (
        build_manifest,
        describe_shard,
        is_complete,
        output_dir,
        write_manifest,
    )

    cfg = ctx.config
    if "://" in str(ctx.run_dir) and not str(ctx.run_dir).startswith(
        "file://"
    ):  # s3://, gs://: DeepSpeed writes local files
        return [
            f"skipped: the CPU smoke run needs a local run directory, not {ctx.run_dir}; "
            "train on GPUs with `jamtrain train --config ...` (docs/training.md)"
        ]
    s = parse_settings(cfg, out_dir=ctx.path("train"), run_dir=ctx.run_dir)  # local from here on
    notes = []
    missing = [n for n, d in s.datasets.items() if not is_complete(d)]
    if missing and len(missing) < len(s.datasets):
        for n in missing:
            s.datasets.pop(n)
            notes.append(f"mixture entry {n!r} left out: {ctx.path(n)} has no finished dataset")
        mixture = s.loader.get("mixture")
        if isinstance(mixture, dict):
            s.loader["mixture"] = {n: w for n, w in mixture.items() if n in s.datasets}
    if "seq_len" not in s.loader:  # the loader's 4096 default is far too long for a CPU smoke run
        s.loader["seq_len"] = 512
        notes.append("loader.seq_len not set: the smoke run packs 512-token rows")
    g = s.loader.get("global_batch_size")
    if isinstance(g, int) and g != s.micro_batch:  # one process: the loader's rows per step are the micro-batch
        notes.append(f"micro-batch {g} (loader.global_batch_size) instead of {s.micro_batch} ({s.deepspeed_path})")
        s.deepspeed["train_micro_batch_size_per_gpu"] = g
    s.save_every = s.save_every or s.steps
    out = Path(ctx.path("train"))
    with output_dir(out):
        result = train(s)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        files = [
            str(p.relative_to(out))
            for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and "checkpoints" not in p.parts
        ]
        summary = {
            "first_loss": result.first_loss,
            "last_loss": result.last_loss,
            "steps": s.steps,
            "params": result.params,
            "eval": result.eval,
        }
        write_manifest(
            str(out),
            build_manifest(
                "checkpoint",
                [describe_shard(str(out), f) for f in files],
                cfg.section("train").to_dict(),
                dataset_vocab(s.datasets),
                summary,
                list(s.datasets.values()),
            ),
        )
    lines = notes + [
        f"{result.params:,}-parameter model, {s.steps} steps on {', '.join(s.datasets)}: "
        f"loss {result.first_loss:.3f} -> {result.last_loss:.3f} ({result.seconds:.0f}s)"
    ]
    for name, r in result.eval.items():
        if r["ppl"] is not None:
            lines.append(f"validation perplexity {name}: {r['ppl']:.2f} over {r['tokens']} held-out tokens")
    lines.append(f"weights {out / 'export' / 'model.safetensors'}, log {out / 'log.jsonl'}")
    from jamtrain.sample_files import stage_sample  # one generated sample into <run>/generated/

    return lines + stage_sample(ctx.run_dir, out, s.seed)


def stage_settings(ctx: StageContext) -> dict:
    from jamdata.loader import loader_settings
    from jamdata.settings import load_settings
    from jamtrain.settings import TrainSection

    return {
        "seed": ctx.seed,
        "loader": loader_settings(ctx.config.section("loader")),
        "train": load_settings(TrainSection, ctx.config.section("train")),
    }


STAGE = Stage(
    "train", run_stage, outputs=("train",), inputs=("text-tokens", "image-caption", "instruct"), settings=stage_settings
)
