"""The training loop: JAM model + mixed streaming loader + DeepSpeed, with exact resume.

One code path for a laptop (one plain CPU process, gloo, fp32), `torchrun` / the `deepspeed`
launcher on CPU or GPUs (bf16), from the `train` section of a config and an editable DeepSpeed
JSON (ZeRO stage, micro-batch, gradient accumulation, clipping). See docs/training.md.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from jamdata.config import Config, ConfigError
from jamdata.vocab import JointVocab
from jamtrain import checkpoint as ckpt
from jamtrain import rundir
from jamtrain.evaluate import Holdout, ShardPolicy, evaluate
from jamtrain.schedule import DECAYS, build_scheduler

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
EXPORT_FORMAT = "jamtrain-export-1"
FAULT_ENV = "JAMTRAIN_FAULT"  # fault injection for the resume tests: kill-after-step:K | kill-in-save:K

TRAIN_KEYS = ("model", "deepspeed", "out_dir", "steps", "lr", "min_lr_ratio", "warmup_steps", "decay",
              "weight_decay", "betas", "eps", "precision", "seed", "log_every", "save_every", "keep_checkpoints",
              "verify_checkpoints", "eval", "peak_tflops", "num_gpus", "cpu_shm_comm", "cpu_threads", "export")
EVAL_KEYS = ("every", "holdout_fraction", "max_samples", "batch_size", "datasets")


# -- settings ----------------------------------------------------------------------------------
@dataclass
class Settings:
    model: dict
    deepspeed: dict
    deepspeed_path: str
    datasets: dict[str, str]  # the loader's mixture: name -> dataset directory
    out_dir: Path
    loader: dict  # the loader section (plain dict; global_batch_size filled in at start)
    steps: int = 100
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    decay: str = "cosine"
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    precision: str = "auto"
    seed: int = 1234
    log_every: int = 1
    save_every: int = 0
    keep_checkpoints: int = 2
    verify_checkpoints: str = "sha256"
    eval_every: int = 0
    holdout_fraction: float = 0.01
    eval_max_samples: int = 256
    eval_batch_size: int = 8
    eval_datasets: dict[str, str] = field(default_factory=dict)  # separate validation sets, evaluated whole
    peak_tflops: float | None = None
    num_gpus: int = 1
    cpu_shm_comm: bool = False
    cpu_threads: int = 0
    export: bool = True

    @property
    def zero_stage(self) -> int:
        return int(self.deepspeed.get("zero_optimization", {}).get("stage", 0))

    @property
    def micro_batch(self) -> int:
        return int(self.deepspeed["train_micro_batch_size_per_gpu"])

    @property
    def grad_accum(self) -> int:
        return int(self.deepspeed.get("gradient_accumulation_steps", 1))

    @property
    def seq_len(self) -> int:
        return int(self.loader.get("seq_len", 4096))

    @property
    def holdout(self) -> Holdout | None:
        return Holdout(self.holdout_fraction) if self.holdout_fraction > 0 else None

    @property
    def shard_policy(self) -> ShardPolicy:
        """The loader's handling of damaged shards; evaluation follows it too, so a shard that
        training skipped does not stop the run at its final evaluation."""
        sec = Config(self.loader, "loader")
        return ShardPolicy(sec.choice("verify", ["sha256", "size", "none"], "sha256"),
                           sec.choice("on_corrupt", ["skip", "fail"], "skip"))

    def eval_sets(self) -> dict[str, tuple[str, Holdout]]:
        sets = {n: (d, self.holdout) for n, d in self.datasets.items() if self.holdout is not None}
        sets.update({n: (d, Holdout(None)) for n, d in self.eval_datasets.items()})
        return sets

    def loader_config(self, world: int) -> Config:
        """The loader section with global_batch_size = micro-batch x ranks (checked if given)."""
        want = self.micro_batch * world
        got = self.loader.get("global_batch_size")
        if got is not None and got != want:
            raise ConfigError("loader.global_batch_size", f"is {got}, but the DeepSpeed micro-batch "
                              f"({self.micro_batch}, {self.deepspeed_path}) x {world} rank(s) = {want}; "
                              "set one to match the other or leave global_batch_size out")
        return Config({**self.loader, "global_batch_size": want}, "loader")


def _resolve(path: str, base: str | Path) -> str:
    if "://" in path or Path(path).is_absolute():
        return path
    return f"{str(base).rstrip('/')}/{path}"


def load_deepspeed_config(path: str) -> dict:
    p = Path(path)
    if not p.exists() and (REPO / path).exists():
        p = REPO / path
    try:
        ds = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError("train.deepspeed", f"DeepSpeed config {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ConfigError("train.deepspeed", f"{path} is not valid JSON: {e}") from None
    if "train_micro_batch_size_per_gpu" not in ds:
        raise ConfigError("train.deepspeed", f"{path} must set train_micro_batch_size_per_gpu")
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError("train.deepspeed", f"{path}: remove 'optimizer'/'scheduler'; they come from the train "
                          "section (AdamW + warm-up/decay), so resume and export see one definition")
    return ds


def parse_settings(cfg: Config, out_dir: str | Path | None = None, run_dir: str | Path | None = None) -> Settings:
    """The `train` section (typos fail naming the key); the data comes from the loader section
    (`loader.mixture` names, `loader.paths` or `<run dir>/<name>`)."""
    from jamdata.loader import dataset_dirs

    t = cfg.section("train")
    t.check_keys(TRAIN_KEYS)
    run_dir = str(run_dir or cfg.section("run").get("out_dir", str, default="out/run"))
    ev = t.section("eval")
    ev.check_keys(EVAL_KEYS)
    betas = t.get("betas", list, default=[0.9, 0.95])
    if len(betas) != 2:
        raise ConfigError("train.betas", f"must be two numbers, got {betas!r}")
    ds_path = t.get("deepspeed", str, default="configs/deepspeed-cpu.json")
    out = str(out_dir or _resolve(t.get("out_dir", str, default="train"), run_dir))
    if "://" in out:
        raise ConfigError("train.out_dir", f"{out}: checkpoints need a file system every rank shares (a local, "
                          "NFS/Lustre or mounted-bucket path), not a URL")
    return Settings(
        model=t.get("model", dict, default={}),
        deepspeed=load_deepspeed_config(ds_path),
        deepspeed_path=ds_path,
        datasets=dataset_dirs(cfg, run_dir),
        out_dir=Path(out),
        loader=cfg.section("loader").to_dict(),
        steps=int(t.number("steps", 100, lo=1)),
        lr=float(t.number("lr", 3e-4, lo=0)),
        min_lr_ratio=float(t.number("min_lr_ratio", 0.1, lo=0, hi=1)),
        warmup_steps=int(t.number("warmup_steps", 10, lo=0)),
        decay=t.choice("decay", DECAYS, "cosine"),
        weight_decay=float(t.number("weight_decay", 0.1, lo=0)),
        betas=(float(betas[0]), float(betas[1])),
        eps=float(t.number("eps", 1e-8, lo=0)),
        precision=t.choice("precision", ["auto", "bf16", "fp16", "fp32"], "auto"),
        seed=int(t.number("seed", cfg.section("run").get("seed", int, default=1234))),
        log_every=int(t.number("log_every", 1, lo=1)),
        save_every=int(t.number("save_every", 0, lo=0)),
        keep_checkpoints=int(t.number("keep_checkpoints", 2, lo=1)),
        verify_checkpoints=t.choice("verify_checkpoints", ["sha256", "size"], "sha256"),
        eval_every=int(ev.number("every", 0, lo=0)),
        holdout_fraction=float(ev.number("holdout_fraction", 0.01, lo=0, hi=0.5)),
        eval_max_samples=int(ev.number("max_samples", 256, lo=1)),
        eval_batch_size=int(ev.number("batch_size", 8, lo=1)),
        eval_datasets={k: _resolve(str(v), run_dir) for k, v in ev.get("datasets", dict, default={}).items()},
        peak_tflops=t.get("peak_tflops", (int, float, type(None)), default=None),
        num_gpus=int(t.number("num_gpus", 1, lo=1)),
        cpu_shm_comm=t.get("cpu_shm_comm", bool, default=False),
        cpu_threads=int(t.number("cpu_threads", 0, lo=0)),
        export=t.get("export", bool, default=True),
    )


def mask_heldout(batch: dict, names: list[str], holdout: Holdout | None) -> torch.Tensor:
    """The batch's loss mask with held-out samples' tokens switched off (segment j of row i is
    batch["keys"][i][j]), so evaluation data never trains the model."""
    mask = batch["loss_mask"]
    if holdout is None or "keys" not in batch:
        return mask
    mask = mask.clone()
    seg = batch["segment_ids"]
    for i, keys in enumerate(batch["keys"]):
        name = names[int(batch["dataset_index"][i])]
        for j, key in enumerate(keys):
            if holdout.is_heldout(name, key):
                mask[i] &= seg[i] != j
    return mask


# -- loss --------------------------------------------------------------------------------------
def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy [B, L] in fp32 (logits [B, L, V] may be bf16)."""
    b, length, v = logits.shape
    return F.cross_entropy(logits.float().reshape(-1, v), targets.reshape(-1), reduction="none").view(b, length)


