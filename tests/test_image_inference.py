"""VQ-VAE encoding through Beam's RunInference: codes independent of batch-mates (fixed batch
shape), keys carried through the handler, `images.device` cpu and auto giving identical shards,
reduced precision checked against fp32, and the keys of the `images:` section."""

import tarfile

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from jamdata.cli import main
from jamdata.config import Config, ConfigError
from jamdata.image.inference import encode_fixed, resolve_device
from jamdata.image.preprocess import preprocess_image
from jamdata.image.vqvae import load_vqvae
from pipelines.image_shards import CodeMismatchError, precision_summary
from pipelines.image_tokenize import ImageSettings, encode_handler, tokenize_images
from tests import test_image_inputs as ii
from tests.test_image_pipeline import sample, samples, settings, vqvae_dir  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def model_dir(vqvae_dir):
    return vqvae_dir


@pytest.fixture(scope="module")
def images():
    return [preprocess_image(ii.jpeg(i), 32, 16)[0] for i in range(6)]


def test_codes_do_not_depend_on_batch_mates(model_dir, images):
    model = load_vqvae(model_dir)
    together = encode_fixed(model, images[:4], 4)
    alone = [encode_fixed(model, [im], 4)[0] for im in images[:4]]
    others = encode_fixed(model, [images[3], images[5], images[1]], 4)
    for i in range(4):
        assert together[i][0].dtype == np.uint16 and together[i][0].shape == (8, 8)
        assert np.array_equal(together[i][0], alone[i][0]) and together[i][1] is None
    assert np.array_equal(others[0][0], together[3][0]) and np.array_equal(others[2][0], together[1][0])
    assert not np.array_equal(together[0][0], together[1][0])  # different pictures, different codes
    # the same codes as the model's own forward pass on the image alone
    assert np.array_equal(together[2][0], model.encode(torch.from_numpy(images[2][None]))[0].numpy())
    with pytest.raises(ValueError, match="5 images for a batch of 4"):
        encode_fixed(model, images[:5], 4)


def test_run_inference_carries_keys_and_batches(model_dir, images):
    s = ImageSettings(batch_size=4)
    model = load_vqvae(model_dir)
    want = [(f"k{i}", encode_fixed(model, [im], 4)[0][0].tobytes()) for i, im in enumerate(images)]
    with beam.Pipeline() as p:
        got = (
            p
            | beam.Create([(f"k{i}", (im, False)) for i, im in enumerate(images)])
            | RunInference(encode_handler(str(model_dir), s))
            | beam.Map(lambda kv: (kv[0], kv[1].inference[0].tobytes()))
        )
        assert_that(got, equal_to(want))
    assert encode_handler(str(model_dir), s).batch_elements_kwargs() == {"min_batch_size": 4, "max_batch_size": 4}


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="images.device.*no CUDA device"):
            resolve_device("cuda")


def test_reduced_precision_is_checked_against_fp32(model_dir, images):
    """CPU autocast stands in for a GPU's here: the flagged images come back with the number of
    codes that differ from the fp32 codes, and only those."""
    model = load_vqvae(model_dir)
    batch = images[:4]  # bf16 keeps 8 bits of mantissa: a few near-tie codes move
    fp32 = encode_fixed(model, batch, 4)
    low = encode_fixed(model, batch, 4, "bf16", check=[True, False, True, True], autocast_on=("cpu",))
    assert low[1][1] is None
    total = 0
    for i in (0, 2, 3):
        n, differ = low[i][1]
        assert n == 64 and differ == int((low[i][0] != fp32[i][0]).sum())
        total += differ
    assert total > 0
    # by default autocast is for CUDA only: on a CPU, bf16 changes nothing and checks nothing
    same = encode_fixed(model, batch, 4, "bf16", check=[True] * 4)
    assert all(np.array_equal(a[0], b[0]) and b[1] is None for a, b in zip(fp32, same))


