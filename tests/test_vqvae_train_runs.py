"""Whole VQ-VAE training runs on the bundled shapes shard: a run resumed from a checkpoint ends with
exactly the weights of the run that went straight through (with the GAN and LPIPS terms on), and
two processes under torchrun (gloo on CPU) train one model and resume it exactly too."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from jamdata.config import Config, ConfigError
from jamdata.manifest import read_manifest, validate_dataset
from pipelines.vqvae_train import train_config, train_to_dir
from tests.test_vqvae_train_parts import lpips_files, one_thread  # noqa: F401 (fixtures)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "model": {
        "params": {
            "embed_dim": 8,
            "n_embed": 32,
            "ddconfig": {
                "double_z": False,
                "z_channels": 8,
                "resolution": 32,
                "in_channels": 3,
                "out_ch": 3,
                "ch": 8,
                "ch_mult": [1, 2],
                "num_res_blocks": 1,
                "attn_resolutions": [],
                "dropout": 0.0,
                "norm_groups": 4,
                "attn_type": "none",
            },
        }
    }
}


def config(sample_data, **train) -> dict:
    return {
        "run": {"seed": 7},
        "images": {"inputs": [str(sample_data / "images" / "shapes-00000.tar")]},
        "vqvae": {
            "codebook_size": 32,
            "model": TINY,
            "train": {
                "steps": 6,
                "batch_size": 4,
                "lr": 0.003,
                "warmup_steps": 2,
                "checkpoint_every": 3,
                "shuffle_buffer": 16,
                "holdout_every": 8,
                "eval_images": 4,
                "log_every": 1,
                "threads": 1,
                **train,
            },
        },
    }


def weights(path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resumed_run_equals_the_straight_run_with_gan_and_lpips(sample_data, tmp_path, lpips_files):  # noqa: F811
    vgg, lin, _ = lpips_files
    cfg = config(
        sample_data,
        pixel_loss="l1",
        perceptual_weight=1.0,
        lpips_vgg16=str(vgg),
        lpips_lin=str(lin),
        disc_weight=0.8,
        disc_start=2,
        disc_ndf=8,
        disc_layers=2,
    )
    tc, inputs = train_config(Config(cfg))
    s = train_to_dir(tc, inputs, str(tmp_path / "straight"))
    rows = [r for r in s["history"] if "recon" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert "d_loss" not in rows[0] and rows[2]["d_weight"] > 0 and "d_loss" in rows[2]  # GAN from disc_start on
    assert s["eval_images"] == 4 and s["psnr"] > s["untrained_psnr"] and s["perplexity"] >= 1
    assert validate_dataset(str(tmp_path / "straight")) == []
    # a second run that starts from the step-3 checkpoint ends identical, bit for bit
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(
        tmp_path / "straight" / "checkpoints" / "step-000003", tmp_path / "resumed" / "checkpoints" / "step-000003"
    )
    tc.resume = True
    r = train_to_dir(tc, inputs, str(tmp_path / "resumed"))
    assert r["resumed_at"] == 3 and same_weights(
        tmp_path / "straight" / "vqvae.ckpt", tmp_path / "resumed" / "vqvae.ckpt"
    )
    a = torch.load(tmp_path / "straight" / "train_state.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "train_state.pt", weights_only=True)
    assert all(torch.equal(a["disc"][k], b["disc"][k]) for k in a["disc"]) and a["data"] == b["data"]
    assert [h for h in a["history"] if "recon" in h] == [h for h in b["history"] if "recon" in h]
    # other settings than the run's own are refused, naming the key
    tc.lr = 0.001
    with pytest.raises(ConfigError, match="vqvae.train.lr.*was trained with 0.003; set resume: false"):
        train_to_dir(tc, inputs, str(tmp_path / "resumed"))


def test_bad_training_settings_are_one_line_errors(sample_data, tmp_path):
    for key, value, match in [
        ("pixel_loss", "l2", "vqvae.train.pixel_loss': got 'l2'"),
        ("stpes", 3, "vqvae.train.stpes"),
        ("disc_layers", 9, "vqvae.train.disc_layers"),
        ("device", "tpu", "vqvae.train.device"),
    ]:
        with pytest.raises(ConfigError, match=match):
            train_config(Config(config(sample_data, **{key: value})))
    tc, inputs = train_config(Config(config(sample_data, perceptual_weight=1.0)))
    with pytest.raises(ConfigError, match="vqvae.train.lpips_vgg16.*needs the lpips_vgg16 and lpips_lin"):
        train_to_dir(tc, inputs, str(tmp_path / "x"))


def torchrun(cfg_path, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "jamdata.cli",
        "vqvae",
        "train",
        "--config",
        str(cfg_path),
        "--out",
        str(out),
        *extra,
    ]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout + p.stderr


@pytest.mark.slow
def test_two_processes_under_torchrun_train_one_model_and_resume_exactly(sample_data, tmp_path):
    cfg = config(sample_data, steps=4, checkpoint_every=2, disc_weight=0.5, disc_start=1, disc_ndf=8, disc_layers=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = torchrun(tmp_path / "c.yaml", tmp_path / "two")
    assert out.count("codes used (perplexity") == 1 and out.count("untrained: mse") == 1  # rank 0 alone reports
    s = read_manifest(str(tmp_path / "two"))["summary"]
    assert s["processes"] == 2 and len(s["rank_weight_sums"]) == 2 and len(set(s["rank_weight_sums"])) == 1
    state = torch.load(tmp_path / "two" / "train_state.pt", weights_only=True)
    p0, p1 = (d["position"] for d in state["data"])
    assert p0 != p1 or state["rng"][0].ne(state["rng"][1]).any()  # each rank its own data and randomness
    (tmp_path / "again" / "checkpoints").mkdir(parents=True)
    shutil.copytree(
        tmp_path / "two" / "checkpoints" / "step-000002", tmp_path / "again" / "checkpoints" / "step-000002"
    )
    torchrun(tmp_path / "c.yaml", tmp_path / "again", "--resume")
    assert read_manifest(str(tmp_path / "again"))["summary"]["resumed_at"] == 2
    assert same_weights(tmp_path / "two" / "vqvae.ckpt", tmp_path / "again" / "vqvae.ckpt")


def test_the_same_recipe_twice_gives_the_same_dataset_bytes(sample_data, tmp_path):
    """No wall time or other per-run value in the dataset: manifest, log and weights repeat exactly."""
    tc, inputs = train_config(Config(config(sample_data, steps=2, checkpoint_every=0)))
    out = tmp_path / "vqvae"
    runs = []
    for _ in range(2):  # the same output directory: it is named inside the dataset
        assert train_to_dir(tc, inputs, str(out))["seconds"] >= 0  # the summary line still has it
        runs.append({p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert Path("manifest.json") in runs[0] and Path("train_log.json") in runs[0]
    assert runs[0].keys() == runs[1].keys()
    assert [str(f) for f in runs[0] if runs[0][f] != runs[1][f]] == []