def masked_loss(logits: torch.Tensor, tokens: torch.Tensor, loss_mask: torch.Tensor,
                image_offset: int, dataset_index: torch.Tensor | None = None,
                n_datasets: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token loss over target positions (loss_mask[:, 1:]) and detached statistics.

    logits are the model's output for tokens[:, :-1]. The loss is the mean over this micro-batch's
    target tokens; positions with mask False contribute neither loss nor gradient. Statistics:
    [nll_text, n_text, nll_image, n_image, (nll_d, n_d) per dataset] summed (special tokens count
    as text)."""
    targets = tokens[:, 1:]
    mask = loss_mask[:, 1:].to(logits.device)
    nll = token_nll(logits, targets)
    weights = mask.to(nll.dtype)
    n = weights.sum()
    loss = (nll * weights).sum() / n.clamp(min=1.0)
    with torch.no_grad():
        nll_d = (nll * weights).double()
        image = (targets >= image_offset).to(torch.float64) * weights.double()
        text = weights.double() - image
        parts = [(nll_d * text).sum(), text.sum(), (nll_d * image).sum(), image.sum()]
        if n_datasets and dataset_index is not None:
            per_row_nll, per_row_n = nll_d.sum(1), weights.double().sum(1)
            idx = dataset_index.to(logits.device)
            for d in range(n_datasets):
                sel = (idx == d).double()
                parts += [(per_row_nll * sel).sum(), (per_row_n * sel).sum()]
        stats = torch.stack(parts)
    return loss, stats


# -- distributed set-up ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed(cpu_shm_comm: bool = False) -> tuple[int, int, int]:
    """(rank, world_size, local_rank). Under torchrun/deepspeed the launcher's env is used; a plain
    process becomes a world of one (gloo on CPU). The CPU shared-memory all-reduce extension is
    compiled (once, cached in TORCH_EXTENSIONS_DIR) only when asked for."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(_free_port())
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    cpu = get_accelerator().device_name() == "cpu"
    if cpu and not cpu_shm_comm:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if cpu else None, verbose=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local_rank = int(os.environ["LOCAL_RANK"])
    if not cpu:
        get_accelerator().set_device(local_rank)
    return rank, world, local_rank


def device_name() -> str:
    from deepspeed.accelerator import get_accelerator

    name = get_accelerator().device_name()
    return "cpu" if name == "cpu" else f"{name}:{get_accelerator().current_device()}"


# -- building blocks ---------------------------------------------------------------------------
def dataset_vocab(datasets: dict[str, str]) -> JointVocab:
    """The joint vocabulary shared by all datasets (refuses a mix)."""
    from jamdata.manifest import check_compatible, read_manifest

    check_compatible(datasets.values())
    for root in datasets.values():
        m = read_manifest(root)
        if m.get("vocab"):
            return JointVocab.from_dict(m["vocab"])
    raise ConfigError("loader.mixture", "none of the datasets records its joint vocabulary")


def model_for_vocab(model_cfg: dict, vocab: JointVocab) -> dict:
    """JAM-Cross takes embedding rows below the image codes from the text parent: pin that split to
    the data's joint vocabulary unless the config sets it."""
    if model_cfg.get("fusion") == "cross" and "text_rows" not in model_cfg:
        return {**model_cfg, "text_rows": vocab.image_offset}
    return model_cfg


def default_model_factory(model_cfg: dict, vocab_size: int) -> torch.nn.Module:
    from jamtrain.models import build_model

    return build_model(model_cfg, vocab_size)


def default_loader_factory(s: Settings, rank: int, world: int):
    from jamdata.loader import build_loader

    return build_loader(s.loader_config(world), s.datasets, rank, world)


SCALAR_ATTR = "_jam_was_scalar"


def lift_scalar_params(model: torch.nn.Module) -> list[str]:
    """Give 0-dim parameters (JAM-Cross tanh gates) shape [1]: DeepSpeed's initial broadcast views
    every parameter as bytes, which 0-dim tensors do not allow. Broadcasting keeps the maths the
    same; export restores the original shape."""
    names = []
    for name, p in model.named_parameters():
        if p.dim() == 0:
            p.data = p.data.reshape(1)
            setattr(p, SCALAR_ATTR, True)
            names.append(name)
    return names


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only (not norms, biases, gates)."""
    decay, rest = [], []
    for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if p.requires_grad:
            (decay if p.ndim >= 2 else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def count_params(model: torch.nn.Module) -> int:
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def resolved_ds_config(s: Settings, cpu: bool) -> dict:
    ds = json.loads(json.dumps(s.deepspeed))
    precision = s.precision if s.precision != "auto" else ("fp32" if cpu else "bf16")
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": precision == "bf16"}
    ds["fp16"] = {**ds.get("fp16", {}), "enabled": precision == "fp16"}
    ds.setdefault("steps_per_print", 10 ** 9)
    ds.setdefault("wall_clock_breakdown", False)
    ds.pop("train_batch_size", None)  # derived: micro-batch x accumulation x ranks
    return ds


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


def train(s: Settings, resume: bool = False, model_factory: Callable | None = None,
          loader_factory: Callable | None = None, echo: Callable[[str], None] = print,
          overwrite: bool = False) -> Result:
    """Run (or continue) training as configured; collective over all ranks. The output directory
    is locked for the run and must hold no other run's outputs unless `resume` continues that run
    or `overwrite` deletes it first (jamtrain.rundir)."""
    t_start = time.time()
    rank, world, _ = setup_distributed(s.cpu_shm_comm)
    with contextlib.ExitStack() as owned:
        run_id = _claim(owned, s.out_dir, resume, overwrite, rank, echo)
        return _run(s, resume, run_id, model_factory, loader_factory, echo, rank, world, t_start)


def _claim(owned: contextlib.ExitStack, out_dir: Path, resume: bool, overwrite: bool, rank: int,
           echo: Callable[[str], None]) -> str:
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


def _run(s: Settings, resume: bool, run_id: str, model_factory: Callable | None,
         loader_factory: Callable | None, echo: Callable[[str], None], rank: int, world: int,
         t_start: float) -> Result:
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
    _check_lengths(s, vocab)
    torch.manual_seed(s.seed)
    model = (model_factory or default_model_factory)(s.model, vocab.size)
    n_params = count_params(model)
    lift_scalar_params(model)
    optimizer = torch.optim.AdamW(param_groups(model, s.weight_decay), lr=s.lr, betas=s.betas, eps=s.eps)
    scheduler = build_scheduler(optimizer, s.warmup_steps, s.steps, s.decay, s.min_lr_ratio)
    ds_cfg = resolved_ds_config(s, cpu)
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
    fpt = flops_per_token(n_params, s.model, vocab.size, s.seq_len)
    peak = s.peak_tflops if s.peak_tflops is not None else (None if cpu else 312.0)
    say(f"model {n_params:,} parameters | {world} rank(s) on {device.type} | ZeRO-{s.zero_stage} | "
        f"micro-batch {s.micro_batch} x accumulation {s.grad_accum} x {world} = {tokens_per_step:,} tokens/step | "
        f"steps {start + 1}..{s.steps}")
    jlog = JsonLog(out_dir / rundir.LOG if rank == 0 else None)
    losses: dict[int, float] = {}
    eval_results: dict = {}
    data = _batches(loader)
    engine.train()
    try:
        for step in range(start + 1, s.steps + 1):
            t0 = time.time()
            lr = engine.get_lr()[0]  # the rate this step's update uses
            stats = torch.zeros(4 + 2 * len(names), dtype=torch.float64, device=device)
            for _ in range(s.grad_accum):
                batch = next(data)
                tokens = batch["tokens"].to(device).long()  # the loader sends int32 (half the bytes)
                seg = batch.get("segment_ids")
                logits = engine(tokens[:, :-1], segment_ids=None if seg is None else seg[:, :-1].to(device))
                loss, part = masked_loss(logits, tokens, mask_heldout(batch, names, s.holdout), vocab.image_offset,
                                         batch.get("dataset_index"), len(names))
                engine.backward(loss)
                engine.step()
                stats += part.to(device)
            torch.distributed.all_reduce(stats)
            dt = time.time() - t0
            rec = _record(step, stats, names, engine, lr, dt, tokens_per_step, fpt, peak, world)
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


def _check_lengths(s: Settings, vocab: JointVocab) -> None:
    try:
        from jamtrain.models import backbone_config

        limit = backbone_config(Config(dict(s.model), "train.model"), vocab.size).max_seq_len
    except Exception:  # checkpoint-based or foreign model sections: the model checks for itself
        return
    if s.seq_len - 1 > limit:
        raise ConfigError("loader.seq_len", f"{s.seq_len} rows give inputs of {s.seq_len - 1} tokens, more than "
                          f"train.model.max_seq_len {limit}; lower one or raise the other")


def _batches(loader) -> Iterator[dict]:
    """The loader's batches across epochs (each `iter(loader)` is one epoch from where it stands)."""
    while True:
        n = 0
        for batch in loader:
            n += 1
            yield batch
        if n == 0:
            raise RuntimeError("the loader yielded no batches (empty datasets?)")


def _record(step: int, stats: torch.Tensor, names: list[str], engine, lr: float, dt: float, tokens_per_step: int,
            flops_per_token: float, peak: float | None, world: int) -> dict:
    v = [float(x) for x in stats.cpu()]
    n = v[1] + v[3]
    rec: dict[str, Any] = {
        "step": step,
        "loss": (v[0] + v[2]) / n if n else 0.0,
        "loss_text": v[0] / v[1] if v[1] else None, "tokens_text": int(v[1]),
        "loss_image": v[2] / v[3] if v[3] else None, "tokens_image": int(v[3]),
        "lr": lr,
        "grad_norm": _float(engine.get_global_grad_norm()),
        "seconds": dt,
        "tokens_per_s": tokens_per_step / dt if dt > 0 else None,
    }
    rec["mfu"] = (rec["tokens_per_s"] * flops_per_token / (peak * 1e12 * world)) if peak and rec["tokens_per_s"] else None
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


def _save(engine, loader, s: Settings, ckpt_dir: Path, step: int, rank: int, world: int, n_params: int,
          run_id: str | None = None) -> None:
    state = {"loader": loader.state_dict(), "rng": ckpt.rng_state()}
    meta = {"model": s.model, "params": n_params, "zero_stage": s.zero_stage, "seq_len": s.seq_len,
            "datasets": s.datasets, "steps": s.steps, "vocab": dataset_vocab(s.datasets).to_dict(),
            "run_id": run_id}
    kill = _fault("kill-in-save", step)
    ckpt.save(engine, ckpt_dir, step, rank, world, state, meta, s.keep_checkpoints,
              hash_files=s.verify_checkpoints == "sha256",
              before_seal=(lambda: os.kill(os.getpid(), signal.SIGKILL)) if kill else None)


def _evaluate(engine, s: Settings, vocab: JointVocab, device, rank: int, world: int) -> dict:
    engine.eval()
    try:
        return evaluate(engine.module, s.eval_sets(), vocab, s.seq_len, s.eval_batch_size, s.eval_max_samples,
                        device, rank, world, s.shard_policy)
    finally:
        engine.train()


# -- export ------------------------------------------------------------------------------------
def export_engine(engine, s: Settings, vocab: JointVocab, out: Path, step: int, rank: int, ckpt_dir: Path) -> None:
    """One safetensors file + model.json; ZeRO-3 shards are gathered from the last checkpoint."""
    if s.zero_stage >= 3:
        if rank == 0:
            export_checkpoint(ckpt_dir / ckpt.tag_for(step), out)
        torch.distributed.barrier()
        return
    if rank == 0:
        write_export(engine.module, s.model, vocab, out, step)
    torch.distributed.barrier()


def _export_tensors(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Own, contiguous copies of the weights (DeepSpeed keeps views into flat buffers); tied
    weights are stored once and recorded as aliases."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    scalars = {n for n, p in model.named_parameters(remove_duplicate=False) if getattr(p, SCALAR_ATTR, False)}
    for name, t in model.state_dict().items():
        if name in scalars:
            t = t.reshape(())
        ident = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and ident in seen:
            aliases[name] = seen[ident]
            continue
        seen[ident] = name
        tensors[name] = t.detach().to("cpu").clone().contiguous()
    return tensors, aliases


def write_export(model: torch.nn.Module, model_cfg: dict, vocab: JointVocab, out: Path, step: int) -> None:
    from safetensors.torch import save_file

    from jamdata.io import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _export_tensors(model)
    tmp = out / ".model.safetensors.tmp"
    metadata = {"format": EXPORT_FORMAT, "step": str(step), "aliases": json.dumps(aliases)}
    try:  # the models' own header too, so `train.model.checkpoint: .../model.safetensors` continues from it
        from jamtrain.models.checkpoint import describe

        metadata["jam_model"] = json.dumps(describe(model))
    except (ImportError, TypeError):
        pass
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, out / "model.safetensors")
    with atomic_write(out / "model.json", "w") as f:
        json.dump({"format": EXPORT_FORMAT, "model": model_cfg, "vocab_size": vocab.size, "vocab": vocab.to_dict(),
                   "step": step, "params": count_params(model), "aliases": aliases}, f, indent=1, sort_keys=True)


def load_exported(path: str | Path, model_factory: Callable | None = None, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from an export directory (model.json + model.safetensors)."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        info = json.loads((path / "model.json").read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no model.json (not an export directory; see `jamtrain export`)") from None
    if info.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}/model.json: not a {EXPORT_FORMAT} export")
    model = (model_factory or default_model_factory)(info["model"], info["vocab_size"])
    state = load_file(str(path / "model.safetensors"))
    for name, kept in info.get("aliases", {}).items():
        state[name] = state[kept]
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), info


