"""The Beam builder end to end on the bundled sample sources with a real (tiny, untrained) VQ-VAE:
shards, manifest, rejects, determinism across worker counts, and the HTML page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jamdata.config import Config
from jamdata.formats.wds import iter_samples
from jamdata.interleaved.build import BuildSpec
from jamdata.interleaved.cm3 import cm3_inverse
from jamdata.manifest import read_manifest, validate_dataset
from jamdata.vocab import JointVocab
from pipelines.instruct_build import build

N_CODES = 256


@pytest.fixture(scope="module")
def vqvae_dir(tmp_path_factory):
    import torch

    from jamdata.image.vqvae import build_vqvae, save_checkpoint

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("vqvae")
    save_checkpoint(build_vqvae("tiny-64px-f4"), d)
    return str(d)


def section_for(sample_data: Path) -> dict:
    root = sample_data / "instruct"
    return {
        "sources": [
            {"format": "howto", "paths": [str(root / "howto")]},
            {"format": "conversation", "paths": str(root / "conversations")},
            {
                "format": "mmc4",
                "paths": str(root / "mmc4" / "docs.jsonl"),
                "image_store": str(root / "mmc4" / "image-store"),
            },
        ],
        "template": {"max_len": 1024},
        "cm3": {"sources": ["mmc4"], "rate": 1.0},
        "num_shards": 2,
        "image_min_size": 32,
    }


def read_all(root: str) -> dict:
    out = {}
    for shard in read_manifest(root)["shards"]:
        for s in iter_samples(f"{root}/{shard['path']}"):
            out[s.key] = s.decoded()
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_data, sp_model_path, vqvae_dir):
    """Through the main-job entry point, as `jamdata run` calls it."""
    from pipelines.stages import StageContext
    from pipelines.instruct_build import run_stage

    out = tmp_path_factory.mktemp("run")
    section = dict(section_for(sample_data), tokenizer=str(sp_model_path), vqvae=vqvae_dir)
    cfg = Config({"run": {"seed": 5}, "vqvae": {"codebook_size": N_CODES}, "instruct": section})
    lines = run_stage(StageContext(cfg, out, workers=1))
    assert lines[0].startswith("18 interleaved samples (conversation 5, howto 8, mmc4 5)")
    assert lines[1].startswith("13 rejects")
    return out, BuildSpec.from_config(Config(section), seed=5)


def test_pipeline_outputs(built, sp_model_path, vqvae_dir):
    out, spec = built
    root = str(out / "instruct")
    assert validate_dataset(root) == []
    m = read_manifest(root)
    assert m["kind"] == "interleaved" and m["vocab"]["n_image_codes"] == N_CODES
    vocab = JointVocab.from_dict(m["vocab"])
    samples = read_all(root)
    assert m["summary"]["sources"] == {"conversation": 5, "howto": 8, "mmc4": 5}
    assert len(samples) == 18 == m["totals"]["records"]
    assert m["totals"]["tokens"] == sum(len(s["tokens.npy"]) for s in samples.values())
    from jamdata.image.vqvae import load_vqvae
    from jamdata.interleaved.images import load_pixels
    from jamdata.interleaved.document import ImageRef
    import torch

    model = load_vqvae(vqvae_dir)
    for key, s in samples.items():
        t, lm, layout = s["tokens.npy"], s["loss_mask.npy"], s["json"]
        assert t.dtype == np.int32 and lm.dtype == np.uint8 and len(t) == len(lm) <= 1024
        if layout["cm3"]:
            t, lm = cm3_inverse(t, vocab, lm)
        for seg in layout["segments"]:
            if seg["modality"] != "image":
                continue
            a = seg["start"] + int(seg["break"])
            span = t[a : seg["start"] + seg["length"]]
            assert (seg["h"], seg["w"]) == (16, 16) and len(span) == 16 * 16 + 2
            assert span[0] == vocab.boi_id and span[-1] == vocab.eoi_id
        if key == "howto-plant-a-bean-seed":  # the codes are the real VQ-VAE's codes of the file
            seg = next(x for x in layout["segments"] if x["modality"] == "image")
            px = load_pixels(
                ImageRef(
                    "x",
                    path=str(Path(__file__).parent.parent / "sample_data" / "instruct" / "howto" / seg["image_ref"]),
                ),
                64,
                32,
            )
            codes = model.encode(torch.from_numpy(px[None]))[0].numpy().ravel()
            a = seg["start"] + int(seg["break"]) + 1
            np.testing.assert_array_equal(t[a : a + 256], vocab.image_ids(codes))
    # every sample is a valid INTERLEAVED record
    from jamdata.interleaved.build import interleaved_record
    from schemas.records import INTERLEAVED, validate_record, to_table

    rows = [interleaved_record(s) for s in samples.values()]
    for r in rows:
        validate_record(r, INTERLEAVED, where=r["key"])
    assert to_table(rows, INTERLEAVED).num_rows == 18
    # mmc4 samples are CM3-masked and invert exactly; how-to samples are not
    assert all(s["json"]["cm3"] for k, s in samples.items() if k.startswith("mmc4-"))
    assert not any(s["json"]["cm3"] for k, s in samples.items() if not k.startswith("mmc4-"))


def test_pipeline_rejects(built):
    out, _ = built
    rej = str(out / "instruct-rejects")
    assert validate_dataset(rej) == []
    rows = pq.read_table(f"{rej}/{read_manifest(rej)['shards'][0]['path']}").to_pylist()
    reasons = {r["id"]: r["reason"] for r in rows}
    assert "does-not-exist.png" in reasons["howto-bad-missing-image"]
    assert "undecodable" in reasons["howto-bad-corrupt-image"]
    assert any(r == "article has no steps" for r in reasons.values())
    assert any("unknown role 'moderator'" in r for r in reasons.values())
    assert any("matched_text_index 5 out of range" in r for r in reasons.values())
    assert any(k.endswith("/img2") and "never fetched" in r for k, r in reasons.items())
    # truncated samples are kept and what they lost is recorded
    assert any(k.endswith("/truncation") for k in reasons)
    assert all(r["stage"] == "instruct" and r["file"] for r in rows)


@pytest.mark.slow
def test_byte_identical_with_two_workers(built, tmp_path, sample_data, sp_model_path, vqvae_dir):
    out1, spec = built
    out2 = tmp_path / "two"
    build(spec, str(out2 / "instruct"), str(out2 / "instruct-rejects"), str(sp_model_path), vqvae_dir, N_CODES, 2)
    for name in ("instruct", "instruct-rejects"):
        m1, m2 = read_manifest(str(out1 / name)), read_manifest(str(out2 / name))
        assert [(s["path"], s["sha256"]) for s in m1["shards"]] == [(s["path"], s["sha256"]) for s in m2["shards"]]
        for s in m1["shards"]:
            assert (out1 / name / s["path"]).read_bytes() == (out2 / name / s["path"]).read_bytes()


def test_show_renders_html(built, tmp_path):
    from jamdata.cli import main

    out, _ = built
    page = tmp_path / "page.html"
    assert main(["instruct", "show", str(out / "instruct"), "--out", str(page), "-n", "40"]) == 0
    text = page.read_text()
    assert text.count("<div class='sample'>") == 18
    assert "How to Plant a Bean Seed" in text and "Step 1: Press the seed" not in text  # steps numbered in order
    assert "Step 2: Press the seed two centimetres into the soil." in text
    assert text.count("data:image/png;base64,") >= 20
    assert "class='off'" in text and "cm3" in text and "images decoded with the VQ-VAE" in text
    bad = main(["instruct", "show", str(out / "instruct-rejects"), "--out", str(tmp_path / "x.html")])
    assert bad == 1


def test_instruct_mix_config_feeds_the_loader(built, tmp_path):
    """configs/instruct-mix.yaml over the built instruct dataset plus image-caption and text-only
    datasets of the same vocabulary: the realised row shares are 45/45/10 and instruction rows keep
    the prompt out of the loss."""
    from jamdata.loader import build_loader
    from jamdata.loader.testing import make_tars, make_text_tokens

    out, _ = built
    vocab = JointVocab.from_dict(read_manifest(str(out / "instruct"))["vocab"])
    cfg = Config.load(str(Path(__file__).parent.parent / "configs" / "instruct-mix.yaml"))
    make_text_tokens(tmp_path / "text-tokens", {"c4": [200]}, vocab=vocab)
    make_tars(tmp_path / "image-caption", "image_caption", [100], vocab=vocab, grid=16)
    loader_cfg = cfg.section("loader")
    loader_cfg.set(
        "paths",
        {
            "instruct": str(out / "instruct"),
            "image-caption": str(tmp_path / "image-caption"),
            "text-tokens": str(tmp_path / "text-tokens"),
        },
    )
    from jamdata.loader import dataset_dirs

    loader = build_loader(loader_cfg, dataset_dirs(cfg))
    names = loader.dataset_names
    counts = dict.fromkeys(names, 0)
    it = iter(loader)
    for _ in range(10):  # 10 steps x 8 rows = 4 mixture periods of 20 rows
        batch = next(it)
        for row, d in enumerate(batch["dataset_index"].tolist()):
            counts[names[d]] += 1
            if names[d] == "instruct":
                keys = batch["keys"][row]
                toks, lm = batch["tokens"][row], batch["loss_mask"][row]
                assert all(k.split("-")[0] in ("howto", "conv", "mmc4") for k in keys)
                assert toks[0] == vocab.bos_id and not lm[0]
    assert counts == {"instruct": 36, "image-caption": 36, "text-tokens": 8}
