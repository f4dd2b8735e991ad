"""`jamtrain train` on a JAM-Cross fused at start-up from two imported Hugging Face LLaMAs whose
vocabularies are only the text pieces (`extend_vocab: true` adds the special and image rows):
it trains on CPU, and a run killed after step 3 resumes from step 2 with the same losses step for
step, which needs the extension (and so the rebuilt model) to be deterministic. The model section
names no architecture keys (its preset says 2 x 64): the model, the sequence-length check and the
FLOPs per token behind MFU all follow the parents (1 x 32)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import torch
import transformers

from jamtrain.models.hf import import_checkpoint
from jamtrain.sizing import flops_per_token
from test_train_data import VOCAB, write_config
from test_train_run import data, jamtrain, losses  # noqa: F401  (data is a fixture)

ARCH = {
    "n_layers": 1,
    "d_model": 32,
    "n_heads": 2,
    "n_kv_heads": 1,
    "d_ff": 64,
    "max_seq_len": 64,
    "norm": "rmsnorm",
    "activation": "swiglu",
    "positions": "rotary",
}


def imported_parent(root: Path, name: str, seed: int) -> Path:
    """A random LLaMA with the data's text vocabulary, saved by transformers and imported."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB.text_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(root / f"hf-{name}")
    out = root / f"{name}.safetensors"
    import_checkpoint(str(root / f"hf-{name}"), out)
    return out


def test_cross_of_imported_parents_trains_and_resumes_exactly(data, tmp_path):
    model = {
        "preset": "tiny",
        "fusion": "cross",
        "text_checkpoint": str(imported_parent(tmp_path, "text", 1)),
        "image_checkpoint": str(imported_parent(tmp_path, "image", 2)),
        "extend_vocab": True,
        "n_image_codes": VOCAB.n_image_codes,
    }
    ref = write_config(tmp_path / "ref.yaml", data, tmp_path / "ref", model=model, steps=4, save_every=2)
    r = jamtrain("train", "--config", str(ref))
    assert r.returncode == 0, r.stdout + r.stderr
    n = int(re.search(r"model ([\d,]+) parameters", r.stdout).group(1).replace(",", ""))
    fpt = float(re.search(r"; (\S+) training FLOPs per token", r.stdout).group(1))
    assert f"architecture from parent {model['text_checkpoint']}: 1 layers x 32" in r.stdout
    # 6N + 12 x (2 streams x 1 layer + 2 directions x 1 cross block) x width 32 x 32 positions
    assert fpt == pytest.approx(6 * n + 12 * 4 * 32 * 32, rel=1e-6)
    assert fpt == pytest.approx(flops_per_token(n, {**ARCH, "fusion": "cross"}, VOCAB.size, 32), rel=1e-6)
    want = losses(tmp_path / "ref")
    assert sorted(want) == [1, 2, 3, 4] and all(v > 0 for v in want.values())
    assert (tmp_path / "ref" / "export" / "model.safetensors").exists()

    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "run", model=model, steps=4, save_every=2)
    r = jamtrain("train", "--config", str(cfg), fault="kill-after-step:3")
    assert r.returncode == -signal.SIGKILL
    r = jamtrain("train", "--config", str(cfg), "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed from" in r.stdout and "step-00000002 (step 2)" in r.stdout
    assert losses(tmp_path / "run") == want  # exactly equal, step for step