def export_checkpoint(path: Path, out: Path, model_factory: Callable | None = None) -> None:
    """Export a sealed checkpoint (any ZeRO stage) as fp32 safetensors + model.json."""
    problems = ckpt.verify(path)
    if problems:
        raise ckpt.CheckpointError(f"refusing checkpoint {path}: {'; '.join(problems)}")
    ckpt.check_safe(path)  # DeepSpeed's reader below unpickles with weights_only=False
    marker = ckpt.read_marker(path)
    meta = marker["meta"]
    vocab = JointVocab.from_dict(meta["vocab"]) if meta.get("vocab") else dataset_vocab(meta["datasets"])
    model = (model_factory or default_model_factory)(meta["model"], vocab.size)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
    want = model.state_dict()
    for name, t in state.items():  # lifted scalars (see lift_scalar_params) go back to shape ()
        if name in want and t.shape != want[name].shape and t.numel() == want[name].numel():
            state[name] = t.reshape(want[name].shape)
    model.load_state_dict(state, strict=True)
    write_export(model, meta["model"], vocab, out, marker["step"])


# -- dry run -----------------------------------------------------------------------------------
def _model_dims(model_cfg: dict, vocab_size: int) -> tuple[int | None, int | None]:
    """(layers, width) summed over the model's decoder stacks, for activation and FLOP estimates."""
    try:
        from jamtrain.models import backbone_config

        arch = backbone_config(Config(dict(model_cfg), "train.model"), vocab_size)
    except Exception:  # a model section this estimate does not understand: no activation term
        return None, None
    fusion = model_cfg.get("fusion", "none")
    if fusion == "cross":
        return 2 * arch.n_layers, arch.d_model
    return arch.n_layers, arch.d_model * (2 if fusion == "width" else 1)


