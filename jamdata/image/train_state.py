"""Resumable VQ-VAE training state, and the figures written beside checkpoints.

A checkpoint directory holds the tokenizer (`vqvae.ckpt` + `vqvae.yaml`, taming layout, what
`load_vqvae` reads) and `train_state.pt`: everything else a run needs to continue exactly: the
EMA codebook statistics, optimizer states, the discriminator and its optimizer, the step, every
rank's data position and random generator state, and the metrics so far. It is read weights-only
(`jamdata.safe_load`): plain containers and tensors, nothing that runs code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from jamdata.config import ConfigError
from jamdata.image.contact_sheet import grid, save_png
from jamdata.image.preprocess import to_uint8_image
from jamdata.image.vqvae import CheckpointError, load_state
from jamdata.io import atomic_write
from jamdata.safe_load import RefusedCheckpoint, load_weights_only

STATE_FILE = "train_state.pt"
STEP_DIR = re.compile(r"step-(\d{6,})$")
# Settings that may change between a run and its resumption; any other difference is refused.
RESUMABLE_CHANGES = {
    "steps",
    "checkpoint_every",
    "threads",
    "resume",
    "eval_every",
    "log_every",
    "eval_images",
    "inception",
    "device",
}


def save_state(path: str, state: dict) -> None:
    with atomic_write(f"{path}/{STATE_FILE}", "wb") as f:
        torch.save(state, f)


def latest_checkpoint(out: str) -> str | None:
    """The checkpoint directory of `out` with the highest step that has a training state."""
    root = Path(out) / "checkpoints"
    found = (
        [
            (int(m.group(1)), p)
            for p in root.glob("step-*")
            if (m := STEP_DIR.search(p.name)) and (p / STATE_FILE).is_file()
        ]
        if root.is_dir()
        else []
    )
    return str(max(found)[1]) if found else None


def read_state(ckpt_dir: str) -> dict:
    path = f"{ckpt_dir}/{STATE_FILE}"
    try:
        state = load_weights_only(path)
    except RefusedCheckpoint as e:
        raise CheckpointError(path, f"refusing to load: {e}") from None
    except Exception as e:  # torch raises many types for a corrupt file
        raise CheckpointError(path, f"cannot read training state: {str(e).strip().splitlines()[0]}") from None
    if not isinstance(state, dict) or not {"step", "model", "opt", "data", "rng", "config"} <= set(state):
        raise CheckpointError(path, "not a VQ-VAE training state")
    return state


def check_compatible(state: dict, config: dict, world_size: int, where: str) -> None:
    """Refuse to continue a run under settings that would make it a different run."""
    old = state["config"]
    diff = sorted(k for k in set(old) | set(config) if k not in RESUMABLE_CHANGES and old.get(k) != config.get(k))
    if diff:
        k = diff[0]
        raise ConfigError(
            f"vqvae.train.{k}",
            f"is {config.get(k)!r} but checkpoint {where} was trained with "
            f"{old.get(k)!r}; set resume: false to start over",
        )
    if len(state["data"]) != world_size:
        raise ConfigError(
            "vqvae.train.resume",
            f"checkpoint {where} was written by {len(state['data'])} processes, this run has {world_size}",
        )


def restore_model(model, state: dict, where: str) -> None:
    load_state(model, state["model"], where)
    q = model.quantize
    for name in ("cluster_size", "embed_avg"):
        getattr(q, name).copy_(state["ema"][name])


def model_state(model) -> dict:
    return {
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "ema": {n: getattr(model.quantize, n).detach().cpu().clone() for n in ("cluster_size", "embed_avg")},
    }


def write_metrics(out: str, history: list[dict]) -> None:
    with atomic_write(f"{out}/metrics.jsonl", "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")


def recon_grid(model, images: torch.Tensor, n: int = 8):
    with torch.no_grad():
        was = model.training
        model.eval()
        rec = model(images[:n])[0].clamp(-1, 1).cpu()
        model.train(was)
    top = [to_uint8_image(x.numpy()) for x in images[:n].cpu()]
    bottom = [to_uint8_image(x.numpy()) for x in rec]
    return grid([top, bottom], ["original", "decoded"])


def save_recon(model, images: torch.Tensor, path: str) -> None:
    if len(images):
        save_png(recon_grid(model, images), path)


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
