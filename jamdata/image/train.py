"""Training a VQ-VAE when no pretrained image tokenizer is at hand (the taming VQGAN recipe).

Loss: pixel reconstruction (`pixel_loss`: mse or l1) + commitment (beta = 0.25), and as options
the taming terms: LPIPS perceptual loss (`perceptual_weight`, weights supplied as files) and a
PatchGAN discriminator with hinge loss, adaptive weight and a delayed start (`disc_weight`,
`disc_start`); see losses.py. The codebook follows the encoder by EMA (decay 0.99) and codes that
stop being used are restarted from encoder outputs; `ema: false` learns it by the codebook loss
instead. Data streams from the inputs (train_data.py), data parallelism comes from torchrun
(train_dist.py), and every checkpoint can be resumed exactly (train_state.py). Metrics (losses,
codebook usage and perplexity, PSNR and optionally rFID on held-out images) go to metrics.jsonl.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from jamdata.image import train_state as ts
from jamdata.image.losses import LPIPS, NLayerDiscriminator, adaptive_weight, disc_factor, hinge_d_loss
from jamdata.image.metrics import InceptionV3, RunningStats, frechet_distance, psnr, usage
from jamdata.image.train_data import ImageStream, Position, holdout_images
from jamdata.image.train_dist import CodebookSync, Dist
from jamdata.image.vqvae import build_vqvae, save_checkpoint
from jamdata.image.vqvae_net import VQModel
from jamdata.settings import setting

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """`vqvae.train` (docs/images.md): the VQ-VAE training recipe. `model`, `codebook_size`, `seed`
    and `fields` come from `vqvae.*`, `run.seed` and `images.fields`."""

    model: str | dict = field(default="tiny-64px-f4", metadata={"internal": True})
    codebook_size: int | None = field(default=None, metadata={"internal": True})
    steps: int = setting(300, "optimizer steps", lo=1)
    batch_size: int = setting(16, "images per step over all processes", lo=1)
    lr: float = setting(2e-3, "peak learning rate", lo=0)
    warmup_steps: int = setting(20, "linear warm-up steps", lo=0)
    ema: bool = setting(True, "codebook by EMA (else by the codebook loss)")
    ema_decay: float = setting(0.99, "EMA decay of the codebook", lo=0, hi=1)
    beta: float = setting(0.25, "commitment loss weight", lo=0)
    pixel_loss: str = setting("mse", "pixel reconstruction loss (taming: l1)", choices=("mse", "l1"))
    perceptual_weight: float = setting(0.0, "LPIPS weight (taming: 1.0); needs lpips_vgg16 + lpips_lin", lo=0)
    lpips_vgg16: str | None = setting(None, "torchvision VGG16 state dict file, for LPIPS")
    lpips_lin: str | None = setting(None, "LPIPS linear layers file (vgg.pth), for LPIPS")
    disc_weight: float = setting(0.0, "PatchGAN weight (taming: 0.8); 0: no discriminator", lo=0)
    disc_start: int = setting(0, "steps before the GAN terms switch on", lo=0)
    disc_lr: float | None = setting(None, "discriminator learning rate (default: lr)", lo=0)
    disc_layers: int = setting(3, "PatchGAN layers", lo=1, hi=6)
    disc_ndf: int = setting(64, "PatchGAN base channels", lo=1)
    shuffle_buffer: int = setting(1000, "records held for shuffling (per process)", lo=1)
    holdout_every: int = setting(0, "every n-th image (by key hash) held out for evaluation; 0: none", lo=0)
    eval_images: int = setting(64, "images in the evaluation sample", lo=1)
    eval_every: int = setting(0, "steps between evaluations (0: at checkpoints and the end)", lo=0)
    log_every: int = setting(25, "steps between log lines", lo=1)
    inception: str | None = setting(None, "torchvision inception_v3 state dict: rFID in the evaluations")
    checkpoint_every: int = setting(0, "steps between checkpoints (0: only the final one)", lo=0)
    resume: bool = setting(False, "continue from the newest checkpoint in the output directory")
    flip: bool = setting(True, "random horizontal flips")
    max_images: int = setting(0, "images read from the inputs (0: all)", lo=0)
    min_size: int = setting(16, "smallest image side accepted", lo=1)
    max_aspect: float = setting(4.0, "most extreme aspect ratio accepted", lo=1)
    seed: int = field(default=0, metadata={"internal": True})
    threads: int = setting(0, "torch threads (0: torch's default)", lo=0)
    channels_last: bool = setting(True, "NHWC convolutions: faster on CPU for small channel counts")
    device: str = setting("cpu", "where training runs", choices=("cpu", "cuda", "auto"))
    fields: dict = field(default_factory=dict, metadata={"internal": True})
    inputs: list[str] | None = setting(None, "training images (default: images.inputs)", one_or_many=True)

    def identity(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("fields", "inputs")}


class Evaluator:
    """Reconstruction metrics on a fixed image sample (rank 0)."""

    def __init__(self, images: torch.Tensor, inception: str | InceptionV3 | None, inception_size: int = 299):
        self.images = images
        self.inception = InceptionV3.from_file(inception, inception_size) if isinstance(inception, str) else inception
        self.real: RunningStats | None = None

    @torch.no_grad()
    def __call__(self, model: VQModel, batch: int = 32) -> dict:
        was = model.training
        model.eval()
        err, db, hist = 0.0, [], torch.zeros(model.n_embed, dtype=torch.long)
        fake = RunningStats() if self.inception else None
        real_new = RunningStats() if self.inception and self.real is None else None
        for i in range(0, len(self.images), batch):
            x = self.images[i : i + batch]
            rec, _, codes = model(x)
            rec = rec.clamp(-1, 1)
            err += F.mse_loss(rec, x, reduction="sum").item()
            db.append(psnr(rec, x) * len(x))
            hist += torch.bincount(codes.reshape(-1).cpu(), minlength=model.n_embed)
            if fake is not None and self.inception is not None:
                fake.add(self.inception(rec.cpu()))
                if real_new is not None:
                    real_new.add(self.inception(x.cpu()))
        model.train(was)
        out = {
            "mse": err / max(1, self.images.numel()),
            "psnr": sum(db) / max(1, len(self.images)),
            **usage(hist),
            "histogram": hist,
        }
        if fake is not None:
            real = self.real or real_new
            assert real is not None  # measured at the first evaluation
            self.real = real
            out["rfid"] = frechet_distance(real, fake)
        return out


def lr_at(cfg: TrainConfig, step: int, base: float) -> float:
    return base * min(1.0, step / max(1, cfg.warmup_steps)) * (0.5 + 0.5 * math.cos(math.pi * step / cfg.steps))


def _metrics_row(step: int, ev: dict) -> dict:
    return {
        "step": step,
        "eval_mse": round(ev["mse"], 5),
        "eval_psnr": round(ev["psnr"], 3),
        "eval_codes_used": ev["codes_used"],
        "eval_perplexity": round(ev["perplexity"], 2),
        **({"eval_rfid": round(ev["rfid"], 3)} if "rfid" in ev else {}),
    }


def train_vqvae(
    files: list[str], cfg: TrainConfig, out_dir: str, say: Callable[[str], None] = log.info, d: Dist | None = None
) -> dict[str, Any]:
    """Train on images streamed from `files`; rank 0 writes checkpoints and figures into out_dir."""
    d = d or Dist()
    out = str(out_dir).rstrip("/")  # a local directory or a URL (never pathlib: it folds s3://)
    if d.main is False:
        say = log.debug
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size % d.world_size:
        from jamdata.config import ConfigError

        raise ConfigError("vqvae.train.batch_size", f"{cfg.batch_size} is not divisible by {d.world_size} processes")
    per_rank = cfg.batch_size // d.world_size
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1000003 * d.rank)
    model = build_vqvae(cfg.model, cfg.codebook_size)
    q = model.quantize
    q.ema, q.decay, q.beta = cfg.ema, cfg.ema_decay, cfg.beta
    if cfg.ema:
        q.embedding.weight.requires_grad_(False)  # moved by EMA, not by gradients
    mem = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(d.device, memory_format=mem)  # type: ignore[call-overload]  # Module.to takes it; stubs omit it
    stream = ImageStream(
        files,
        model.resolution,
        seed=cfg.seed,
        shuffle_buffer=cfg.shuffle_buffer,
        rank=d.rank,
        world_size=d.world_size,
        holdout_every=cfg.holdout_every,
        min_size=cfg.min_size,
        max_aspect=cfg.max_aspect,
        max_images=cfg.max_images,
        fields=cfg.fields,
    )
    if cfg.perceptual_weight and not (cfg.lpips_vgg16 and cfg.lpips_lin):
        from jamdata.config import ConfigError

        raise ConfigError(
            "vqvae.train.lpips_vgg16",
            "perceptual_weight > 0 needs the lpips_vgg16 and lpips_lin weight files (see docs/images.md)",
        )
    lpips = (
        LPIPS.from_files(cfg.lpips_vgg16, cfg.lpips_lin).to(d.device)
        if cfg.perceptual_weight and cfg.lpips_vgg16 and cfg.lpips_lin
        else None
    )  # both checked above
    disc: torch.nn.Module | None = (
        NLayerDiscriminator(3, cfg.disc_ndf, cfg.disc_layers).to(d.device) if cfg.disc_weight else None
    )
    evaluator = None
    if d.main:
        held = holdout_images(
            files,
            model.resolution,
            cfg.eval_images,
            cfg.holdout_every,
            min_size=cfg.min_size,
            max_aspect=cfg.max_aspect,
            fields=cfg.fields,
        )
        evaluator = Evaluator(torch.from_numpy(held).to(d.device, memory_format=mem), cfg.inception)
    opt = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr,
        betas=(0.5, 0.9) if disc is not None else (0.9, 0.99),
    )
    dopt = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr or cfg.lr, betas=(0.5, 0.9)) if disc else None
    start, history, extra = 0, [], {}
    resume_from = ts.latest_checkpoint(out) if cfg.resume and d.main else None
    resume_from = d.broadcast(resume_from)
    if resume_from:
        st = ts.read_state(resume_from)
        ts.check_compatible(st, cfg.identity(), d.world_size, resume_from)
        ts.restore_model(model, st, resume_from)
        opt.load_state_dict(st["opt"])
        if disc is not None and dopt is not None:
            disc.load_state_dict(st["disc"])
            dopt.load_state_dict(st["disc_opt"])
        stream.position = Position.from_dict(st["data"][d.rank]["position"])
        stream.usable, stream.rejects = st["data"][d.rank]["usable"], st["data"][d.rank]["rejects"]
        gen.set_state(st["rng"][d.rank])
        start, history, extra = int(st["step"]), list(st["history"]), dict(st.get("extra", {}))
        say(f"resuming from {resume_from} at step {start}")
    batches = stream.batches(per_rank)
    if not resume_from:
        x0 = torch.from_numpy(next(batches)).to(d.device, memory_format=mem)
        if d.main and evaluator is not None:
            ev = evaluator(model)
            extra["untrained"] = _metrics_row(0, ev)
            say(
                f"untrained: mse {ev['mse']:.4f}, psnr {ev['psnr']:.2f} dB, codes used {ev['codes_used']}/{model.n_embed}"
            )
        with torch.no_grad():  # seed the codebook with encoder outputs (rank 0's; DDP shares them)
            z = model.latent(x0).permute(0, 2, 3, 1).reshape(-1, q.e_dim)
            q.init_from(z, gen)
    net = model
    if d.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        q.sync = CodebookSync()
        net = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
        disc = DDP(disc, device_ids=[d.device.index] if d.device.type == "cuda" else None) if disc else None
    last_layer = model.decoder.conv_out.weight
    model.train()
    t0, ckpts = time.time(), []
    for step in range(start + 1, cfg.steps + 1):
        lr = lr_at(cfg, step, cfg.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        x = torch.from_numpy(next(batches))
        if cfg.flip:
            flip = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        x = x.to(d.device, memory_format=mem)
        rec, qloss, codes = net(x, gen)
        pix = F.l1_loss(rec, x) if cfg.pixel_loss == "l1" else F.mse_loss(rec, x)
        rec_loss = pix + (cfg.perceptual_weight * lpips(x, rec).mean() if lpips is not None else 0.0)
        loss = rec_loss + qloss
        row: dict = {}
        gan_on = disc is not None and disc_factor(step, cfg.disc_start) > 0
        if gan_on and disc is not None:
            g_loss = -disc(rec).mean()
            dw = adaptive_weight(rec_loss, g_loss, last_layer, cfg.disc_weight)
            loss = loss + dw * g_loss
            row.update(g_loss=round(g_loss.item(), 5), d_weight=round(dw.item(), 5))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if gan_on and disc is not None and dopt is not None:
            logits = disc(torch.cat([x, rec.detach()]))
            d_loss = hinge_d_loss(logits[: len(x)], logits[len(x) :])
            for g in dopt.param_groups:
                g["lr"] = lr_at(cfg, step, cfg.disc_lr or cfg.lr)
            dopt.zero_grad(set_to_none=True)
            d_loss.backward()
            dopt.step()
            row["d_loss"] = round(d_loss.item(), 5)
        if step % cfg.log_every == 0 or step == cfg.steps:
            u = usage(torch.bincount(codes.reshape(-1).cpu(), minlength=model.n_embed))
            history.append(
                {
                    "step": step,
                    "recon": round(pix.item(), 5),
                    "vq": round(qloss.item(), 5),
                    "batch_codes_used": u["codes_used"],
                    "batch_perplexity": round(u["perplexity"], 2),
                    "lr": lr,
                    **row,
                }
            )
            say(
                f"step {step}/{cfg.steps}: recon {pix.item():.4f} vq {qloss.item():.4f} codes in batch "
                f"{u['codes_used']}" + "".join(f" {k} {v}" for k, v in row.items()) + f" ({time.time() - t0:.0f}s)"
            )
        final = step == cfg.steps
        ckpt_now = final or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
        if d.main and evaluator is not None and (ckpt_now or (cfg.eval_every and step % cfg.eval_every == 0)):
            ev = evaluator(model)
            history.append(_metrics_row(step, ev))
            say(
                f"eval at {step}: psnr {ev['psnr']:.2f} dB, {ev['codes_used']}/{model.n_embed} codes, perplexity "
                f"{ev['perplexity']:.1f}" + (f", rfid {ev['rfid']:.2f}" if "rfid" in ev else "")
            )
        if ckpt_now:
            data = d.gather(
                {"position": stream.position.to_dict(), "usable": stream.usable, "rejects": stream.rejects[:50]}
            )
            rng = d.gather(gen.get_state())
            if d.active and disc is not None:  # BatchNorm statistics: rank 0's, as DDP's next forward would
                for buf in _inner(disc).buffers():
                    torch.distributed.broadcast(buf, src=0)
            sums = d.gather(_weight_sum(model, _inner(disc)))
            if len(set(sums)) > 1:  # data parallelism must keep one model; never save a split one
                raise RuntimeError(f"processes disagree on the weights at step {step}: {sums}")
            extra["rank_weight_sums"] = sums
            if d.main and evaluator is not None:
                sub = out if final else f"{out}/checkpoints/step-{step:06d}"
                save_checkpoint(model, sub, {"global_step": step})
                ts.save_state(
                    sub,
                    {
                        "step": step,
                        **ts.model_state(model),
                        "opt": opt.state_dict(),
                        "disc": _inner(disc).state_dict() if disc else None,
                        "disc_opt": dopt.state_dict() if dopt else None,
                        "data": data,
                        "rng": rng,
                        "history": history,
                        "extra": extra,
                        "config": cfg.identity(),
                    },
                )
                ts.save_recon(model, evaluator.images, f"{out}/recon-step-{step:06d}.png")
                ts.write_metrics(out, history)
                ckpts.append(sub)
    return _finish(model, cfg, d, stream, evaluator, history, extra, ckpts, out, start, say)


def _inner(m):
    return getattr(m, "module", m)


def _weight_sum(*modules) -> float:
    """A checksum of every parameter and buffer (ranks compare theirs before a checkpoint)."""
    return float(
        sum(t.detach().double().sum() for m in modules if m is not None for t in [*m.parameters(), *m.buffers()])
    )


def _finish(model, cfg, d, stream, evaluator, history, extra, ckpts, out, start, say) -> dict:
    usable = sum(d.gather(stream.usable))
    rejects = [r for part in d.gather(stream.rejects) for r in part]
    if not d.main:
        return {}
    ev = evaluator(model)
    ts.usage_figure(
        ev["histogram"],
        f"{out}/codebook-usage.png",
        f"{ev['codes_used']}/{model.n_embed} codes used, perplexity {ev['perplexity']:.1f}",
    )
    untrained = extra.get("untrained", {})
    summary = {
        "config": model.params,
        "train": cfg.identity(),
        "processes": d.world_size,
        "images": usable,
        "eval_images": len(evaluator.images),
        "steps": cfg.steps,
        "resumed_at": start,
        "untrained_mse": untrained.get("eval_mse"),
        "final_mse": round(ev["mse"], 5),
        "psnr": round(ev["psnr"], 3),
        "untrained_psnr": untrained.get("eval_psnr"),
        "codes_used": ev["codes_used"],
        "codebook_size": model.n_embed,
        "perplexity": round(ev["perplexity"], 2),
        **({"rfid": round(ev["rfid"], 3)} if "rfid" in ev else {}),
        "checkpoints": ckpts,
        "rank_weight_sums": extra.get("rank_weight_sums"),
        "history": history,
        "unusable_inputs": rejects[:50],
    }
    import json

    from jamdata.io import atomic_write

    with atomic_write(f"{out}/train_log.json", "w") as f:
        json.dump(summary, f, indent=2, default=str)
    say(
        f"trained: mse {summary['untrained_mse']} -> {summary['final_mse']}, psnr {summary['psnr']} dB, "
        f"{ev['codes_used']}/{model.n_embed} codes used, perplexity {ev['perplexity']:.1f}"
    )
    return summary
