import bz2
import gzip

import pytest
import zstandard

from jamdata.config import Config, ConfigError
from jamdata.io import atomic_write, expand_inputs, open_input, stable_hash


@pytest.mark.parametrize(
    "compress", [lambda b: b, gzip.compress, bz2.compress, lambda b: zstandard.ZstdCompressor().compress(b)]
)
def test_open_input_sniffs_content_not_name(tmp_path, compress):
    p = tmp_path / "misnamed.txt"
    p.write_bytes(compress(b"hello world\n" * 100))
    with open_input(p) as f:
        assert f.read() == b"hello world\n" * 100


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "x.bin") as f:
            f.write(b"partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_write(tmp_path / "x.bin") as f:
        f.write(b"ok")
    assert (tmp_path / "x.bin").read_bytes() == b"ok"


def test_stable_hash_and_expand(tmp_path):
    assert stable_hash("doc-1", seed=3) == stable_hash("doc-1", seed=3) != stable_hash("doc-1", seed=4)
    for n in ["b.txt", "a.txt", ".hidden"]:
        (tmp_path / n).write_text("x")
    assert [p.rsplit("/", 1)[1] for p in expand_inputs(str(tmp_path))] == ["a.txt", "b.txt"]
    with pytest.raises(Exception, match="nope"):
        expand_inputs(str(tmp_path / "nope"))


def test_config_errors_name_key_and_allowed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run:\ntext:\n  clean:\n    dedup: fuzzy\n    min_words: many\n")
    cfg = Config.load(p, overrides=["run.seed=7"])  # `run` is an empty (null) section
    assert cfg.get("run.seed", int) == 7
    clean = cfg.section("text.clean")
    with pytest.raises(ConfigError, match=r"text\.clean\.dedup.*allowed: none, exact, minhash"):
        clean.choice("dedup", ["none", "exact", "minhash"])
    with pytest.raises(ConfigError, match=r"text\.clean\.min_words.*int"):
        clean.get("min_words", int)
    with pytest.raises(ConfigError, match=r"text\.clean\.min_words"):
        clean.check_keys(["dedup"])
