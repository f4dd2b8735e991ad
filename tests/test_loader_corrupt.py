"""Loader: damaged shards are skipped, logged and counted (or fail on request), never a hang."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest

from jamdata.config import Config
from jamdata.formats.wds import ShardError, encode_field, iter_samples
from jamdata.loader import LoaderError, build_loader
from jamdata.loader.testing import make_tars, make_text_tokens
from jamdata.manifest import build_manifest, describe_shard, write_manifest
from jamdata.loader.testing import VOCAB

SAMPLE_LEN = 3 + 2 + 16 + 2


@pytest.fixture()
def tars(tmp_path):
    return make_tars(tmp_path / "img", "image_caption", [10, 10, 10], seed=5, caption_len=(3, 4))


def cfg(**kw):
    base = {
        "mixture": {"img": 1},
        "seq_len": 2 * SAMPLE_LEN,
        "global_batch_size": 2,
        "step_lanes": 1,
        "shuffle_block": 4,
        "steps_per_epoch": 15,
    }
    base.update(kw)
    return Config({"loader": base}).section("loader")


def keys_of(loader, steps=None):
    out = []
    for i, b in enumerate(loader):
        out += [k for row in b["keys"] for k in row]
        if steps and i + 1 == steps:
            break
    return out


def epoch0_keys(loader):
    """Keys read by each lane before it moves to its second epoch (the lane state tells)."""
    return keys_of(loader)


def all_keys(root, shards):
    return {s.key for i in shards for s in iter_samples(f"{root}/part-{i:05d}.tar")}


def truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_shard_is_skipped_and_counted(tars, caplog, damage):
    good = all_keys(tars, [0, 2])
    bad = all_keys(tars, [1])
    shard = tars / "part-00001.tar"
    if damage == "truncate":
        truncate(shard, 0.6)
    elif damage == "flip":  # same size, different bytes: only the checksum sees it
        data = bytearray(shard.read_bytes())
        data[2000] ^= 0xFF
        shard.write_bytes(bytes(data))
    else:
        shard.unlink()
    lo = build_loader(cfg(), {"img": str(tars)})
    with caplog.at_level(logging.ERROR, logger="jamdata.loader"):
        seen = keys_of(lo)
    assert set(seen) == good and not set(seen) & bad  # every good sample, none of the bad shard
    assert lo.counters["skipped_shards"] >= 1
    assert "part-00001.tar" in caplog.text


def test_truncated_tar_without_verification_keeps_samples_before_damage(tars, caplog):
    truncate(tars / "part-00001.tar", 0.55)
    survivors = set()
    try:
        for s in iter_samples(str(tars / "part-00001.tar")):
            survivors.add(s.key)
    except ShardError:
        pass
    assert 0 < len(survivors) < 10
    lo = build_loader(cfg(verify="none"), {"img": str(tars)})
    with caplog.at_level(logging.ERROR, logger="jamdata.loader"):
        seen = set(keys_of(lo))
    assert seen == all_keys(tars, [0, 2]) | survivors
    assert lo.counters["damaged_shards"] >= 1 and lo.counters["missing_samples"] >= 1
    assert "corrupt or truncated" in caplog.text


def test_on_corrupt_fail_raises_naming_the_shard(tars):
    truncate(tars / "part-00002.tar", 0.5)
    with pytest.raises(ShardError, match="part-00002.tar"):
        keys_of(build_loader(cfg(on_corrupt="fail"), {"img": str(tars)}))


def test_every_shard_damaged_raises_instead_of_hanging(tars):
    for p in tars.glob("*.tar"):
        truncate(p, 0.3)
    with pytest.raises(LoaderError, match="no readable sample"):
        keys_of(build_loader(cfg(), {"img": str(tars)}), 1)


def test_damaged_text_shard_skipped(tmp_path):
    root = make_text_tokens(tmp_path / "text", {"a": [20, 20]}, seed=2)
    truncate(root / "a" / "part-00000.bin", 0.5)
    lo = build_loader(cfg(mixture={"text": 1}, seq_len=32, verify="size"), {"text": str(root)})
    seen = keys_of(lo)
    assert seen and all(k.startswith("a/part-00001:") for k in seen)
    assert lo.counters["skipped_shards"] >= 1


def test_duplicate_keys_detected_and_skipped(tmp_path):
    root = tmp_path / "dup"
    root.mkdir()
    rng = np.random.default_rng(0)
    toks = {k: np.concatenate([rng.integers(0, 900, 5), [VOCAB.eos_id]]).astype(np.int32) for k in "abcd"}
    with tarfile.open(root / "part-00000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for key in ["a", "b", "c", "b", "d"]:  # "b" twice: written by hand, the project's writer refuses
            data = encode_field("tokens.npy", toks[key] + (100 if key == "b" and "b" in tar.getnames()[-1:] else 0))
            ti = tarfile.TarInfo(f"{key}.tokens.npy")
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    write_manifest(
        str(root),
        build_manifest("image_caption", [describe_shard(str(root), "part-00000.tar", records=5, tokens=30)], {}, VOCAB),
    )
    lo = build_loader(
        cfg(mixture={"dup": 1}, seq_len=6, global_batch_size=1, slot_lanes=1, steps_per_epoch=4), {"dup": str(root)}
    )
    seen = keys_of(lo)
    assert sorted(seen) == ["a", "b", "c", "d"]
    assert lo.counters["duplicate_keys"] == 1


def test_text_index_pointing_past_the_bin_is_skipped(tmp_path, caplog):
    root = make_text_tokens(tmp_path / "text", {"a": [20, 20]}, seed=2)
    idx = root / "a" / "part-00000.idx"
    data = bytearray(idx.read_bytes())
    count = int.from_bytes(data[18:26], "little")  # magic 9, version 8, dtype 1, then the count
    at = 34 + 4 * count  # pointers (int64) follow the int32 lengths
    data[at : at + 8] = (10**9).to_bytes(8, "little")  # document 0 starts a gigabyte in
    idx.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="jamdata.loader"):
        lo = build_loader(cfg(mixture={"text": 1}, seq_len=32, verify="none"), {"text": str(root)})
        seen = keys_of(lo)
    assert seen and all(k.startswith("a/part-00001:") for k in seen)
    assert lo.counters["skipped_shards"] >= 1
    assert "part-00000.idx: document 0 points past the end" in caplog.text
