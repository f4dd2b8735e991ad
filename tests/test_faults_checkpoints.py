"""Checkpoints are loaded without running code from them and checked against their manifests:
VQ-VAE checkpoints (our own, taming / Chameleon / Lightning layouts), the trainer's per-rank state
files and DeepSpeed's own files. A file holding a pickled call (`os.system(...)`) is refused with
one line naming the file and the global, and the call never runs."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from jamdata.errors import USER_ERRORS
from jamdata.image.vqvae import CheckpointError, build_vqvae, load_vqvae, save_checkpoint
from jamdata.io import sha256_file
from jamdata.safe_load import load_weights_only
from jamtrain import checkpoint as ckpt

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


class Exploit:
    """Unpickles as a call: `os.system(command)` (or any other function)."""

    def __init__(self, command: str, func=os.system):
        self.command, self.func = command, func

    def __reduce__(self):
        return (self.func, (self.command,))


def touch(path: Path) -> str:
    return f"touch {path}"


def tiny_vqvae(seed: int = 0):
    torch.manual_seed(seed)
    m = build_vqvae("tiny-64px-f4", n_embed=64).eval()
    with torch.no_grad():
        m.quantize.embedding.weight.normal_(0, 0.3)
    return m


def one_line(e: BaseException, *parts: str) -> str:
    msg = str(e)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, (p, msg)
    return msg


# -- VQ-VAE checkpoints: unpickling ----------------------------------------------------------------
@pytest.mark.parametrize("func", [os.system, subprocess.call], ids=["os.system", "subprocess.call"])
def test_vqvae_checkpoint_with_pickled_code_is_refused_before_it_runs(tmp_path, func):
    m = tiny_vqvae()
    save_checkpoint(m, tmp_path)
    ran = tmp_path / "ran"
    command = touch(ran) if func is os.system else ["touch", str(ran)]
    torch.save({"state_dict": m.state_dict(), "callbacks": Exploit(command, func)}, tmp_path / "vqvae.ckpt")
    with pytest.raises(CheckpointError) as e:
        load_vqvae(tmp_path)
    name = "posix.system" if func is os.system else "subprocess.call"
    one_line(e.value, str(tmp_path / "vqvae.ckpt"), "refusing to load", name)
    assert not ran.exists()
    assert isinstance(e.value, USER_ERRORS)  # the CLI prints it as one line, exit 1
    # the file is a real exploit: an unrestricted unpickle runs the command
    torch.load(tmp_path / "vqvae.ckpt", weights_only=False)
    assert ran.exists()


def _pickle_as(monkeypatch, qualified: str, base: type = object) -> type:
    """A class that pickles under `qualified` (e.g. Lightning's ModelCheckpoint) without that
    package installed: the file holds only the name, exactly as the real class writes it."""
    module, _, name = qualified.rpartition(".")
    cls = type(name, (base,), {"__module__": module, "__qualname__": name})
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        monkeypatch.setitem(
            sys.modules,
            ".".join(parts[:i]),
            sys.modules.get(".".join(parts[:i])) or types.ModuleType(".".join(parts[:i])),
        )
    setattr(sys.modules[module], name, cls)
    return cls


def lightning_checkpoint(monkeypatch, model, path: Path, extra: dict | None = None) -> None:
    """The layout of a taming-transformers `last.ckpt` (PyTorch Lightning 1.0): the state dict
    with the GAN-loss weights, epoch/step, callback states keyed by the callback class (a numpy
    scalar among them), optimizer states of both optimizers, hyper-parameters as an AttributeDict."""
    ModelCheckpoint = _pickle_as(monkeypatch, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint")
    AttributeDict = _pickle_as(monkeypatch, "pytorch_lightning.utilities.parsing.AttributeDict", dict)
    sd = OrderedDict((k, v.clone()) for k, v in model.state_dict().items())
    sd["loss.discriminator.main.0.weight"] = torch.zeros(8, 3, 4, 4)
    opt_ae = torch.optim.Adam(model.parameters(), lr=4.5e-6, betas=(0.5, 0.9))
    opt_disc = torch.optim.Adam([sd["loss.discriminator.main.0.weight"]], lr=4.5e-6, betas=(0.5, 0.9))
    blob = {
        "epoch": 12,
        "global_step": 250000,
        "pytorch-lightning_version": "1.0.8",
        "state_dict": sd,
        "callbacks": {
            ModelCheckpoint: {
                "monitor": "val/rec_loss",
                "best_model_score": torch.tensor(0.25),
                "best_model_path": "logs/checkpoints/last.ckpt",
                "current_score": np.float64(0.3),
                "dirpath": "logs/checkpoints",
            }
        },
        "optimizer_states": [opt_ae.state_dict(), opt_disc.state_dict()],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": AttributeDict(embed_dim=16, n_embed=64, ckpt_path=None, ignore_keys=[]),
        **(extra or {}),
    }
    torch.save(blob, path)


def test_taming_lightning_checkpoint_loads(monkeypatch, tmp_path):
    m = tiny_vqvae(1)
    lightning_checkpoint(monkeypatch, m, tmp_path / "last.ckpt")
    monkeypatch.undo()  # loading must not need the classes that wrote it
    loaded = load_vqvae(tmp_path / "last.ckpt", config={"model": {"params": m.params}})
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.equal(loaded.encode(x), m.encode(x))
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_lightning_checkpoint_with_omegaconf_hyper_parameters_loads_them_as_inert_data(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    m = tiny_vqvae(2)
    hp = omegaconf.OmegaConf.create(
        {
            "embed_dim": 16,
            "n_embed": 64,
            "ddconfig": m.params["ddconfig"],
            "lossconfig": {"target": "taming.VQLPIPSWithDiscriminator", "params": None},
        }
    )
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": hp, "epoch": 1}, tmp_path / "m.ckpt")
    loaded = load_vqvae(tmp_path / "m.ckpt", config={"model": {"params": m.params}})
    assert torch.equal(loaded.quantize.embedding.weight, m.quantize.embedding.weight)


def test_checkpoint_naming_an_unknown_class_is_refused_with_its_name(monkeypatch, tmp_path):
    m = tiny_vqvae()
    Custom = _pickle_as(monkeypatch, "mylab.callbacks.ImageLogger")
    torch.save({"state_dict": m.state_dict(), "callbacks": {Custom: {"every": 10}}}, tmp_path / "x.ckpt")
    monkeypatch.undo()
    with pytest.raises(CheckpointError) as e:
        load_vqvae(tmp_path / "x.ckpt", config={"model": {"params": m.params}})
    one_line(e.value, "x.ckpt", "mylab.callbacks.ImageLogger", "not on the allow-list")


# -- VQ-VAE checkpoints: verified against the dataset manifest -------------------------------------
@pytest.fixture()
def vqvae_dataset(tmp_path):
    """A vqvae dataset as the main job's vqvae stage writes it (import of a model directory)."""
    from pipelines.vqvae_train import import_checkpoint

    src = tmp_path / "src"
    save_checkpoint(tiny_vqvae(), src)
    import_checkpoint(str(src), str(tmp_path / "vqvae"), None, 64)
    return tmp_path / "vqvae"


def poison(ckpt_path: Path) -> None:
    """A NaN written over the first weight of the encoder's first convolution, in place: the file
    keeps its size and still loads."""
    weight = torch.load(ckpt_path, weights_only=True)["state_dict"]["encoder.conv_in.weight"]
    data = bytearray(ckpt_path.read_bytes())
    at = data.find(weight.numpy().tobytes())
    assert at > 0
    data[at : at + 4] = np.float32("nan").tobytes()
    ckpt_path.write_bytes(bytes(data))


def test_poisoned_vqvae_in_a_dataset_is_refused_by_hash(vqvae_dataset):
    ck = vqvae_dataset / "vqvae.ckpt"
    assert load_vqvae(vqvae_dataset).n_embed == 64
    poison(ck)
    with pytest.raises(CheckpointError) as e:
        load_vqvae(vqvae_dataset)
    one_line(e.value, str(ck), "sha256 differs from manifest.json")
    # `verify: size` passes the same-size file on; the finite-values check still refuses it
    with pytest.raises(CheckpointError) as e:
        load_vqvae(vqvae_dataset, verify="size")
    one_line(e.value, str(ck), "non-finite values", "encoder.conv_in.weight")


def test_altered_byte_refused_and_truncation_caught_by_size(vqvae_dataset):
    ck = vqvae_dataset / "vqvae.ckpt"
    data = bytearray(ck.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor data: still a loadable checkpoint
    ck.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_vqvae(vqvae_dataset)
    ck.write_bytes(bytes(data[: len(data) - 1000]))
    with pytest.raises(CheckpointError) as e:
        load_vqvae(vqvae_dataset, verify="size")
    one_line(e.value, str(ck), f"{len(data) - 1000} bytes but manifest.json says {len(data)}")


def test_model_file_missing_from_the_manifest_is_refused(vqvae_dataset):
    manifest = json.loads((vqvae_dataset / "manifest.json").read_text())
    manifest["shards"] = [s for s in manifest["shards"] if s["path"] != "vqvae.yaml"]
    (vqvae_dataset / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="vqvae.yaml: not listed in"):
        load_vqvae(vqvae_dataset)


def test_images_and_instruct_stages_verify_the_vqvae(tmp_path, sp_model_path, sample_data):
    """The main job: the vqvae stage imports a model, then its checkpoint is damaged; the images
    and instruct stages refuse it (they used to encode every image to one code and exit 0)."""
    from jamdata.config import Config, ConfigError
    from pipelines import image_tokenize, instruct_build, vqvae_train
    from pipelines.stages import StageContext

    src = tmp_path / "src"
    save_checkpoint(tiny_vqvae(), src)
    (tmp_path / "tokenizer").mkdir()
    shutil.copy(sp_model_path, tmp_path / "tokenizer" / "tokenizer.model")
    root = sample_data / "instruct"
    cfg = {
        "run": {"seed": 5},
        "images": {"inputs": [str(sample_data / "images" / "shapes-00000.tar")], "min_size": 32},
        "vqvae": {"codebook_size": 64, "model": "tiny-64px-f4", "checkpoint": str(src)},
        "instruct": {"sources": [{"format": "conversation", "paths": str(root / "conversations")}]},
    }
    ctx = StageContext(Config(cfg), tmp_path)
    vqvae_train.run_vqvae_stage(ctx)
    ck = tmp_path / "vqvae" / "vqvae.ckpt"
    poison(ck)
    for stage in (image_tokenize.run_stage, instruct_build.run_stage):
        with pytest.raises(CheckpointError) as e:
            stage(ctx)
        one_line(e.value, str(ck), "sha256 differs")
    for section in ("images", "instruct"):
        sized = Config({**cfg, section: {**cfg[section], "verify": "size"}})
        stage = image_tokenize.run_stage if section == "images" else instruct_build.run_stage
        with pytest.raises(CheckpointError, match="non-finite values"):
            stage(StageContext(sized, tmp_path))
        bad = Config({**cfg, section: {**cfg[section], "verify": "none"}})
        with pytest.raises(ConfigError, match=f"{section}.verify"):
            stage(StageContext(bad, tmp_path))
    assert not (tmp_path / "image-caption").exists() and not (tmp_path / "instruct").exists()


# -- trainer state and DeepSpeed files -------------------------------------------------------------
def test_rank_state_loads_weights_only_and_restores_every_generator(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    np.random.standard_normal()  # a cached Gaussian is part of numpy's state
    torch.save(
        {"rank": 0, "step": 4, "loader": {"step": 4, "lanes": {"0": [1, 2]}}, "rng": ckpt.rng_state()},
        tmp_path / ckpt.rank_file(0),
    )
    want = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    state = load_weights_only(tmp_path / ckpt.rank_file(0))  # nothing beyond torch's own allow-list
    ckpt.set_rng_state(state["rng"])
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == want


def test_rank_state_written_before_the_plain_form_still_loads(tmp_path):
    """Earlier rank files hold numpy's state as (name, ndarray, ...): allowed, and restored exactly."""
    legacy = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({"rank": 0, "rng": legacy}, tmp_path / ckpt.rank_file(0))
    ckpt.check_safe(tmp_path)
    want = np.random.standard_normal(2).tolist()
    np.random.seed(1)
    ckpt.set_rng_state(ckpt.read_rank_state(tmp_path, 0)["rng"])
    assert np.random.standard_normal(2).tolist() == want


DS_SCRIPT = r"""
import json, sys
from pathlib import Path
import torch
from jamtrain import checkpoint as ckpt
from jamtrain.distributed import setup_distributed

setup_distributed()
import deepspeed

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config={
    "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "steps_per_print": 10 ** 9,
    "zero_optimization": {"stage": 1}})
out = {}
if sys.argv[1] == "save":
    engine.backward(engine(torch.randn(1, 4)).sum())
    engine.step()
    ckpt.save(engine, Path(sys.argv[2]), 1, 0, 1, {"loader": {"step": 1}, "rng": ckpt.rng_state()}, {})
for path in sys.argv[3:] if sys.argv[1] == "save" else sys.argv[2:]:
    try:
        out[path] = {"step": ckpt.load(engine, Path(path), 0, 1)["step"]}
    except ckpt.CheckpointError as e:
        out[path] = {"error": str(e)}
print("RESULT " + json.dumps(out))
"""

DS_ENV = {
    **os.environ,
    "DS_ACCELERATOR": "cpu",
    "CUDA_VISIBLE_DEVICES": "",
    "OMP_NUM_THREADS": "1",
    "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions")),
    "PYTHONPATH": str(REPO),
}
for _k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    DS_ENV.pop(_k, None)


def run_ds(*args: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", DS_SCRIPT, *args], env=DS_ENV, capture_output=True, text=True, timeout=240, cwd=REPO
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def reseal(path: Path) -> None:
    """What anyone able to write the files can do: recompute COMPLETE.json's sizes and hashes."""
    marker = json.loads((path / ckpt.MARKER).read_text())
    marker["files"] = {
        rel: {"bytes": (path / rel).stat().st_size, "sha256": sha256_file(path / rel)} for rel in marker["files"]
    }
    (path / ckpt.MARKER).write_text(json.dumps(marker))


@pytest.fixture(scope="module")
def deepspeed_checkpoint(tmp_path_factory):
    """A real DeepSpeed (ZeRO-1, CPU) checkpoint saved and resumed by jamtrain.checkpoint."""
    root = tmp_path_factory.mktemp("ds") / "checkpoints"
    tag = root / ckpt.tag_for(1)
    got = run_ds("save", str(root), str(tag))
    assert got == {str(tag): {"step": 1}}  # DeepSpeed's own files pass the weights-only check
    return tag


def tampered(src: Path, dst: Path, name_glob: str, ran: Path) -> Path:
    """A copy of the checkpoint whose file `name_glob` also holds a pickled `touch ran`, resealed."""
    shutil.copytree(src, dst)
    target = next(dst.glob(name_glob))
    blob = torch.load(target, weights_only=False)
    blob["jam_meta_note"] = Exploit(touch(ran))
    torch.save(blob, target)
    reseal(dst)
    assert not ckpt.verify(dst)  # the marker's hashes alone do not protect
    return dst


def test_deepspeed_checkpoint_allow_list_covers_its_files(deepspeed_checkpoint):
    files = sorted(p.name for p in deepspeed_checkpoint.glob("*.pt"))
    assert any("optim_states" in f for f in files) and any("model_states" in f for f in files)
    ckpt.check_safe(deepspeed_checkpoint)
    state = load_weights_only(deepspeed_checkpoint / ckpt.rank_file(0))
    assert state["step"] == 1 and isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)


def test_pickled_code_in_deepspeed_or_rank_files_is_refused_before_it_runs(deepspeed_checkpoint, tmp_path):
    ran_model, ran_rank = tmp_path / "ran-model", tmp_path / "ran-rank"
    model = tampered(deepspeed_checkpoint, tmp_path / "a" / ckpt.tag_for(1), "*model_states.pt", ran_model)
    rank = tampered(deepspeed_checkpoint, tmp_path / "b" / ckpt.tag_for(1), ckpt.rank_file(0), ran_rank)
    got = run_ds("load", str(model), str(rank))
    one_line(got[str(model)]["error"], str(next(model.glob("*model_states.pt"))), "refusing to load", "posix.system")
    one_line(got[str(rank)]["error"], str(rank / ckpt.rank_file(0)), "refusing to load", "posix.system")
    assert not ran_model.exists() and not ran_rank.exists()
    # `jamtrain export` reads the same files through DeepSpeed's converter: refused as well
    r = subprocess.run(
        [str(BIN / "jamtrain"), "export", "--checkpoint", str(model), "--out", str(tmp_path / "x")],
        env=DS_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "refusing to load" in r.stderr and "posix.system" in r.stderr, r.stderr
    assert not ran_model.exists() and not (tmp_path / "x" / "model.safetensors").exists()
