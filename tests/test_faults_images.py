"""Fault matrix for image and interleaved inputs: one bad record among good ones in the same file
becomes one reject with a reason code (or the run stops with one clear line), and every good record
of that file is still kept.

Paths inside data rows are data, not configuration: they may only name regular files under the
configured roots. Each case plants one hostile or broken row (system file, `..` escape, symlink out,
FIFO, device, oversized file, unknown URL scheme, absurd caption) beside good rows, runs the real
pipeline over real files, and counts what came out. Manifests naming files outside their dataset,
keys shared by two img2dataset collections and shards with altered bytes are checked the same way.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jamdata.config import Config
from jamdata.image.sources import read_source
from jamdata.image.vqvae import build_vqvae, save_checkpoint
from jamdata.io import InputPolicy
from jamdata.manifest import ManifestError, read_manifest, validate_dataset
from tests import test_image_inputs as ii
from tests.test_image_pipeline import sample, samples, settings

GOOD = 3  # good rows in every case file
MAX_IMAGE_BYTES = 64 * 1024  # small, so an oversized file is cheap to make
SECRET = "root:x:0:0"  # first bytes of /etc/passwd: must never reach a reject
WATCHDOG_S = 240


def run_with_watchdog(fn, *args, timeout: float = WATCHDOG_S, **kw):
    """Run fn in a thread; a hang (e.g. a FIFO opened for reading) fails the test instead of
    blocking the suite."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kw)
        except BaseException as e:  # re-raised in the test thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} still running after {timeout}s (hung on an input)")
    if "error" in box:
        raise box["error"]
    return box["value"]


# -- the image fault matrix ----------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    reason: str  # expected reject reason of the bad row ("ok": the row is a good one)
    kind: str = "jsonl"  # file type the bad row sits in
    shows: str = ""  # text the reject's detail must contain (the path it names)


IMAGE_CASES = [
    Case("abs_system_path", "outside_roots", shows="/etc/passwd"),
    Case("dotdot_system_path", "outside_roots", shows="../../../../../../../../etc/passwd"),
    Case("dotdot_sibling_image", "outside_roots", shows="../sibling/ok.jpg"),
    Case("file_url_system_path", "outside_roots", shows="file:///etc/passwd"),
    Case("chained_url", "missing_image", shows="simplecache::file:///etc/passwd"),
    Case("http_url", "scheme_not_allowed", shows="http://127.0.0.1:9/x.jpg"),
    Case("unknown_scheme", "scheme_not_allowed", shows="foo://x"),
    Case("symlink_out", "symlink_outside_roots", shows="imgs/link.jpg"),
    Case("fifo", "not_regular_file", shows="imgs/pipe.jpg"),
    Case("device_under_root", "not_regular_file", shows="/dev/zero"),
    Case("directory", "not_regular_file", shows="imgs"),
    Case("oversized_file", "file_too_large", shows="imgs/big.jpg"),
    Case("missing_file", "missing_image", shows="imgs/nope.jpg"),
    Case("caption_too_long", "caption_too_long", shows="max_caption_chars"),
    Case("duplicate_in_file", "duplicate_key", shows="already taken"),
    Case("parquet_abs_path", "outside_roots", kind="parquet", shows="/etc/passwd"),
    Case("parquet_inline_oversized", "file_too_large", kind="parquet"),
    Case("symlink_inside_root", "ok"),
]
PATH_CASES = [c for c in IMAGE_CASES if c.name not in ("caption_too_long", "duplicate_in_file")]


