import subprocess
import sys

import pytest

from jamdata.manifest import (
    OutputLockedError,
    build_manifest,
    check_compatible,
    describe_shard,
    output_dir,
    read_manifest,
    validate_dataset,
    write_manifest,
)
from jamdata.vocab import JointVocab, VocabMismatchError


def make_dataset(root, vocab=None, n=3):
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for i in range(n):
        rel = f"part-{i:05d}.txt"
        (root / rel).write_text(f"shard {i}\n" * 10)
        shards.append(describe_shard(str(root), rel, records=10, tokens=20))
    write_manifest(str(root), build_manifest("documents", shards, {"x": 1}, vocab))
    return root


def test_valid_then_tampered(tmp_path):
    ds = make_dataset(tmp_path / "ds")
    assert validate_dataset(str(ds)) == []
    m = read_manifest(str(ds))
    assert m["totals"] == {"records": 30, "bytes": sum(s["bytes"] for s in m["shards"]), "tokens": 60}
    data = bytearray((ds / "part-00001.txt").read_bytes())
    data[3] ^= 1
    (ds / "part-00001.txt").write_bytes(bytes(data))
    (ds / "part-00002.txt").unlink()
    problems = validate_dataset(str(ds))
    assert any("part-00001.txt" in p and "sha256" in p for p in problems)
    assert any("part-00002.txt: missing" in p for p in problems)
    out = subprocess.run([sys.executable, "-m", "jamdata.cli", "validate", str(ds)], capture_output=True, text=True)
    assert out.returncode == 1 and "part-00001.txt" in out.stderr


def test_cli_help_and_ok():
    out = subprocess.run([sys.executable, "-m", "jamdata.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "validate" in out.stdout


def test_not_a_dataset(tmp_path):
    assert "no manifest.json" in validate_dataset(str(tmp_path))[0]


def test_vocab_mismatch_refused(tmp_path):
    a = make_dataset(tmp_path / "a", JointVocab(100, "a" * 64))
    b = make_dataset(tmp_path / "b", JointVocab(100, "b" * 64))
    c = make_dataset(tmp_path / "c", JointVocab(100, "a" * 64))
    assert check_compatible([str(a), str(c)])
    with pytest.raises(VocabMismatchError, match=f"{a}.*{b}"):
        check_compatible([str(a), str(b)])
    out = subprocess.run(
        [sys.executable, "-m", "jamdata.cli", "validate", "--same-vocab", str(a), str(b)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "different joint vocabularies" in out.stderr


def test_output_dir_lock_and_clean(tmp_path):
    ds = make_dataset(tmp_path / "ds")
    with output_dir(ds) as root:
        assert not (root / "manifest.json").exists()
        assert [p.name for p in root.iterdir()] == [".jam.lock"]
        with pytest.raises(OutputLockedError, match="another job"):
            with output_dir(ds):
                pass
    with output_dir(ds):  # released
        pass


def test_output_dir_permission_denied(tmp_path):
    import os

    if os.geteuid() == 0:
        target = "/proc/jam-no-such-dir"  # not writable even for root
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = str(ro / "out")
    with pytest.raises(OSError, match="cannot write to output directory"):
        with output_dir(target):
            pass
