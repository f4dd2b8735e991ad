"""The `train` section as typed settings (`Settings`, `parse_settings`) and the DeepSpeed JSON it names."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from jamdata.config import Config, ConfigError
from jamtrain.evaluate import Holdout, ShardPolicy
from jamtrain.schedule import DECAYS

REPO = Path(__file__).resolve().parent.parent

TRAIN_KEYS = ("model", "deepspeed", "out_dir", "steps", "lr", "min_lr_ratio", "warmup_steps", "decay",
              "weight_decay", "betas", "eps", "precision", "seed", "log_every", "save_every", "keep_checkpoints",
              "verify_checkpoints", "eval", "peak_tflops", "num_gpus", "gpus_per_host", "cpu_shm_comm", "cpu_threads", "export")
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
        gpus_per_host=int(t.number("gpus_per_host", 8, lo=1)),
        cpu_shm_comm=t.get("cpu_shm_comm", bool, default=False),
        cpu_threads=int(t.number("cpu_threads", 0, lo=0)),
        export=t.get("export", bool, default=True),
    )
