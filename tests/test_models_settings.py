"""The `train.model` section as settings: presets and overrides, the section a run records, and
each kind of mistake ending in one line naming `train.model.<key>` from both command lines."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jamdata.config import Config, ConfigError
from jamtrain.building import model_for_vocab
from jamtrain.models import ModelSettings, backbone_config, build_model, model_settings
from jamtrain.settings import parse_settings
from test_train_data import REPO, VOCAB

DEMO = REPO / "configs" / "demo.yaml"
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}


def test_preset_with_overrides_resolves_as_documented():
    small = backbone_config(model_settings({"preset": "small"}), 100)
    assert (small.n_layers, small.d_model, small.n_heads, small.d_ff, small.max_seq_len) == (12, 768, 12, 3072, 2048)
    # d_model without d_ff: d_ff follows it (4x); the other sizes stay the preset's
    wide = backbone_config(model_settings({"preset": "small", "d_model": 512, "n_heads": 8}), 100)
    assert (wide.n_layers, wide.d_model, wide.n_heads, wide.d_ff, wide.max_seq_len) == (12, 512, 8, 2048, 2048)
    given = backbone_config(model_settings({"preset": "small", "d_model": 512, "n_heads": 8, "d_ff": 1000}), 100)
    assert given.d_ff == 1000
    # a cross-key check names the key its message is about
    with pytest.raises(ConfigError, match="'train.model.d_model'.*512 is not divisible by n_heads 12"):
        backbone_config(model_settings({"preset": "small", "d_model": 512}), 100)


def test_settings_record_the_section_as_written(tmp_path):
    section = {"preset": "tiny", "fusion": "cross", "n_layers": 2, "d_model": 48, "n_heads": 4}
    ms = model_settings(section)
    assert ms.to_dict() == section and list(ms.to_dict()) == list(section)
    assert ms.cross_every == 1 and ms.text_rows is None  # defaults are read, not recorded
    pinned = model_for_vocab(ms, VOCAB)  # JAM-Cross: text rows pinned to the data's vocabulary
    assert pinned.to_dict() == {**section, "text_rows": VOCAB.image_offset}
    assert model_settings(pinned.to_dict()) == pinned  # what a checkpoint's meta rebuilds
    assert model_settings(ms) is ms
    assert ModelSettings().to_dict() == {}
    cfg = Config({"train": {"model": dict(section)}, "loader": {"mixture": {"a": 1.0}}})
    assert parse_settings(cfg, out_dir=tmp_path).model.to_dict() == section


@pytest.mark.parametrize(
    "mistake, message",
    [
        ({"n_layer": 2}, "'train.model.n_layer': unknown key"),
        ({"n_layers": "two"}, "'train.model.n_layers': must be int or null, got 'two'"),
        ({"uniform_weight": 1.5}, "'train.model.uniform_weight': must be a number in [0, 1], got 1.5"),
        ({"fusion": "deep"}, "'train.model.fusion': got 'deep'"),
        ({"fusion": "cross", "n_layers": 2, "cross_every": 3}, "'train.model.cross_every': 3 must divide n_layers 2"),
        ({"fusion": "cross", "cross_heads": 5}, "'train.model.cross_heads': 5 must divide d_model 64"),
        ({"fusion": "width", "text_checkpoint": "t.safetensors"}, "'train.model.image_checkpoint'"),
    ],
)
def test_model_mistakes_name_the_key(mistake, message):
    with pytest.raises(ConfigError) as e:
        build_model(mistake, VOCAB.size)
    assert message in str(e.value) and "\n" not in str(e.value)


CLI_MISTAKES = [
    ("train.model.n_layer=2", "train.model.n_layer"),
    ("train.model.n_layers=two", "train.model.n_layers"),
    ("train.model.n_heads=0", "train.model.n_heads"),
    ("train.model.fusion=deep", "train.model.fusion"),
]


def _one_line(r: subprocess.CompletedProcess, prog: str, needle: str) -> None:
    assert r.returncode != 0, r.stdout[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1 and needle in lines[0], r.stderr[-3000:]


@pytest.mark.parametrize("item, needle", CLI_MISTAKES, ids=[n for _, n in CLI_MISTAKES])
def test_jamdata_run_refuses_a_model_mistake_in_one_line(tmp_path, capsys, item, needle):
    """The whole main job: the mistake in the last stage's section ends it before the first stage
    (in this process; the command line as a process is the next test)."""
    from jamdata.cli import main

    out = tmp_path / "run"
    assert main(["run", "--config", str(DEMO), "--out", str(out), "--set", item]) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("jamdata: error:")]
    assert len(lines) == 1 and needle in lines[0], lines
    assert not (out / "text-clean").exists() and not (out / "train").exists()


def test_jamdata_run_command_refuses_a_model_mistake_in_one_line(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--config", str(DEMO), "--out", str(out), "--set", CLI_MISTAKES[0][0]]
    r = subprocess.run([sys.executable, "-m", "jamdata.cli", *args], cwd=REPO, env=ENV, capture_output=True, text=True)
    _one_line(r, "jamdata", CLI_MISTAKES[0][1])
    assert not (out / "text-clean").exists()


@pytest.mark.parametrize("item, needle", CLI_MISTAKES[::3], ids=[n for _, n in CLI_MISTAKES[::3]])
def test_jamtrain_refuses_a_model_mistake_in_one_line(tmp_path, item, needle):
    args = ["train", "--config", str(DEMO), "--dry-run", "--out", str(tmp_path / "t"), "--set", item]
    r = subprocess.run([sys.executable, "-m", "jamtrain.cli", *args], cwd=REPO, env=ENV, capture_output=True, text=True)
    _one_line(r, "jamtrain", needle)