def flops_per_token(n_params: int, model_cfg: dict, vocab_size: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N plus attention scores 12 x layers x width x seq_len (PaLM, App. B)."""
    layers, width = _model_dims(model_cfg, vocab_size)
    return 6.0 * n_params + (12.0 * layers * width * seq_len if layers and width else 0.0)


def memory_estimate(n_params: int, zero_stage: int, world: int, micro_batch: int, seq_len: int,
                    n_layers: int | None, d_model: int | None, bf16: bool = True) -> dict[str, float]:
    """Bytes per GPU for model states under ZeRO (Rajbhandari et al. 2020: 2 + 2 + 12 bytes per
    parameter with mixed-precision Adam) plus activations with checkpointing per layer."""
    p = float(n_params)
    w, g, o = (2 * p, 2 * p, 12 * p) if bf16 else (4 * p, 4 * p, 8 * p)
    if zero_stage >= 1:
        o /= world
    if zero_stage >= 2:
        g /= world
    if zero_stage >= 3:
        w /= world
    act = 0.0
    if n_layers and d_model:
        # checkpointed layer inputs (2 bytes x s x b x h per layer) + one layer recomputed in full
        # (~34 s b h bytes without the attention matrix, as flash attention never stores it)
        act = n_layers * 2.0 * seq_len * micro_batch * d_model + 34.0 * seq_len * micro_batch * d_model
    return {"weights": w, "grads": g, "optimizer": o, "activations": act, "total": w + g + o + act}


def dry_run(s: Settings, model_factory: Callable | None = None, echo: Callable[[str], None] = print) -> dict:
    """Size the configured run without data or GPUs: parameters (model built on the meta device),
    memory per GPU for the ZeRO stage, tokens per step, total steps and tokens."""
    vocab_size = _vocab_size_for_dry_run(s)
    model_cfg = {k: v for k, v in s.model.items() if k not in ("checkpoint", "text_checkpoint", "image_checkpoint")}
    quiet = logging.getLogger("jamtrain.models")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "fusing random parents" is expected when only sizing
    try:
        with torch.device("meta"):
            model = (model_factory or default_model_factory)(model_cfg, vocab_size)
    finally:
        quiet.setLevel(level)
    n_params = count_params(model)
    world = int(os.environ.get("WORLD_SIZE", s.num_gpus))
    n_layers, d_model = _model_dims(model_cfg, vocab_size)
    bf16 = s.precision in ("auto", "bf16", "fp16")
    mem = memory_estimate(n_params, s.zero_stage, world, s.micro_batch, s.seq_len, n_layers, d_model, bf16)
    tokens_per_step = s.micro_batch * s.seq_len * s.grad_accum * world
    gib = 1024 ** 3
    lines = [
        f"parameters: {n_params:,} ({n_params / 1e9:.2f} B); vocabulary {vocab_size:,}",
        f"ranks: {world}; ZeRO stage {s.zero_stage}; precision {'bf16' if bf16 else 'fp32'} "
        f"(DeepSpeed config {s.deepspeed_path})",
        f"memory per GPU: weights {mem['weights'] / gib:.1f} GiB + grads {mem['grads'] / gib:.1f} GiB + optimizer "
        f"{mem['optimizer'] / gib:.1f} GiB + activations ~{mem['activations'] / gib:.1f} GiB = {mem['total'] / gib:.1f} GiB",
        f"tokens per step: {s.micro_batch} x {s.seq_len} x {s.grad_accum} (accumulation) x {world} = {tokens_per_step:,}",
        f"steps: {s.steps:,} (warm-up {s.warmup_steps}, {s.decay} decay to {s.min_lr_ratio:g} x lr {s.lr:g}); "
        f"total tokens {tokens_per_step * s.steps / 1e9:.2f} B",
    ]
    for line in lines:
        echo(line)
    return {"params": n_params, "world_size": world, "memory_bytes": mem, "tokens_per_step": tokens_per_step,
            "steps": s.steps, "total_tokens": tokens_per_step * s.steps}


def _vocab_size_for_dry_run(s: Settings) -> int:
    try:
        return dataset_vocab(s.datasets).size
    except Exception:
        return 32000 + 22 + 8192  # LLaMA text pieces + specials + image codes


# -- main-job stage ----------------------------------------------------------------------------
def run_stage(ctx) -> list[str]:
    """Short CPU smoke run on the tokens the earlier stages wrote (the `loader` and `train`
    sections); mixture entries whose dataset the run did not produce (e.g. no instruct data) are
    left out with a note."""
    from jamdata.manifest import build_manifest, describe_shard, is_complete, output_dir, write_manifest

    cfg = ctx.config
    head = str(ctx.run_dir).split("/", 1)[0]
    if head.endswith(":"):  # gs://, s3:// (pathlib folds the double slash)
        return [f"skipped: the CPU smoke run needs a local run directory, not {str(ctx.run_dir).replace(':/', '://', 1)}; "
                "train on GPUs with `jamtrain train --config ...` (docs/training.md)"]
    s = parse_settings(cfg, out_dir=ctx.path("train"), run_dir=ctx.run_dir)
    notes = []
    missing = [n for n, d in s.datasets.items() if not is_complete(d)]
    if missing and len(missing) < len(s.datasets):
        for n in missing:
            s.datasets.pop(n)
            notes.append(f"mixture entry {n!r} left out: {ctx.run_dir / n} has no finished dataset")
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
    out = ctx.path("train")
    with output_dir(out):
        result = train(s)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        files = [str(p.relative_to(out)) for p in sorted(out.rglob("*"))
                 if p.is_file() and not p.name.startswith(".") and "checkpoints" not in p.parts]
        summary = {"first_loss": result.first_loss, "last_loss": result.last_loss, "steps": s.steps,
                   "params": result.params, "eval": result.eval}
        write_manifest(str(out), build_manifest("checkpoint", [describe_shard(str(out), f) for f in files],
                                                cfg.section("train").to_dict(), dataset_vocab(s.datasets), summary,
                                                list(s.datasets.values())))
    lines = notes + [f"{result.params:,}-parameter model, {s.steps} steps on {', '.join(s.datasets)}: "
                     f"loss {result.first_loss:.3f} -> {result.last_loss:.3f} ({result.seconds:.0f}s)"]
    for name, r in result.eval.items():
        if r["ppl"] is not None:
            lines.append(f"validation perplexity {name}: {r['ppl']:.2f} over {r['tokens']} held-out tokens")
    lines.append(f"weights {out / 'export' / 'model.safetensors'}, log {out / 'log.jsonl'}")
    return lines
