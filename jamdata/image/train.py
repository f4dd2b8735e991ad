"""Training a VQ-VAE when no pretrained image tokenizer is at hand.

Loss: pixel reconstruction (MSE) + commitment (beta = 0.25). The codebook follows the encoder by
EMA (decay 0.99) and codes that stop being used are restarted from encoder outputs, so the
codebook does not collapse; `ema: false` learns it by the codebook loss instead. The codebook is
seeded from encoder outputs of the first batch. Checkpoints use the taming layout (see vqvae.py);
each comes with a reconstruction grid PNG, and the end of training writes a codebook-usage figure.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from jamdata.image.contact_sheet import grid, save_png
from jamdata.image.preprocess import ImageRejected, preprocess_image, to_uint8_image
from jamdata.image.sources import read_source
from jamdata.image.vqvae import VQModel, build_vqvae, perplexity, save_checkpoint
from jamdata.io import atomic_write

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    model: str | dict = "tiny-64px-f4"
    codebook_size: int | None = None
    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 20
    ema: bool = True
    ema_decay: float = 0.99
    beta: float = 0.25
    checkpoint_every: int = 0      # 0: only the final checkpoint
    flip: bool = True              # random horizontal flips
    max_images: int = 0            # 0: every image of the inputs
    min_size: int = 16
    max_aspect: float = 4.0
    seed: int = 0
    threads: int = 0               # torch threads (0: torch's default)
    channels_last: bool = True     # NHWC convolutions: faster on CPU for small channel counts
    fields: dict = field(default_factory=dict)


def load_images(inputs: Iterable[str], resolution: int, min_size: int = 16, max_aspect: float = 4.0,
                max_images: int = 0, fields: dict | None = None) -> tuple[np.ndarray, list[str], list[dict]]:
    """Every usable image of the inputs, preprocessed -> (float32 [N,3,R,R], captions, rejects)."""
    arrays, captions, rejects = [], [], []
    for path in inputs:
        for rec in read_source(path, fields):
            if rec.error:
                rejects.append({"key": rec.key, "file": rec.file, "reason": rec.error[0], "detail": rec.error[1]})
                continue
            try:
                arr, _ = preprocess_image(rec.image or b"", resolution, min_size, max_aspect)
            except ImageRejected as e:
                rejects.append({"key": rec.key, "file": rec.file, "reason": e.reason, "detail": e.detail})
                continue
            arrays.append(arr)
            captions.append(rec.caption or "")
            if max_images and len(arrays) >= max_images:
                break
    if not arrays:
        raise ValueError(f"no usable training images in {list(inputs)} ({len(rejects)} rejected)")
    return np.stack(arrays), captions, rejects


@torch.no_grad()
def evaluate(model: VQModel, images: torch.Tensor, batch: int = 32) -> dict:
    """Reconstruction MSE (in [-1,1] units) and codebook usage over `images`."""
    was = model.training
    model.eval()
    err, hist = 0.0, torch.zeros(model.n_embed, dtype=torch.long)
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        rec, _, codes = model(x)
        err += F.mse_loss(rec.clamp(-1, 1), x, reduction="sum").item()
        hist += torch.bincount(codes.reshape(-1), minlength=model.n_embed)
    model.train(was)
    return {"mse": err / images.numel(), "codes_used": int((hist > 0).sum()),
            "perplexity": perplexity(hist), "histogram": hist}


def recon_grid(model: VQModel, images: torch.Tensor, n: int = 8):
    with torch.no_grad():
        was = model.training
        model.eval()
        rec = model(images[:n])[0].clamp(-1, 1)
        model.train(was)
    top = [to_uint8_image(x.numpy()) for x in images[:n]]
    bottom = [to_uint8_image(x.numpy()) for x in rec]
    return grid([top, bottom], ["original", "decoded"])


def usage_figure(hist: torch.Tensor, path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.sort(hist.numpy())[::-1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    axes[0].bar(np.arange(len(counts)), counts, width=1.0, color="#3060a0")
    axes[0].set_xlabel("code (sorted by use)")
    axes[0].set_ylabel("assignments")
    axes[0].set_title(title, fontsize=9)
    axes[1].bar(np.arange(len(hist)), hist.numpy(), width=1.0, color="#a05030")
    axes[1].set_xlabel("code id")
    axes[1].set_title("usage by code id", fontsize=9)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
    return path


def train_vqvae(images: np.ndarray, cfg: TrainConfig, out_dir: str | Path,
                say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Train on preprocessed images [N,3,R,R]; write checkpoints and figures into out_dir."""
    out = str(out_dir).rstrip("/")  # a local directory or a URL (never pathlib: it folds s3://)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build_vqvae(cfg.model, cfg.codebook_size)
    q = model.quantize
    q.ema, q.decay, q.beta = cfg.ema, cfg.ema_decay, cfg.beta
    data = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
        data = data.contiguous(memory_format=torch.channels_last)
    held = data[: min(len(data), 64)]
    untrained = evaluate(model, held)
    say(f"untrained: mse {untrained['mse']:.4f}, codes used {untrained['codes_used']}/{model.n_embed}")
    with torch.no_grad():  # seed the codebook with encoder outputs
        first = data[torch.randperm(len(data), generator=gen)[: cfg.batch_size]]
        z = model.latent(first).permute(0, 2, 3, 1).reshape(-1, q.e_dim)
        q.init_from(z, gen)
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if not (cfg.ema and n.startswith("quantize."))],
                           lr=cfg.lr, betas=(0.9, 0.99))
    history: list[dict] = []
    model.train()
    t0 = time.time()
    ckpts = []
    for step in range(1, cfg.steps + 1):
        lr = cfg.lr * min(1.0, step / max(1, cfg.warmup_steps)) * (0.5 + 0.5 * math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        x = data[idx]
        if cfg.flip:
            flip = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        rec, qloss, codes = model(x, gen)
        rloss = F.mse_loss(rec, x)
        loss = rloss + qloss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == cfg.steps:
            used = int(torch.unique(codes).numel())
            history.append({"step": step, "recon": round(rloss.item(), 5), "vq": round(qloss.item(), 5),
                            "batch_codes_used": used, "lr": lr})
            say(f"step {step}/{cfg.steps}: recon {rloss.item():.4f} vq {qloss.item():.4f} "
                f"codes in batch {used} ({time.time() - t0:.0f}s)")
        if step == cfg.steps or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
            sub = out if step == cfg.steps else f"{out}/checkpoints/step-{step:06d}"
            save_checkpoint(model, sub, {"global_step": step})
            save_png(recon_grid(model, held), f"{out}/recon-step-{step:06d}.png")
            ckpts.append(str(sub))
    final = evaluate(model, held)
    full = evaluate(model, data) if len(data) > len(held) else final
    usage_figure(full["histogram"], f"{out}/codebook-usage.png",
                 f"{full['codes_used']}/{model.n_embed} codes used, perplexity {full['perplexity']:.1f}")
    summary = {
        "config": model.params, "train": {k: v for k, v in asdict(cfg).items() if k != "fields"},
        "images": int(len(data)), "steps": cfg.steps, "seconds": round(time.time() - t0, 1),
        "untrained_mse": round(untrained["mse"], 5), "final_mse": round(final["mse"], 5),
        "codes_used": full["codes_used"], "codebook_size": model.n_embed,
        "perplexity": round(full["perplexity"], 2), "checkpoints": ckpts, "history": history,
    }
    with atomic_write(f"{out}/train_log.json", "w") as f:
        json.dump(summary, f, indent=2, default=str)
    say(f"trained: mse {untrained['mse']:.4f} -> {final['mse']:.4f}, "
        f"{full['codes_used']}/{model.n_embed} codes used, perplexity {full['perplexity']:.1f}")
    return summary
