"""Decode an image-caption dataset back to pictures: a contact sheet a person can check by eye."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jamdata.formats.wds import iter_samples
from jamdata.image.contact_sheet import contact_sheet, save_png
from jamdata.image.preprocess import ImageRejected, preprocess_image, to_uint8_image
from jamdata.image.sources import read_source
from jamdata.image.vqvae import load_vqvae
from jamdata.manifest import read_manifest


def first_samples(root: str, n: int) -> list[dict]:
    manifest = read_manifest(root)
    out: list[dict] = []
    for shard in manifest["shards"]:
        for s in iter_samples(f"{root.rstrip('/')}/{shard['path']}"):
            out.append(s.decoded())
            if len(out) >= n:
                return out
    return out


def find_originals(inputs: list[str], wanted: set[tuple[str, str]], resolution: int) -> dict:
    """(source file name, original key) -> preprocessed original, for the side-by-side view."""
    found: dict = {}
    for path in inputs:
        if not Path(path).exists() or Path(path).name not in {w[0] for w in wanted}:
            continue
        for rec in read_source(path):
            k = (Path(rec.file).name, rec.original_key)
            if k in wanted and rec.image:
                try:
                    found[k] = to_uint8_image(preprocess_image(rec.image, resolution, 1, 1e9)[0])
                except ImageRejected:
                    pass
    return found


def render_contact_sheet(
    root: str, out: str, vqvae: str | None = None, n: int = 12, columns: int = 4, originals: list[str] | None = None
) -> tuple[str, int]:
    manifest = read_manifest(root)
    summary = manifest.get("summary", {})
    vqvae = vqvae or summary.get("vqvae")
    if not vqvae:
        raise FileNotFoundError(f"{root}: manifest names no VQ-VAE; pass --vqvae")
    model = load_vqvae(vqvae)
    samples = first_samples(root, n)
    if not samples:
        raise FileNotFoundError(f"{root}: no samples to show")
    codes = torch.from_numpy(np.stack([s["image_codes.npy"].astype(np.int64) for s in samples]))
    decoded = model.decode(codes).numpy()
    items = [(to_uint8_image(d), s["json"].get("caption", "")) for d, s in zip(decoded, samples)]
    inputs = originals if originals is not None else manifest.get("inputs", [])
    wanted = {(s["json"].get("source", ""), s["json"].get("original_key", "")) for s in samples}
    found = find_originals(inputs, wanted, int(summary.get("resolution") or model.resolution)) if inputs else {}
    pairs = (
        [found.get((s["json"].get("source", ""), s["json"].get("original_key", ""))) for s in samples]
        if found
        else None
    )
    sheet = contact_sheet(items, columns, pairs=pairs)
    return save_png(sheet, out), len(samples)
