"""The image-caption Beam pipeline: bad input matrix, token layout, determinism, other input formats."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jamdata.formats.wds import iter_samples
from jamdata.image.samples import CAPTION_FIRST, IMAGE_FIRST, split_tokens
from jamdata.image.vqvae import build_vqvae, save_checkpoint
from jamdata.manifest import read_manifest, validate_dataset
from jamdata.text.tokenizer import TextTokenizer
from pipelines.image_tokenize import ImageSettings, tokenize_images
from tests import test_image_inputs as ii

CAPTION = "A picture number {}"


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tar.addfile(ti, io.BytesIO(data))


def sample(tar, key, image: bytes | None, caption: str | None, ext="jpg"):
    if image is not None:
        add(tar, f"{key}.{ext}", image)
    if caption is not None:
        add(tar, f"{key}.txt", caption.encode())
    add(tar, f"{key}.json", json.dumps({"key": key, "url": f"http://example.com/{key}.{ext}"}).encode())


BAD = {  # key -> (image, ext, expected outcome: reject reason or "ok")
    "b_truncated": (ii.truncated_jpeg, "jpg", "undecodable"),
    "b_zero": (lambda: b"", "jpg", "empty_file"),
    "b_text": (lambda: b"hello, I am text\n", "jpg", "undecodable"),
    "b_tiny": (lambda: ii.encode(ii.Image.new("RGB", (1, 1)), "PNG"), "png", "too_small"),
    "b_bomb": (ii.png_header_bomb, "png", "too_large"),
    "c_cmyk": (ii.cmyk_jpeg, "jpg", "ok"),
    "c_rgba": (ii.rgba_png, "png", "ok"),
    "c_png16": (ii.png16, "png", "ok"),
    "c_gif": (ii.animated_gif, "gif", "ok"),
    "c_webp": (lambda: ii.encode(ii.scene(5), "WEBP"), "webp", "ok"),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    with tarfile.open(d / "shard-a.tar", "w") as tar:
        for i in range(6):
            sample(tar, f"good{i}", ii.jpeg(i), CAPTION.format(i))
        for key, (make, ext, _) in BAD.items():
            sample(tar, key, make(), f"caption of {key}", ext)
        sample(tar, "b_nocaption", ii.jpeg(20), None)
        sample(tar, "b_blankcaption", ii.jpeg(21), "   \n")
        sample(tar, "good0", ii.jpeg(99), "a duplicate key later in the shard")
        add(tar, "b_noimage.txt", b"only a caption")
    with tarfile.open(d / "shard-b.tar", "w") as tar:
        for i in range(6, 9):
            sample(tar, f"good{i}", ii.jpeg(i), CAPTION.format(i))
    with tarfile.open(d / "shard-b.tar") as tar:
        last = tar.getmember("good8.jpg")
    data = (d / "shard-b.tar").read_bytes()
    (d / "shard-b.tar").write_bytes(data[: last.offset_data + last.size // 2])  # cut inside good8.jpg
    return d


@pytest.fixture(scope="module")
def vqvae_dir(tmp_path_factory):
    torch.manual_seed(0)
    m = build_vqvae("tiny-64px-f4", n_embed=64)
    with torch.no_grad():
        m.quantize.embedding.weight.normal_(0, 0.3)
    d = tmp_path_factory.mktemp("vqvae")
    save_checkpoint(m, d)
    return d


def settings(**kw):
    base = dict(resolution=32, min_size=16, max_aspect=3.0, batch_size=4, num_shards=2, seed=7)
    return ImageSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def run1(inputs, vqvae_dir, sp_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("run1")
    summary = tokenize_images(
        [str(inputs)], str(out / "ic"), str(out / "rej"), str(vqvae_dir), str(sp_model_path), settings()
    )
    return out, summary


def samples(root: Path) -> dict:
    out = {}
    for shard in read_manifest(str(root))["shards"]:
        for s in iter_samples(str(root / shard["path"])):
            out[s.key] = s.decoded()
    return out


def test_bad_inputs_rejected_with_reasons_or_converted(run1, inputs):
    out, summary = run1
    got = samples(out / "ic")
    rejects = pq.read_table(out / "rej" / "part-00000.parquet").to_pylist()
    by_key = {}
    for r in rejects:
        by_key.setdefault(r["id"].split("@")[0], []).append(r)
    for key, (_, _, outcome) in BAD.items():
        if outcome == "ok":
            assert key in got, key
        else:
            assert [r["reason"] for r in by_key[key]] == [outcome], key
            assert by_key[key][0]["file"].endswith("shard-a.tar") and by_key[key][0]["stage"] == "images"
    assert by_key["b_nocaption"][0]["reason"] == "empty_caption"
    assert by_key["b_blankcaption"][0]["reason"] == "empty_caption"
    assert by_key["b_noimage"][0]["reason"] == "missing_image"
    dup = by_key["good0"]
    assert len(dup) == 1 and dup[0]["reason"] == "duplicate_key" and "good0" in got
    assert got["good0"]["json"]["caption"] == CAPTION.format(0)  # the first occurrence is kept
    trunc = [r for r in rejects if r["reason"] == "truncated_shard"]
    assert len(trunc) == 1 and trunc[0]["file"].endswith("shard-b.tar")
    # nothing else lost: every complete good sample, including those before the damage
    assert {f"good{i}" for i in range(8)} <= set(got) and "good8" not in got
    n_ok = sum(o == "ok" for *_, o in BAD.values())
    assert summary["samples"] == len(got) == n_ok + 8
    assert summary["rejects"]["rejects"] == len(rejects)
    assert validate_dataset(str(out / "ic")) == [] and validate_dataset(str(out / "rej")) == []


def test_sample_content_and_token_layout(run1, sp_model_path, vqvae_dir):
    out, summary = run1
    tok = TextTokenizer(str(sp_model_path), 64)
    v = tok.vocab
    manifest = read_manifest(str(out / "ic"))
    assert manifest["kind"] == "image_caption" and manifest["vocab_fingerprint"] == v.fingerprint
    orders = set()
    for key, s in samples(out / "ic").items():
        meta, codes, cap, tokens = s["json"], s["image_codes.npy"], s["caption_ids.npy"], s["tokens.npy"]
        assert codes.dtype == np.uint16 and codes.shape == (8, 8)
        assert tokens.dtype == np.int32 and cap.dtype == np.int32
        assert list(cap) == tok.encode(meta["caption"])
        c2, flat, order = split_tokens(tokens, v)
        assert order == meta["order"] and list(c2) == list(cap)
        assert np.array_equal(flat.reshape(8, 8), codes.astype(np.int64))
        assert tokens[-1] == v.eos_id and (tokens == v.break_id).sum() == 1
        assert len(tokens) == len(cap) + 64 + 4
        assert meta["original_key"] == key and meta["url"].startswith(f"http://example.com/{key}.")
        orders.add(order)
    assert orders == {CAPTION_FIRST, IMAGE_FIRST}
    s = manifest["summary"]
    assert sum(s["codebook_histogram"]) == s["image_tokens"] == 64 * s["samples"]
    assert s["tokens"] == manifest["totals"]["tokens"] and s["grid"] == [8, 8]
    # codes are what the model gives for the preprocessed picture
    from jamdata.image.preprocess import preprocess_image
    from jamdata.image.vqvae import load_vqvae

    arr, _ = preprocess_image(ii.jpeg(3), 32, 16)
    want = load_vqvae(vqvae_dir).encode(torch.from_numpy(arr[None]))[0].numpy()
    assert np.array_equal(samples(out / "ic")["good3"]["image_codes.npy"], want)


def test_plain_webdataset_reads_shards(run1):
    import webdataset as wds

    out, _ = run1
    tars = sorted(str(p) for p in (out / "ic").glob("*.tar"))
    rows = list(wds.WebDataset(tars, shardshuffle=False).decode())
    assert len(rows) == run1[1]["samples"]
    r = rows[0]
    assert r["image_codes.npy"].shape == (8, 8) and r["json"]["caption"]


@pytest.mark.slow
def test_one_and_two_workers_byte_identical(run1, inputs, vqvae_dir, sp_model_path, tmp_path):
    out1, _ = run1
    tokenize_images(
        [str(inputs)],
        str(tmp_path / "ic"),
        str(tmp_path / "rej"),
        str(vqvae_dir),
        str(sp_model_path),
        settings(),
        workers=2,
    )
    for sub in ("ic", "rej"):
        a = sorted(p.relative_to(out1 / sub) for p in (out1 / sub).rglob("*") if p.suffix in (".tar", ".parquet"))
        b = sorted(
            p.relative_to(tmp_path / sub) for p in (tmp_path / sub).rglob("*") if p.suffix in (".tar", ".parquet")
        )
        assert a == b and a
        for rel in a:
            assert (out1 / sub / rel).read_bytes() == (tmp_path / sub / rel).read_bytes(), rel


def test_jsonl_and_parquet_inputs(tmp_path, vqvae_dir, sp_model_path):
    (tmp_path / "imgs").mkdir()
    rows = []
    for i in range(3):
        (tmp_path / "imgs" / f"p{i}.jpg").write_bytes(ii.jpeg(30 + i))
        rows.append({"key": f"j{i}", "image_path": f"imgs/p{i}.jpg", "caption": f"jsonl caption {i}"})
    rows.append({"key": "j_missing", "image_path": "imgs/nope.jpg", "caption": "gone"})
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    table = pa.table(
        {
            "id": ["q0", "q1"],
            "text": ["parquet caption 0", "parquet caption 1"],
            "image": [{"bytes": ii.jpeg(40), "path": None}, {"bytes": ii.jpeg(41), "path": None}],
        }
    )
    pq.write_table(table, tmp_path / "pairs.parquet")
    s = tokenize_images(
        [str(tmp_path / "pairs.jsonl"), str(tmp_path / "pairs.parquet")],
        str(tmp_path / "ic"),
        str(tmp_path / "rej"),
        str(vqvae_dir),
        str(sp_model_path),
        settings(num_shards=1),
    )
    got = samples(tmp_path / "ic")
    assert set(got) == {"j0", "j1", "j2", "q0", "q1"}
    assert got["q1"]["json"]["caption"] == "parquet caption 1"
    assert s["rejects"]["reasons"] == {"bad_row": 1, "missing_image": 1}


def test_this_packages_loader_reads_shards(run1, sp_model_path):
    from jamdata.config import Config
    from jamdata.loader import build_loader

    out, summary = run1
    v = TextTokenizer(str(sp_model_path), 64).vocab
    sec = Config(
        {
            "loader": {
                "mixture": {"img": 1.0},
                "seq_len": 128,
                "global_batch_size": 2,
                "shuffle_block": 4,
                "steps_per_epoch": 2,
                "seed": 1,
            }
        }
    ).section("loader")
    loader = build_loader(sec, {"img": str(out / "ic")})
    batch = next(iter(loader))
    toks = batch["tokens"]
    assert toks.shape == (2, 128) and toks.dtype == torch.int32
    assert (toks == v.boi_id).sum() >= 1 and int(toks.max()) < v.size
    assert any(k in samples(out / "ic") for row in batch["keys"] for k in row)


def test_main_job_stages_on_sample_data(tmp_path, vqvae_dir, sp_model_path, sample_data):
    """The two stage functions of the main job, with an imported checkpoint (no training here)."""
    import shutil

    from jamdata.config import Config
    from pipelines.image_tokenize import run_stage
    from pipelines.vqvae_train import run_vqvae_stage
    from pipelines.stages import StageContext

    (tmp_path / "tokenizer").mkdir()
    shutil.copy(sp_model_path, tmp_path / "tokenizer" / "tokenizer.model")
    cfg = Config(
        {
            "run": {"seed": 5},
            "images": {
                "inputs": [str(sample_data / "images" / "shapes-00000.tar")],
                "min_size": 32,
                "batch_size": 16,
                "num_shards": 2,
            },
            "vqvae": {"codebook_size": 64, "model": "tiny-64px-f4", "checkpoint": str(vqvae_dir)},
        }
    )
    ctx = StageContext(cfg, tmp_path)
    assert "imported" in run_vqvae_stage(ctx)[0]
    assert read_manifest(str(tmp_path / "vqvae"))["kind"] == "vqvae"
    lines = run_stage(ctx)
    assert lines[0].startswith("64 samples") and "too_small" in lines[1] and "empty_caption" in lines[1]
    got = samples(tmp_path / "image-caption")
    assert got["000000003"]["image_codes.npy"].shape == (16, 16)
    assert "triangle" in got["000000003"]["json"]["caption"]
    bad = Config({"vqvae": {"codebook_size": 8192, "checkpoint": str(vqvae_dir)}})
    with pytest.raises(ValueError, match="vqvae.codebook_size"):
        run_vqvae_stage(StageContext(bad, tmp_path / "other"))