def test_code_mismatch_bound():
    ok = precision_summary([10, 640, 6], "fp16", 0.05)
    assert ok["differing_rate"] == round(6 / 640, 6) and ok["checked_images"] == 10
    assert precision_summary([0, 0, 0], "fp32", 0.0)["differing_rate"] == 0.0
    with pytest.raises(CodeMismatchError, match=r"64 of 640 codes \(10.00%\).*images.max_code_mismatch 5.00%"):
        precision_summary([10, 640, 64], "fp16", 0.05)


def test_images_section_keys():
    s = ImageSettings.from_config(Config({"images": {"device": "auto", "precision": "bf16", "check_fraction": 0.1}}))
    assert (s.device, s.precision, s.check_fraction, s.max_code_mismatch) == ("auto", "bf16", 0.1, 0.05)
    with pytest.raises(ConfigError, match="images.encode_groups.*no longer used.*before any shuffle"):
        ImageSettings.from_config(Config({"images": {"encode_groups": 16}}))
    with pytest.raises(ConfigError, match="images.device.*allowed: cpu, cuda, auto"):
        ImageSettings.from_config(Config({"images": {"device": "gpu"}}))
    with pytest.raises(ConfigError, match="images.precision"):
        ImageSettings(precision="fp8")


def _tar(path, prefix: str, seeds) -> str:
    with tarfile.open(path, "w") as tar:
        for i in seeds:
            sample(tar, f"{prefix}{i}", ii.jpeg(i), f"picture {prefix}{i}")
        sample(tar, f"{prefix}bad", b"not an image", "a broken one")
    return str(path)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.suffix in (".tar", ".parquet")}


def test_device_cpu_and_auto_identical_and_batch_mates_do_not_matter(model_dir, sp_model_path, tmp_path):
    x = _tar(tmp_path / "x.tar", "x", range(7))
    y = _tar(tmp_path / "y.tar", "y", range(10, 15))
    runs = {}
    # auto with bf16: on a machine without CUDA both mean the fp32 CPU encoder
    for name, files, device, precision in (
        ("cpu", [x], "cpu", "fp32"),
        ("auto", [x], "auto", "bf16"),
        ("mixed", [y, x], "cpu", "fp32"),
    ):
        out = tmp_path / name
        runs[name] = tokenize_images(
            files,
            str(out / "ic"),
            str(out / "rej"),
            str(model_dir),
            str(sp_model_path),
            settings(batch_size=3, device=device, precision=precision),
        )
    assert runs["cpu"]["samples"] == 7 and runs["cpu"]["rejects"]["reasons"] == {"undecodable": 1}
    cpu, auto = _files(tmp_path / "cpu"), _files(tmp_path / "auto")
    assert len(cpu) == len(auto) == 3
    if not torch.cuda.is_available():  # with a GPU, auto encodes there: other arithmetic, other codes
        assert cpu == auto and runs["auto"]["precision_check"]["checked_codes"] == 0
    # with y's pictures in the same batches, x's samples are still byte for byte the same
    alone, mixed = samples(tmp_path / "cpu" / "ic"), samples(tmp_path / "mixed" / "ic")
    assert set(mixed) == set(alone) | {f"y{i}" for i in range(10, 15)}
    for key, s in alone.items():
        for field, value in s.items():
            assert (value == mixed[key][field]) if field == "json" else np.array_equal(value, mixed[key][field])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(model_dir, sp_model_path, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("images: {resolution: 32, min_size: 16, batch_size: 2, device: cuda}\n")
    x = _tar(tmp_path / "x.tar", "x", range(2))
    code = main(
        [
            "images",
            "tokenize",
            "--config",
            str(tmp_path / "c.yaml"),
            "--vqvae",
            str(model_dir),
            "--tokenizer",
            str(sp_model_path),
            "--out",
            str(tmp_path / "ic"),
            "--inputs",
            x,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("jamdata: error: config key 'images.device': cuda, but this worker")
    assert "Traceback" not in "\n".join(err)