def bad_row(case: Case, d: Path) -> dict:
    """The planted row of a case; makes the files it names inside the case directory `d`."""
    img = d / "imgs"
    ref = {
        "abs_system_path": "/etc/passwd",
        "dotdot_system_path": "../../../../../../../../etc/passwd",
        "dotdot_sibling_image": "../sibling/ok.jpg",
        "file_url_system_path": "file:///etc/passwd",
        "chained_url": "simplecache::file:///etc/passwd",
        "http_url": "http://127.0.0.1:9/x.jpg",
        "unknown_scheme": "foo://x",
        "device_under_root": "/dev/zero",
        "directory": "imgs",
        "missing_file": "imgs/nope.jpg",
        "parquet_abs_path": "/etc/passwd",
    }.get(case.name)
    row = {"key": f"{case.name}-bad", "caption": f"the bad row of {case.name}"}
    if case.name == "symlink_out":
        os.symlink("/etc/passwd", img / "link.jpg")
        ref = "imgs/link.jpg"
    elif case.name == "symlink_inside_root":
        os.symlink("g0.jpg", img / "alias.jpg")
        ref = "imgs/alias.jpg"
    elif case.name == "fifo":
        os.mkfifo(img / "pipe.jpg")
        ref = "imgs/pipe.jpg"
    elif case.name == "oversized_file":
        (img / "big.jpg").write_bytes(ii.jpeg(50) + b"\0" * MAX_IMAGE_BYTES)
        ref = "imgs/big.jpg"
    elif case.name == "caption_too_long":
        ref, row["caption"] = "imgs/g0.jpg", "word " * 200_000  # 1 MB of caption
    elif case.name == "duplicate_in_file":
        ref, row["key"] = "imgs/g1.jpg", f"{case.name}-g0"
    elif case.name == "parquet_inline_oversized":
        return {**row, "image": {"bytes": ii.jpeg(51) + b"\0" * MAX_IMAGE_BYTES, "path": None}}
    if case.kind == "parquet":
        return {**row, "image": {"bytes": None, "path": ref}}
    return {**row, "image_path": ref}


def write_case(case: Case, root: Path) -> Path:
    """`root/<case>/rows.{jsonl,parquet}`: GOOD good rows with the bad row in the middle."""
    d = root / case.name
    (d / "imgs").mkdir(parents=True)
    good = []
    for i in range(GOOD):
        (d / "imgs" / f"g{i}.jpg").write_bytes(ii.jpeg(i))
        good.append(
            {"key": f"{case.name}-g{i}", "caption": f"good row {i} of {case.name}", "image_path": f"imgs/g{i}.jpg"}
        )
    rows = good[:1] + [bad_row(case, d)] + good[1:]
    if case.kind == "jsonl":
        path = d / "rows.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path
    path = d / "rows.parquet"
    cells = [r.get("image") or {"bytes": (d / r["image_path"]).read_bytes(), "path": None} for r in rows]
    pq.write_table(
        pa.table({"key": [r["key"] for r in rows], "caption": [r["caption"] for r in rows], "image": cells}), path
    )
    return path


def write_collection(d: Path, n: int = 3) -> Path:
    """An img2dataset output folder: its first shard `00000.tar`, keys numbered from 000000000."""
    d.mkdir(parents=True)
    with tarfile.open(d / "00000.tar", "w") as tar:
        for i in range(n):
            sample(tar, f"{i:09d}", ii.jpeg(60 + i + len(d.name)), f"{d.name} picture {i}")
    return d / "00000.tar"


@pytest.fixture(scope="module")
def image_inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    (root / "sibling").mkdir()
    (root / "sibling" / "ok.jpg").write_bytes(ii.jpeg(40))  # a valid picture, but outside the case's root
    files = {c.name: write_case(c, root / "cases") for c in IMAGE_CASES}
    files["collection_a"] = write_collection(root / "collection_a")
    files["collection_b"] = write_collection(root / "collection_b")
    return files


@pytest.fixture(scope="module")
def vqvae_dir(tmp_path_factory):
    torch.manual_seed(0)
    m = build_vqvae("tiny-64px-f4", n_embed=64)
    d = tmp_path_factory.mktemp("vqvae")
    save_checkpoint(m, d)
    return d


def image_settings():
    return settings(num_shards=1, input_roots=["/dev"], max_image_bytes=MAX_IMAGE_BYTES)


@pytest.fixture(scope="module")
def image_run(image_inputs, vqvae_dir, sp_model_path, tmp_path_factory):
    """One run of the images pipeline over every case file and both collections."""
    from pipelines.image_tokenize import tokenize_images

    out = tmp_path_factory.mktemp("image-run")
    summary = run_with_watchdog(
        tokenize_images,
        [str(p) for p in image_inputs.values()],
        str(out / "ic"),
        str(out / "rej"),
        str(vqvae_dir),
        str(sp_model_path),
        image_settings(),
    )
    rejects = pq.read_table(out / "rej" / "part-00000.parquet").to_pylist()
    return summary, samples(out / "ic"), rejects


@pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda c: c.name)
def test_image_fault_matrix(case, image_run, image_inputs):
    _, got, rejects = image_run
    mine = [r for r in rejects if r["file"] == str(image_inputs[case.name])]
    kept = sorted(k for k in got if k.startswith(f"{case.name}-"))
    good_keys = [f"{case.name}-g{i}" for i in range(GOOD)]
    if case.reason == "ok":
        assert mine == [] and kept == sorted(good_keys + [f"{case.name}-bad"])
        return
    assert [r["reason"] for r in mine] == [case.reason], mine
    assert sorted(k for k in kept if k in good_keys) == good_keys and len(kept) == GOOD  # every good row kept
    assert case.shows in mine[0]["snippet"]
    assert SECRET not in mine[0]["snippet"] and "\x00" not in mine[0]["snippet"]  # names the file, never its bytes


@pytest.mark.parametrize("case", PATH_CASES, ids=lambda c: c.name)
def test_image_reader_refuses_before_reading(case, image_inputs):
    """The reader alone, per case: the bad row is an error record with the reason code, the good
    rows of the file carry their image bytes, and nothing blocks."""
    policy = InputPolicy(("/dev",), (), MAX_IMAGE_BYTES)
    recs = run_with_watchdog(lambda: list(read_source(str(image_inputs[case.name]), {}, policy)), timeout=60)
    by_key = {r.key: r for r in recs}
    assert len(recs) == GOOD + 1
    for i in range(GOOD):
        good = by_key[f"{case.name}-g{i}"]
        assert good.error is None and good.image == (image_inputs[case.name].parent / "imgs" / f"g{i}.jpg").read_bytes()
    bad = by_key[f"{case.name}-bad"]
    if case.reason == "ok":
        assert bad.error is None and bad.image == (image_inputs[case.name].parent / "imgs" / "g0.jpg").read_bytes()
    else:
        assert bad.image is None and bad.error[0] == case.reason and SECRET not in bad.error[1]


def test_remote_scheme_only_when_allowed(tmp_path):
    """An allowed scheme is fetched (memory:// stands in for a remote store); the same URL is
    refused without the allow-list entry."""
    import fsspec

    with fsspec.open("memory://bucket/pic.jpg", "wb") as f:
        f.write(ii.jpeg(3))
    row = {"key": "r", "caption": "c", "image_path": "memory://bucket/pic.jpg"}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    (refused,) = read_source(str(tmp_path / "rows.jsonl"))
    assert refused.error[0] == "scheme_not_allowed"
    (fetched,) = read_source(str(tmp_path / "rows.jsonl"), {}, InputPolicy(allow_schemes=("memory",)))
    assert fetched.error is None and fetched.image == ii.jpeg(3)


