"""The `train` section as typed settings (`Settings`, `parse_settings`) and the DeepSpeed JSON it names."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from jamdata.config import Config, ConfigError
from jamdata.settings import load_settings, setting
from jamtrain.evaluate import Holdout, ShardPolicy
from jamtrain.models.settings import ModelSettings, model_settings
from jamtrain.schedule import DECAYS

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class EvalSection:
    """`train.eval`: held-out evaluation during training."""

    every: int = setting(0, "steps between evaluations (0: none)", lo=0)
    holdout_fraction: float = setting(0.01, "share of samples held out of training", lo=0, hi=0.5)
    max_samples: int = setting(256, "held-out samples scored per evaluation", lo=1)
    batch_size: int = setting(8, "samples per evaluation forward pass", lo=1)
    datasets: dict = setting({}, "name -> separate validation dataset, evaluated whole")


@dataclass(frozen=True)
class TrainSection:
    """The `train` section (docs/training.md)."""

    model: ModelSettings = setting(ModelSettings())
    deepspeed: str = setting("configs/deepspeed-cpu.json", "the DeepSpeed JSON (ZeRO stage, micro-batch, ...)")
    out_dir: str = setting("train", "training directory (relative: under the run directory)")
    steps: int = setting(100, "optimizer steps", lo=1)
    lr: float = setting(3e-4, "peak learning rate", lo=0)
    min_lr_ratio: float = setting(0.1, "final learning rate / peak", lo=0, hi=1)
    warmup_steps: int = setting(10, "linear warm-up steps", lo=0)
    decay: str = setting("cosine", "learning-rate decay after warm-up", choices=DECAYS)
    weight_decay: float = setting(0.1, "AdamW weight decay", lo=0)
    betas: list[float] = setting([0.9, 0.95], "AdamW betas (two numbers)")
    eps: float = setting(1e-8, "AdamW epsilon", lo=0)
    precision: str = setting("auto", "training precision", choices=("auto", "bf16", "fp16", "fp32"))
    seed: int | None = setting(None, "seed (default: run.seed, else 1234)")
    log_every: int = setting(1, "steps between log lines", lo=1)
    save_every: int = setting(0, "steps between checkpoints (0: only at the end)", lo=0)
    keep_checkpoints: int = setting(2, "newest checkpoints kept", lo=1)
    verify_checkpoints: str = setting("sha256", "how a checkpoint is checked before resume", choices=("sha256", "size"))
    eval: EvalSection = setting(EvalSection())
    peak_tflops: float | None = setting(None, "per-device peak for MFU (default: from the detected GPU)", lo=0)
    num_gpus: int = setting(1, "what --dry-run sizes for (a launched run uses the real world size)", lo=1)
    gpus_per_host: int = setting(8, "ranks sharing one host's RAM, for --dry-run's per-host figure", lo=1)
    cpu_shm_comm: bool = setting(False, "DeepSpeed's shared-memory collectives on CPU")
    cpu_threads: int = setting(0, "torch threads per CPU rank (0: torch's default)", lo=0)
    export: bool = setting(True, "write the Hugging Face-style export at the end")


# -- settings ----------------------------------------------------------------------------------
@dataclass
class Settings:
    model: ModelSettings  # `given`: the keys the config set (what run metadata records)
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
    gpus_per_host: int = 8  # ranks sharing one host's RAM, for the per-host figure of --dry-run
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
        return ShardPolicy(
            sec.choice("verify", ["sha256", "size", "none"], "sha256"),
            sec.choice("on_corrupt", ["skip", "fail"], "skip"),
        )

    def eval_sets(self) -> dict[str, tuple[str, Holdout]]:
        sets = {n: (d, self.holdout) for n, d in self.datasets.items() if self.holdout is not None}
        sets.update({n: (d, Holdout(None)) for n, d in self.eval_datasets.items()})
        return sets

    def loader_config(self, world: int) -> Config:
        """The loader section with global_batch_size = micro-batch x ranks (checked if given)."""
        want = self.micro_batch * world
        got = self.loader.get("global_batch_size")
        if got is not None and got != want:
            raise ConfigError(
                "loader.global_batch_size",
                f"is {got}, but the DeepSpeed micro-batch "
                f"({self.micro_batch}, {self.deepspeed_path}) x {world} rank(s) = {want}; "
                "set one to match the other or leave global_batch_size out",
            )
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
        raise ConfigError(
            "train.deepspeed",
            f"{path}: remove 'optimizer'/'scheduler'; they come from the train "
            "section (AdamW + warm-up/decay), so resume and export see one definition",
        )
    return ds


def parse_settings(cfg: Config, out_dir: str | Path | None = None, run_dir: str | Path | None = None) -> Settings:
    """The `train` section (typos fail naming the key); the data comes from the loader section
    (`loader.mixture` names, `loader.paths` or `<run dir>/<name>`)."""
    from jamdata.loader import dataset_dirs

    t = load_settings(TrainSection, cfg.section("train"))
    run_dir = str(run_dir or cfg.section("run").get("out_dir", str, default="out/run"))
    if len(t.betas) != 2:
        raise ConfigError("train.betas", f"must be two numbers, got {t.betas!r}")
    ds_path = t.deepspeed
    out = str(out_dir or _resolve(t.out_dir, run_dir))
    if "://" in out:
        raise ConfigError(
            "train.out_dir",
            f"{out}: checkpoints need a file system every rank shares (a local, "
            "NFS/Lustre or mounted-bucket path), not a URL",
        )
    ev = t.eval
    return Settings(
        model=model_settings(cfg.section("train").data.get("model"), "train.model"),
        deepspeed=load_deepspeed_config(ds_path),
        deepspeed_path=ds_path,
        datasets=dataset_dirs(cfg, run_dir),
        out_dir=Path(out),
        loader=cfg.section("loader").to_dict(),
        steps=t.steps,
        lr=t.lr,
        min_lr_ratio=t.min_lr_ratio,
        warmup_steps=t.warmup_steps,
        decay=t.decay,
        weight_decay=t.weight_decay,
        betas=(float(t.betas[0]), float(t.betas[1])),
        eps=t.eps,
        precision=t.precision,
        seed=cfg.section("run").get("seed", int, default=1234) if t.seed is None else t.seed,
        log_every=t.log_every,
        save_every=t.save_every,
        keep_checkpoints=t.keep_checkpoints,
        verify_checkpoints=t.verify_checkpoints,
        eval_every=ev.every,
        holdout_fraction=ev.holdout_fraction,
        eval_max_samples=ev.max_samples,
        eval_batch_size=ev.batch_size,
        eval_datasets={k: _resolve(str(v), run_dir) for k, v in ev.datasets.items()},
        peak_tflops=t.peak_tflops,
        num_gpus=t.num_gpus,
        gpus_per_host=t.gpus_per_host,
        cpu_shm_comm=t.cpu_shm_comm,
        cpu_threads=t.cpu_threads,
        export=t.export,
    )
