"""The `vqvae-train` stage: train a VQ-VAE into a dataset of kind "vqvae", or import an existing
taming/Chameleon checkpoint into one after a strict key-for-key load."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from jamdata.config import Config, ConfigError
from jamdata.io import expand_inputs, fs_and_path
from jamdata.manifest import describe_shard, output_dir
from jamdata.settings import load_settings, setting
from jamdata.stage import Stage, StageContext

if TYPE_CHECKING:  # torch comes with it: imported where used
    from jamdata.image.train import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VQVAESettings:
    """The `vqvae` section (docs/images.md) without its `train` part (`TrainConfig`)."""

    codebook_size: int = setting(8192, "codes of the VQ-VAE (the joint vocabulary's image codes)", lo=2, hi=65536)
    model: str | dict = setting("256px-f8", "a preset name or a taming-style model dict")
    checkpoint: str | None = setting(None, "an existing vqvae dir or taming/Chameleon .ckpt instead of training")
    train: dict = setting({}, "the training recipe (vqvae.train.*)")


def vqvae_settings(cfg: Config) -> VQVAESettings:
    s = load_settings(VQVAESettings, cfg.section("vqvae"))
    if isinstance(s.model, str):
        from jamdata.image.vqvae import PRESETS

        if s.model not in PRESETS:
            raise ConfigError("vqvae.model", f"unknown model config {s.model!r}", list(PRESETS))
    return s


def codebook_size(cfg: Config) -> int:
    return vqvae_settings(cfg).codebook_size


def train_config(cfg: Config) -> tuple[TrainConfig, list[str]]:
    """TrainConfig and training inputs from the `vqvae` section (inputs default to images.inputs)."""
    from jamdata.image.train import TrainConfig

    s = vqvae_settings(cfg)
    tc = load_settings(TrainConfig, cfg.section("vqvae.train"))
    tc = replace(
        tc,
        model=s.model,
        codebook_size=s.codebook_size,
        seed=int(cfg.get("run.seed", int, default=0)),
        fields=cfg.section("images").get("fields", dict, default={}),
    )
    inputs = tc.inputs or cfg.section("images").get("inputs", (list, str), default=[])
    return tc, [inputs] if isinstance(inputs, str) else list(inputs)


def train_to_dir(tc, inputs: list[str], out: str, say=log.info, config: dict | None = None) -> dict:
    """Train a VQ-VAE into `out` (a dataset of kind "vqvae"). Under torchrun every process calls
    this; rank 0 claims the directory and writes the manifest."""
    from contextlib import nullcontext

    from jamdata.image import train_dist
    from jamdata.image.train import train_vqvae
    from jamdata.manifest import build_manifest, write_manifest

    t0 = time.time()
    files = expand_inputs(inputs)
    d = train_dist.setup(tc.device)
    try:
        # resuming keeps the directory's checkpoints (the manifest is still removed first)
        with output_dir(out, clean=not tc.resume) if d.main else nullcontext(out) as out_p:
            d.barrier()
            summary = train_vqvae(files, tc, str(out_p), say, d)
            if d.main:
                say(
                    f"{summary['images']} training images ({len(summary['unusable_inputs'])} unusable) "
                    f"on {d.world_size} process(es)"
                )
                shards = [describe_shard(str(out_p), n) for n in ("vqvae.ckpt", "vqvae.yaml")]
                write_manifest(str(out_p), build_manifest("vqvae", shards, config or {}, None, summary, files))
    finally:
        train_dist.teardown(d)
    # the wall time is for the summary line only: the dataset (manifest, train_log.json) holds no
    # timing, so the same recipe on the same images gives the same bytes
    return {**summary, "seconds": round(time.time() - t0, 1)} if summary else summary


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
    if not inputs:
        raise ConfigError("vqvae.train.inputs", "missing: name the training images (or images.inputs)")
    s = train_to_dir(tc, inputs, out, config=sec.to_dict())
    if not s:
        return []  # a torchrun process other than rank 0: rank 0 reports
    return [
        f"trained {tc.model} for {s['steps']} steps on {s['images']} images in {s['seconds']}s: "
        f"mse {s['untrained_mse']} -> {s['final_mse']}, {s['codes_used']}/{s['codebook_size']} codes used "
        f"(perplexity {s['perplexity']}) -> {out}"
    ]


def stage_settings(ctx: StageContext) -> dict:
    sec = ctx.config.section("vqvae")
    if sec.get("checkpoint", (str, type(None)), default=None):
        return {"vqvae": sec.to_dict()}
    return {"seed": ctx.seed, "train": train_config(ctx.config)}


STAGE = Stage("vqvae-train", run_vqvae_stage, outputs=("vqvae",), settings=stage_settings)
