"""The `vqvae-train` stage: train a VQ-VAE into a dataset of kind "vqvae", or import an existing
taming/Chameleon checkpoint into one after a strict key-for-key load."""
from __future__ import annotations

import logging

from jamdata.config import Config, ConfigError
from jamdata.io import expand_inputs, fs_and_path
from jamdata.manifest import describe_shard, output_dir

log = logging.getLogger(__name__)
VQVAE_KEYS = ["codebook_size", "model", "checkpoint", "train"]
TRAIN_KEYS = ["inputs", "steps", "batch_size", "lr", "warmup_steps", "ema", "ema_decay", "beta",
              "checkpoint_every", "flip", "max_images", "min_size", "max_aspect", "threads", "channels_last"]


def codebook_size(cfg: Config) -> int:
    return int(cfg.section("vqvae").number("codebook_size", 8192, lo=2, hi=65536))


def train_config(cfg: Config) -> tuple["object", list[str]]:
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
    tr.check_keys(TRAIN_KEYS)
    d = TrainConfig()
    tc = TrainConfig(
        model=model, codebook_size=codebook_size(cfg),
        steps=int(tr.number("steps", d.steps, lo=1)), batch_size=int(tr.number("batch_size", d.batch_size, lo=1)),
        lr=float(tr.number("lr", d.lr, lo=0)), warmup_steps=int(tr.number("warmup_steps", d.warmup_steps, lo=0)),
        ema=tr.get("ema", bool, default=d.ema), ema_decay=float(tr.number("ema_decay", d.ema_decay, lo=0, hi=1)),
        beta=float(tr.number("beta", d.beta, lo=0)),
        checkpoint_every=int(tr.number("checkpoint_every", d.checkpoint_every, lo=0)),
        flip=tr.get("flip", bool, default=d.flip), max_images=int(tr.number("max_images", d.max_images, lo=0)),
        min_size=int(tr.number("min_size", d.min_size, lo=1)),
        max_aspect=float(tr.number("max_aspect", d.max_aspect, lo=1)),
        seed=int(cfg.section("run").get("seed", int, default=0)),
        threads=int(tr.number("threads", d.threads, lo=0)),
        channels_last=tr.get("channels_last", bool, default=d.channels_last),
        fields=cfg.section("images").get("fields", dict, default={}),
    )
    inputs = tr.get("inputs", (list, str), default=None) or cfg.section("images").get("inputs", (list, str), default=[])
    return tc, [inputs] if isinstance(inputs, str) else list(inputs)


def train_to_dir(tc, inputs: list[str], out: str, say=log.info, config: dict | None = None) -> dict:
    """Train a VQ-VAE into `out` (a dataset of kind "vqvae")."""
    from jamdata.image.train import load_images, train_vqvae
    from jamdata.image.vqvae import build_vqvae
    from jamdata.manifest import build_manifest, write_manifest

    files = expand_inputs(inputs)
    res = build_vqvae(tc.model, tc.codebook_size).resolution
    images, _, rejects = load_images(files, res, tc.min_size, tc.max_aspect, tc.max_images, tc.fields)
    say(f"{len(images)} training images at {res}px ({len(rejects)} unusable)")
    with output_dir(out) as out_p:
        summary = train_vqvae(images, tc, out_p, say)
        summary["unusable_inputs"] = rejects[:50]
        shards = [describe_shard(str(out_p), n) for n in ("vqvae.ckpt", "vqvae.yaml")]
        write_manifest(str(out_p), build_manifest("vqvae", shards, config or {}, None, summary, files))
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
    return [f"trained {tc.model} for {s['steps']} steps on {s['images']} images in {s['seconds']}s: "
            f"mse {s['untrained_mse']} -> {s['final_mse']}, {s['codes_used']}/{s['codebook_size']} codes used "
            f"-> {out}"]