def test_remote_table_names_files_beside_it_only():
    """A table in a remote store (memory:// here) may name images beside it, not `..` above it."""
    import fsspec

    for name, data in (("tables/pic.jpg", ii.jpeg(4)), ("secret.jpg", ii.jpeg(5))):
        with fsspec.open(f"memory://store/{name}", "wb") as f:
            f.write(data)
    rows = [
        {"key": "beside", "caption": "c", "image_path": "pic.jpg"},
        {"key": "above", "caption": "c", "image_path": "../secret.jpg"},
    ]
    with fsspec.open("memory://store/tables/rows.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    beside, above = read_source("memory://store/tables/rows.jsonl")
    assert beside.error is None and beside.image == ii.jpeg(4)
    assert above.image is None and above.error[0] == "outside_roots"


def test_two_collections_numbered_from_zero_are_both_kept(image_run, image_inputs):
    """Two img2dataset collections both start at 000000000: every sample of both is kept, the
    first collection (path order) under its own keys, the second under keys prefixed with a
    stable id of its file; no duplicate_key rejects."""
    from pipelines.image_tokenize import collection_id

    _, got, rejects = image_run
    colls = [str(image_inputs["collection_a"]), str(image_inputs["collection_b"])]
    assert [r for r in rejects if r["file"] in colls] == []
    a = {k: s for k, s in got.items() if s["json"]["caption"].startswith("collection_a ")}
    b = {k: s for k, s in got.items() if s["json"]["caption"].startswith("collection_b ")}
    assert sorted(a) == [f"{i:09d}" for i in range(3)]
    assert sorted(b) == [f"{collection_id(colls[1])}_{i:09d}" for i in range(3)]
    assert sorted(s["json"]["original_key"] for s in b.values()) == sorted(a)


def test_image_settings_keys_from_config():
    from pipelines.image_tokenize import ImageSettings

    s = ImageSettings.from_config(
        Config(
            {
                "images": {
                    "input_roots": ["/data/pics"],
                    "allow_schemes": ["GS"],
                    "max_image_bytes": 1000,
                    "max_caption_chars": 50,
                }
            }
        )
    )
    assert s.input_policy() == InputPolicy(("/data/pics",), ("gs",), 1000) and s.max_caption_chars == 50
    with pytest.raises(ValueError, match="images.max_image_bytes"):
        ImageSettings.from_config(Config({"images": {"max_image_bytes": 0}}))


# -- corrupt, animated and oversized pictures inside tars ----------------------------------------
def animation(fmt: str, **kw) -> bytes:
    """Three frames: red, blue, green. Only the first (red) may be used."""
    frames = [ii.Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    return ii.encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)


def still(colour) -> bytes:
    return ii.encode(ii.Image.new("RGB", (64, 64), colour), "PNG")


TAR_MEMBERS = {  # key -> (member bytes, extension, reject reason or "ok")
    "t_truncated_jpeg": (ii.truncated_jpeg(), "jpg", "undecodable"),
    "t_garbage": (bytes(range(256)) * 8, "jpg", "undecodable"),
    "t_zero_length": (b"", "jpg", "empty_file"),
    "t_bomb_over_pillow_error": (ii.png_header_bomb(20000, 20000), "png", "too_large"),
    "t_bomb_over_pillow_warning": (ii.png_header_bomb(10000, 10000), "png", "too_large"),
    "t_bomb_over_max_pixels": (ii.png_header_bomb(5000, 5000), "png", "too_large"),
    "a_gif": (animation("GIF"), "gif", "ok"),
    "a_apng": (animation("PNG"), "png", "ok"),
    "a_webp": (animation("WEBP", lossless=True), "webp", "ok"),
    "s_red": (still((255, 0, 0)), "png", "ok"),
    "s_blue": (still((0, 0, 255)), "png", "ok"),
}


def test_pillow_bomb_warning_is_a_reject_not_a_decode():
    """Between Pillow's MAX_IMAGE_PIXELS and twice that, Pillow only warns and would decode: with
    our own limit lifted, the warning still refuses the picture before any pixel is decoded."""
    from jamdata.image.preprocess import ImageRejected, preprocess_image

    with pytest.raises(ImageRejected) as e:
        preprocess_image(ii.png_header_bomb(10000, 10000), 32, max_pixels=10**12)
    assert e.value.reason == "too_large" and "decompression bomb" in e.value.detail


def test_corrupt_animated_and_bomb_members_of_tars(tmp_path, sp_model_path):
    """One tar with every kind of bad member among good ones, a second tar cut inside a member
    header, a third with a garbage header block in the middle: the job finishes, each bad member
    is one reject with its code, animations give their first frame, and every good sample stays."""
    from pipelines.image_tokenize import tokenize_images

    torch.manual_seed(0)
    m = build_vqvae("tiny-64px-f4", n_embed=64)
    with torch.no_grad():
        m.quantize.embedding.weight.normal_(0, 0.3)
    save_checkpoint(m, tmp_path / "vq")
    with tarfile.open(tmp_path / "members.tar", "w") as tar:
        for key, (data, ext, _) in TAR_MEMBERS.items():
            sample(tar, key, data, f"caption of {key}", ext)
    for name in ("cut", "garbled"):
        with tarfile.open(tmp_path / f"{name}.tar", "w") as tar:
            for i in range(3):
                sample(tar, f"{name}{i}", ii.jpeg(i), f"{name} picture {i}")
        with tarfile.open(tmp_path / f"{name}.tar") as tar:
            header = tar.getmember(f"{name}2.jpg").offset
        data = (tmp_path / f"{name}.tar").read_bytes()
        if name == "cut":  # stops in the middle of the header of the third picture
            data = data[: header + 100]
        else:  # the third picture's header block overwritten with bytes that are no tar header
            data = data[:header] + bytes(range(256)) * 2 + data[header + 512 :]
        (tmp_path / f"{name}.tar").write_bytes(data)
    files = [str(tmp_path / f"{n}.tar") for n in ("members", "cut", "garbled")]
    s = run_with_watchdog(
        tokenize_images,
        files,
        str(tmp_path / "ic"),
        str(tmp_path / "rej"),
        str(tmp_path / "vq"),
        str(sp_model_path),
        settings(num_shards=1, max_pixels=20_000_000, resolution=64),
    )
    got = samples(tmp_path / "ic")
    rejects = pq.read_table(tmp_path / "rej" / "part-00000.parquet").to_pylist()
    by_key = {r["id"].split("@")[0]: r for r in rejects if r["file"] == files[0]}
    for key, (_, _, outcome) in TAR_MEMBERS.items():
        if outcome == "ok":
            assert key in got and key not in by_key, key
        else:
            assert by_key[key]["reason"] == outcome, (key, by_key.get(key))
    assert "possible decompression bomb" in by_key["t_bomb_over_max_pixels"]["snippet"]
    for key in ("t_bomb_over_pillow_warning", "t_bomb_over_pillow_error"):  # Pillow's words: refused at open
        assert "could be decompression bomb" in by_key[key]["snippet"], by_key[key]
    red, blue = got["s_red"]["image_codes.npy"], got["s_blue"]["image_codes.npy"]
    assert not np.array_equal(red, blue)
    for key in ("a_gif", "a_apng", "a_webp"):  # the first frame, red, exactly
        assert np.array_equal(got[key]["image_codes.npy"], red), key
    for name, f in (("cut", files[1]), ("garbled", files[2])):
        assert {k for k in got if k.startswith(name)} == {f"{name}0", f"{name}1"}
        assert [r["reason"] for r in rejects if r["file"] == f] == ["truncated_shard"], name
    assert s["samples"] == len(got) == 5 + 4


# -- the interleaved (instruct) fault matrix ------------------------------------------------------
INSTRUCT_CASES = [
    Case("howto_dotdot_image", "outside_roots", shows="../sibling/ok.png"),
    Case("howto_abs_system_path", "outside_roots", shows="/etc/passwd"),
    Case("howto_symlink_out", "symlink_outside_roots", shows="imgs/link.png"),
    Case("howto_fifo", "not_regular_file", shows="imgs/pipe.png"),
    Case("howto_oversized_image", "file_too_large", shows="imgs/big.png"),
    Case("howto_absurd_text", "text_too_long", shows="max_text_chars"),
    Case("howto_tar_url_out", "outside_roots", shows="store.tar"),
    Case("howto_inline_oversized", "file_too_large", shows="inline image"),
    Case("conversation_dotdot_image", "outside_roots", kind="conversation", shows="../sibling/ok.png"),
]
INSTRUCT_MAX_IMAGE_BYTES = 200_000


def png(seed: int) -> bytes:
    return ii.encode(ii.scene(seed, (64, 64)), "PNG")


def instruct_bad(case: Case, d: Path) -> dict:
    img = d / "imgs"
    ref = {
        "howto_dotdot_image": "../sibling/ok.png",
        "howto_abs_system_path": "/etc/passwd",
        "conversation_dotdot_image": "../sibling/ok.png",
    }.get(case.name, "imgs/a0.png")
    text = "Do the thing."
    if case.name == "howto_symlink_out":
        os.symlink("/etc/passwd", img / "link.png")
        ref = "imgs/link.png"
    elif case.name == "howto_fifo":
        os.mkfifo(img / "pipe.png")
        ref = "imgs/pipe.png"
    elif case.name == "howto_oversized_image":
        (img / "big.png").write_bytes(png(9) + b"\0" * INSTRUCT_MAX_IMAGE_BYTES)
        ref = "imgs/big.png"
    elif case.name == "howto_absurd_text":
        text = "word " * 100_000  # 500,000 characters in one step
    elif case.name == "howto_tar_url_out":
        ref = f"tar://ok.png::{d.parent / 'sibling' / 'store.tar'}"
    elif case.name == "howto_inline_oversized":
        big = base64.b64encode(png(8) + b"\0" * INSTRUCT_MAX_IMAGE_BYTES).decode()
        return {"id": f"{case.name}-bad", "title": "Article bad", "steps": [{"text": text, "image_base64": big}]}
    return record(case, "bad", text, ref)


def record(case: Case, ident: str, text: str, ref: str) -> dict:
    if case.kind == "conversation":
        return {
            "id": f"{case.name}-{ident}",
            "turns": [
                {"role": "user", "content": [{"text": "What is shown?"}, {"image": ref}]},
                {"role": "assistant", "content": text},
            ],
        }
    return {"id": f"{case.name}-{ident}", "title": f"Article {ident}", "steps": [{"text": text, "image": ref}]}


@pytest.fixture(scope="module")
def instruct_inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("instruct-faults")
    (root / "sibling").mkdir()
    (root / "sibling" / "ok.png").write_bytes(png(30))
    with tarfile.open(root / "sibling" / "store.tar", "w") as tar:  # a tar beside, not under, the roots
        tar.add(root / "sibling" / "ok.png", arcname="ok.png")
    files = {}
    for case in INSTRUCT_CASES:
        d = root / case.name
        (d / "imgs").mkdir(parents=True)
        good = []
        for i in range(GOOD):
            (d / "imgs" / f"a{i}.png").write_bytes(png(i))
            good.append(record(case, f"good{i}", f"Step text {i}.", f"imgs/a{i}.png"))
        rows = good[:1] + [instruct_bad(case, d)] + good[1:]
        files[case.name] = d / "records.jsonl"
        files[case.name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


@pytest.fixture(scope="module")
def instruct_run(instruct_inputs, vqvae_dir, sp_model_path, tmp_path_factory):
    from jamdata.interleaved.build import BuildSpec
    from pipelines.instruct_build import build

    section = {
        "sources": [
            {"format": "conversation" if c.kind == "conversation" else "howto", "paths": str(instruct_inputs[c.name])}
            for c in INSTRUCT_CASES
        ],
        "template": {"max_len": 512},
        "image_resolution": 32,
        "image_max_bytes": INSTRUCT_MAX_IMAGE_BYTES,
    }
    spec = BuildSpec.from_config(Config(section))
    out = tmp_path_factory.mktemp("instruct-run")
    run_with_watchdog(build, spec, str(out / "instruct"), str(out / "rej"), str(sp_model_path), str(vqvae_dir), 64)
    got = {}
    for shard in read_manifest(str(out / "instruct"))["shards"]:
        from jamdata.formats.wds import iter_samples

        got.update((s.key, s.decoded()) for s in iter_samples(str(out / "instruct" / shard["path"])))
    return got, pq.read_table(out / "rej" / "part-00000.parquet").to_pylist()


@pytest.mark.parametrize("case", INSTRUCT_CASES, ids=lambda c: c.name)
def test_instruct_fault_matrix(case, instruct_run, instruct_inputs):
    got, rejects = instruct_run
    mine = [r for r in rejects if r["file"] == str(instruct_inputs[case.name])]
    prefix = "conv" if case.kind == "conversation" else "howto"
    kept = sorted(k for k in got if k.startswith(f"{prefix}-{case.name}-"))
    assert kept == [f"{prefix}-{case.name}-good{i}" for i in range(GOOD)]  # every good record kept
    assert len(mine) == 1 and case.reason in mine[0]["reason"], mine
    assert case.shows in mine[0]["reason"] + mine[0]["snippet"]
    assert SECRET not in mine[0]["reason"] + mine[0]["snippet"]


# -- manifests naming files outside their dataset -------------------------------------------------
def make_dataset(root: Path, n: int = 2) -> Path:
    from jamdata.manifest import build_manifest, describe_shard, write_manifest

    root.mkdir(parents=True)
    shards = []
    for i in range(n):
        (root / f"part-{i:05d}.txt").write_text(f"shard {i}\n" * 5)
        shards.append(describe_shard(str(root), f"part-{i:05d}.txt", records=5))
    write_manifest(str(root), build_manifest("documents", shards, {}))
    return root


def point_shard_at(ds: Path, path: str, target: Path) -> None:
    """Rewrite the manifest so shard 0 names `path`, with the size and hash of `target` (what an
    edited or hostile manifest would hold: the numbers all agree)."""
    from jamdata.io import sha256_file

    m = json.loads((ds / "manifest.json").read_text())
    m["shards"][0].update(path=path, bytes=target.stat().st_size, sha256=sha256_file(target))
    (ds / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("where", ["../outside.txt", "ABSOLUTE", "sub/../../outside.txt"])
def test_manifest_shard_outside_dataset_is_invalid(tmp_path, where):
    outside = tmp_path / "outside.txt"
    outside.write_text("a file beside the dataset, not part of it\n")
    ds = make_dataset(tmp_path / "ds")
    point_shard_at(ds, str(outside) if where == "ABSOLUTE" else where, outside)
    problems = validate_dataset(str(ds))
    assert len(problems) == 1 and "shard path" in problems[0] and "inside the dataset directory" in problems[0]
    with pytest.raises(ManifestError, match="shard path"):
        read_manifest(str(ds))
    out = subprocess.run([sys.executable, "-m", "jamdata.cli", "validate", str(ds)], capture_output=True, text=True)
    assert out.returncode != 0 and "shard path" in out.stdout + out.stderr and "OK" not in out.stdout


def test_manifest_shard_symlinked_out_of_dataset_is_invalid(tmp_path):
    outside = tmp_path / "outside.txt"
    ds = make_dataset(tmp_path / "ds")
    outside.write_bytes((ds / "part-00000.txt").read_bytes())  # same bytes: size and hash agree
    (ds / "part-00000.txt").unlink()
    os.symlink(outside, ds / "part-00000.txt")
    problems = validate_dataset(str(ds))
    assert problems == [f"part-00000.txt: resolves outside the dataset directory (symlink to {outside})"]


def test_loader_refuses_manifest_with_outside_shard(tmp_path):
    """A loadable dataset (interleaved tars) whose manifest names a tar beside the dataset: the
    loader stops at the manifest with one line instead of reading that file."""
    import numpy as np

    from jamdata.formats.wds import TarShardWriter
    from jamdata.loader.sources import DatasetSource
    from jamdata.manifest import build_manifest, describe_shard, write_manifest

    ds = tmp_path / "ds"
    ds.mkdir()
    for where in (ds / "part-00000.tar", tmp_path / "outside.tar"):
        with TarShardWriter(str(where)) as w:
            w.write("k0", {"tokens.npy": np.arange(8, dtype=np.int32), "json": {"source": "howto"}})
    write_manifest(str(ds), build_manifest("interleaved", [describe_shard(str(ds), "part-00000.tar", records=1)], {}))
    assert DatasetSource.from_manifest("ds", str(ds)).n_samples == 1
    point_shard_at(ds, "../outside.tar", tmp_path / "outside.tar")
    with pytest.raises(ManifestError, match=r"shard path '\.\./outside\.tar' climbs out"):
        DatasetSource.from_manifest("ds", str(ds))


# -- stats on damaged shards ------------------------------------------------------------------------
def test_stats_reports_altered_shard_as_damaged(tmp_path):
    from pipelines.stats import run_stats
    from tests.test_stats import make_documents

    ds = make_documents(tmp_path / "docs", {"c4": 4, "books": 3})
    shard = ds / "c4" / "part-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, altered bytes
    shard.write_bytes(bytes(data))
    stats = run_stats([str(ds)], str(tmp_path / "report"))
    d = stats["datasets"]["docs"]
    assert d["status"] == "damaged"
    assert d["problems"] == ["c4/part-00000.parquet: sha256 differs from the manifest (altered)"]
    assert d["groups"]["books"]["chars"]["count"] == 3  # the intact shard is still reported
    assert "c4" not in d["groups"] and "damaged_shards" not in d["groups"].get("all", {})


def test_stats_fast_reports_truncated_shard_as_damaged(tmp_path):
    from pipelines.stats import run_stats
    from tests.test_stats import make_documents

    ds = make_documents(tmp_path / "docs", {"c4": 4})
    shard = ds / "c4" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])
    stats = run_stats([str(ds)], str(tmp_path / "report"), fast=True)
    assert stats["datasets"]["docs"]["status"] == "damaged"
    assert "truncated or altered" in stats["datasets"]["docs"]["problems"][0]
