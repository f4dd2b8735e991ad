"""The `vqvae-train` stage: train a VQ-VAE into a dataset of kind "vqvae", or import an existing
taming/Chameleon checkpoint into one after a strict key-for-key load."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from jamdata.config import Config, ConfigError
from jamdata.io import expand_inputs, fs_and_path
from jamdata.manifest import describe_shard, output_dir
from jamdata.stage import Stage, StageContext

if TYPE_CHECKING:  # torch comes with it: imported where used
    from jamdata.image.train import TrainConfig

log = logging.getLogger(__name__)
VQVAE_KEYS = ["codebook_size", "model", "checkpoint", "train"]
# vqvae.train keys come from TrainConfig's fields; these are set elsewhere (vqvae.*, run.seed, images.fields).
NOT_TRAIN_KEYS = ("model", "codebook_size", "seed", "fields")
# Bounds of numeric keys (lo, hi); numeric keys not listed must be >= 0.
BOUNDS = {"steps": (1, None), "batch_size": (1, None), "ema_decay": (0, 1), "shuffle_buffer": (1, None),
          "eval_images": (1, None), "log_every": (1, None), "min_size": (1, None), "max_aspect": (1, None),
          "disc_layers": (1, 6), "disc_ndf": (1, None)}
CHOICES = {"pixel_loss": ("mse", "l1"), "device": ("cpu", "cuda", "auto")}
FILE_KEYS = ("lpips_vgg16", "lpips_lin", "inception")


def codebook_size(cfg: Config) -> int:
    return int(cfg.section("vqvae").number("codebook_size", 8192, lo=2, hi=65536))


def train_keys() -> list[str]:
    from dataclasses import fields

    from jamdata.image.train import TrainConfig

    return ["inputs"] + [f.name for f in fields(TrainConfig) if f.name not in NOT_TRAIN_KEYS]


def train_config(cfg: Config) -> tuple[TrainConfig, list[str]]:
    """TrainConfig and training inputs from the `vqvae` section (inputs default to images.inputs)."""
    from jamdata.image.train import TrainConfig

    sec = cfg.section("vqvae")
    sec.check_keys(VQVAE_KEYS)
    model = sec.get("model", (str, dict), default="256px-f8")
    if isinstance(model, str):
        from jamdata.image.vqvae import PRESETS

        if model not in PRESETS:
            raise ConfigError("vqvae.model", f"unknown model config {model!r}", list(PRESETS))
    tr = sec.section("train")
    keys = train_keys()
    tr.check_keys(keys)
    d = TrainConfig()
    values: dict = {}
    for k in keys[1:]:
        default = getattr(d, k)
        if k in CHOICES:
            values[k] = tr.get(k, str, default=default)
            if values[k] not in CHOICES[k]:
                raise ConfigError(f"vqvae.train.{k}", f"unknown value {values[k]!r}", list(CHOICES[k]))
        elif isinstance(default, bool):
            values[k] = tr.get(k, bool, default=default)
        elif k in FILE_KEYS or k == "disc_lr":
            values[k] = tr.get(k, (str, int, float, type(None)) if k == "disc_lr" else (str, type(None)), default=None)
        else:
            lo, hi = BOUNDS.get(k, (0, None))
            values[k] = type(default)(tr.number(k, default, lo=lo, hi=hi))
    if values["disc_lr"] is not None:
        values["disc_lr"] = float(tr.number("disc_lr", 0.0, lo=0))
    tc = TrainConfig(model=model, codebook_size=codebook_size(cfg),
                     seed=int(cfg.section("run").get("seed", int, default=0)),
                     fields=cfg.section("images").get("fields", dict, default={}), **values)
    inputs = tr.get("inputs", (list, str), default=None) or cfg.section("images").get("inputs", (list, str), default=[])
    return tc, [inputs] if isinstance(inputs, str) else list(inputs)


def train_to_dir(tc, inputs: list[str], out: str, say=log.info, config: dict | None = None) -> dict:
    """Train a VQ-VAE into `out` (a dataset of kind "vqvae"). Under torchrun every process calls
    this; rank 0 claims the directory and writes the manifest."""
    from contextlib import nullcontext

    from jamdata.image import train_dist
    from jamdata.image.train import train_vqvae
    from jamdata.manifest import build_manifest, write_manifest

    files = expand_inputs(inputs)
    d = train_dist.setup(tc.device)
    try:
        # resuming keeps the directory's checkpoints (the manifest is still removed first)
        with (output_dir(out, clean=not tc.resume) if d.main else nullcontext(out)) as out_p:
            d.barrier()
            summary = train_vqvae(files, tc, str(out_p), say, d)
            if d.main:
                say(f"{summary['images']} training images ({len(summary['unusable_inputs'])} unusable) "
                    f"on {d.world_size} process(es)")
                shards = [describe_shard(str(out_p), n) for n in ("vqvae.ckpt", "vqvae.yaml")]
                write_manifest(str(out_p), build_manifest("vqvae", shards, config or {}, None, summary, files))
    finally:
        train_dist.teardown(d)
    return summary


def import_checkpoint(src: str, out: str, model_cfg: str | dict | None, n_codes: int) -> dict:
    """Copy an existing taming/Chameleon checkpoint into a vqvae dataset after a strict load."""
    from jamdata.image.vqvae import load_vqvae, save_checkpoint
    from jamdata.manifest import build_manifest, write_manifest

    src_fs, src_p = fs_and_path(src)
    model = load_vqvae(src, None if src_fs.isdir(src_p) or model_cfg is None else model_cfg)
    if model.n_embed != n_codes:
        raise ConfigError("vqvae.codebook_size", f"is {n_codes} but checkpoint {src} has {model.n_embed} codes")
    with output_dir(out) as out_p:
        save_checkpoint(model, out_p)
        shards = [describe_shard(str(out_p), n) for n in ("vqvae.ckpt", "vqvae.yaml")]
        summary = {"imported_from": str(src), "codebook_size": model.n_embed, "config": model.params}
        write_manifest(str(out_p), build_manifest("vqvae", shards, {"checkpoint": str(src)}, None, summary, [str(src)]))
    return summary


def run_vqvae_stage(ctx) -> list[str]:
    sec = ctx.config.section("vqvae")
    out = str(ctx.path("vqvae"))
    ckpt = sec.get("checkpoint", (str, type(None)), default=None)
    if ckpt:
        s = import_checkpoint(ckpt, out, sec.get("model", (str, dict), default=None), codebook_size(ctx.config))
        return [f"imported {ckpt} ({s['codebook_size']} codes) -> {out}"]
    tc, inputs = train_config(ctx.config)
    s = train_to_dir(tc, inputs, out, config=sec.to_dict())
    if not s:
        return []  # a torchrun process other than rank 0
    return [f"trained {tc.model} for {s['steps']} steps on {s['images']} images in {s['seconds']}s: "
            f"mse {s['untrained_mse']} -> {s['final_mse']}, {s['codes_used']}/{s['codebook_size']} codes used "
            f"-> {out}"]


def stage_settings(ctx: StageContext) -> dict:
    sec = ctx.config.section("vqvae")
    if sec.get("checkpoint", (str, type(None)), default=None):
        return {"vqvae": sec.to_dict()}
    return {"seed": ctx.seed, "train": train_config(ctx.config)}


STAGE = Stage("vqvae-train", run_vqvae_stage, outputs=("vqvae",), settings=stage_settings)
