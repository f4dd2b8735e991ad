"""`jamdata vqvae train` really learns on the real CC12M shard, and the shard goes end to end through
`jamdata images tokenize` and `jamdata images show` with the trained model (command line)."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from jamdata.cli import main
from jamdata.image.preprocess import preprocess_image
from jamdata.image.sources import read_tar
from jamdata.image.vqvae import load_vqvae, preset
from jamdata.manifest import read_manifest, validate_dataset

pytestmark = [pytest.mark.slow, pytest.mark.corpus]


@pytest.fixture(scope="module")
def trained(corpus, sp_model_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("cc12m")
    params = preset("tiny-64px-f4")
    params["ddconfig"]["resolution"] = 32  # 32x32 -> 8x8 codes: small enough for a CPU test
    cfg = {
        "run": {"seed": 3, "workers": 1},
        "images": {"resolution": 32, "min_size": 32, "batch_size": 16, "num_shards": 2},
        "vqvae": {
            "codebook_size": 64,
            "model": {"model": {"params": params}},
            "train": {"steps": 60, "batch_size": 12, "lr": 0.003, "checkpoint_every": 30, "threads": 1},
        },
    }
    (d / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    shard = str(corpus / "images" / "cc12m-train-0000.tar")
    assert main(["vqvae", "train", "--config", str(d / "cfg.yaml"), "--out", str(d / "vqvae"), "--inputs", shard]) == 0
    assert (
        main(
            [
                "images",
                "tokenize",
                "--config",
                str(d / "cfg.yaml"),
                "--vqvae",
                str(d / "vqvae"),
                "--tokenizer",
                str(sp_model_path),
                "--out",
                str(d / "ic"),
                "--inputs",
                shard,
            ]
        )
        == 0
    )
    return d, shard


def test_training_learns_and_keeps_the_codebook_alive(trained):
    d, _ = trained
    m = read_manifest(str(d / "vqvae"))
    s = m["summary"]
    assert m["kind"] == "vqvae" and validate_dataset(str(d / "vqvae")) == []
    assert s["images"] == 32
    assert s["final_mse"] < 0.45 * s["untrained_mse"], s  # well below an untrained model
    assert s["codes_used"] >= 32 and s["perplexity"] >= 16, s  # of 64: not collapsed
    for step in (30, 60):
        png = Image.open(d / "vqvae" / f"recon-step-{step:06d}.png")
        assert png.size[0] > 8 * 32 and png.size[1] >= 2 * 32
    assert Image.open(d / "vqvae" / "codebook-usage.png").size[0] > 300
    mid = load_vqvae(d / "vqvae" / "checkpoints" / "step-000030")
    assert mid.n_embed == 64
    ckpt = torch.load(d / "vqvae" / "vqvae.ckpt")
    assert set(ckpt) >= {"state_dict", "global_step"} and "quantize.embedding.weight" in ckpt["state_dict"]


def test_cc12m_end_to_end_and_contact_sheet(trained, tmp_path):
    import webdataset as wds

    d, shard = trained
    m = read_manifest(str(d / "ic"))
    rej = read_manifest(str(d / "ic-rejects"))
    assert m["summary"]["samples"] + rej["summary"]["rejects"] == 32
    assert m["summary"]["samples"] >= 30 and validate_dataset(str(d / "ic")) == []
    rows = list(wds.WebDataset(sorted(str(p) for p in (d / "ic").glob("*.tar")), shardshuffle=False).decode())
    assert len(rows) == m["summary"]["samples"]
    originals = {r.original_key: r for r in read_tar(shard)}
    model = load_vqvae(d / "vqvae")
    errs, mean_errs = [], []
    for r in rows[:8]:
        assert r["json"]["caption"] == (originals[r["json"]["original_key"]].caption or "").strip()
        x, _ = preprocess_image(originals[r["json"]["original_key"]].image, 32, 32)
        dec = model.decode(torch.from_numpy(r["image_codes.npy"].astype(np.int64))[None])[0].numpy()
        errs.append(float(((dec - x) ** 2).mean()))
        mean_errs.append(float(((x - x.mean(axis=(1, 2), keepdims=True)) ** 2).mean()))
    # decoded pictures are much closer to their own originals than a flat average colour is
    assert np.mean(errs) < 0.6 * np.mean(mean_errs), (errs, mean_errs)
    out = tmp_path / "sheet.png"
    assert main(["images", "show", str(d / "ic"), "--out", str(out), "-n", "8"]) == 0
    sheet = Image.open(out)
    assert sheet.format == "PNG" and sheet.size[0] > 4 * 192
    summary = json.loads((d / "ic" / "manifest.json").read_text())["summary"]
    assert summary["codes_used"] > 16 and summary["grid"] == [8, 8]
