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
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

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
from jamtrain.distributed import device_name, process_group
from jamtrain.evaluate import evaluate
from jamtrain.export import export_engine
from jamtrain.loss import mask_heldout, masked_loss
from jamtrain.runlog import JsonLog, eval_line, progress_line, step_record
from jamtrain.schedule import build_scheduler
from jamtrain.settings import Settings
from jamtrain.sizing import check_lengths, flops_per_token
from jamtrain.throughput import real_tokens, run_peak

log = logging.getLogger(__name__)
FAULT_ENV = "JAMTRAIN_FAULT"  # fault injection for the resume tests: kill-after-step:K | kill-in-save:K


def _fault(kind: str, step: int) -> bool:
    spec = os.environ.get(FAULT_ENV, "")
    want, _, at = spec.partition(":")
    return want == kind and at.isdigit() and int(at) == step


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
    with process_group(s.cpu_shm_comm) as (rank, world, _), contextlib.ExitStack() as owned:
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

    # dropout etc.: per rank; Python's and NumPy's generators too, so a checkpoint's saved RNG state
    # is the same for the same run; a resume restores the saved states
    torch.manual_seed(s.seed + 1000 + rank)
    random.seed(s.seed + 1000 + rank)
    np.random.seed((s.seed + 1000 + rank) % 2**32)
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
            rec = step_record(step, stats, names, engine, lr, dt, slots, fpt, peak, world)
            losses[step] = rec["loss"]
            jlog.write(rec)
            if step % s.log_every == 0 or step == s.steps or step == start + 1:
                say(progress_line(rec, s.steps))
            if s.save_every and (step % s.save_every == 0 or step == s.steps):
                _save(engine, loader, s, ckpt_dir, step, rank, world, n_params, run_id)
            if s.eval_every and step % s.eval_every == 0 and step != s.steps:
                eval_results = _evaluate(engine, s, vocab, device, rank, world)
                jlog.write({"step": step, "eval": eval_results})
                say(eval_line(step, eval_results))
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
            say(eval_line(s.steps, eval_results))
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
        "model": s.model.to_dict(),  # the section as written (+ text_rows pinned to the data)
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
