import io
import tarfile

import numpy as np
import pytest

from jamdata.formats.megatron import IndexedDataset, IndexedDatasetError, IndexedDatasetWriter, read_index
from jamdata.formats.wds import ShardError, TarShardWriter, iter_samples, split_member


def test_megatron_round_trip(tmp_path):
    docs = [np.arange(5), np.array([], dtype=np.int64), np.array([65535, 0, 7])]
    w = IndexedDatasetWriter(str(tmp_path / "ds"), np.uint16)
    for d in docs:
        w.add_document(d)
    assert w.finalize() == (3, 8)
    ds = IndexedDataset(str(tmp_path / "ds"))
    assert len(ds) == 3
    for got, want in zip([ds[i] for i in range(3)], docs):
        assert got.dtype == np.uint16 and list(got) == list(want)
    assert list(ds.get(0, offset=2, length=2)) == [2, 3]
    idx = read_index(str(tmp_path / "ds.idx"))
    assert list(idx.document_indices) == [0, 1, 2, 3]


def test_megatron_rejects_truncation_and_range(tmp_path):
    w = IndexedDatasetWriter(str(tmp_path / "ds"), np.uint16)
    w.add_document(np.arange(100))
    w.finalize()
    with open(tmp_path / "ds.bin", "r+b") as f:
        f.truncate(50)
    with pytest.raises(IndexedDatasetError, match="ds.bin"):
        IndexedDataset(str(tmp_path / "ds"))
    w = IndexedDatasetWriter(str(tmp_path / "x"), np.uint16)
    with pytest.raises(ValueError):
        w.add_document([70000])
    w.abort()
    assert not (tmp_path / "x.bin").exists()


def test_tar_round_trip_deterministic(tmp_path):
    def write(p):
        with TarShardWriter(str(p)) as w:
            w.write("a0", {"json": {"caption": "x"}, "tokens.npy": np.arange(4, dtype=np.uint16), "txt": "hi"})
            w.write("a1", {"json": {"caption": "y"}, "tokens.npy": np.arange(2, dtype=np.uint16), "txt": "yo"})

    write(tmp_path / "s1.tar")
    write(tmp_path / "s2.tar")
    assert (tmp_path / "s1.tar").read_bytes() == (tmp_path / "s2.tar").read_bytes()
    samples = list(iter_samples(str(tmp_path / "s1.tar")))
    assert [s.key for s in samples] == ["a0", "a1"]
    d = samples[0].decoded()
    assert d["json"] == {"caption": "x"} and list(d["tokens.npy"]) == [0, 1, 2, 3] and d["txt"] == "hi"
    import webdataset as wds

    plain = list(wds.WebDataset(str(tmp_path / "s1.tar"), shardshuffle=False).decode())
    assert [p["__key__"] for p in plain] == ["a0", "a1"]
    assert list(plain[0]["tokens.npy"]) == [0, 1, 2, 3]


def test_tar_errors(tmp_path):
    with TarShardWriter(str(tmp_path / "s.tar")) as w:
        with pytest.raises(ValueError, match="duplicate"):
            w.write("k", {"txt": "1"})
            w.write("k", {"txt": "2"})
    data = (tmp_path / "s.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:700])
    with pytest.raises(ShardError, match="cut.tar"):
        list(iter_samples(str(tmp_path / "cut.tar")))
    # a tar with a duplicate key written by someone else
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name in ["k.txt", "j.txt", "k.txt"]:
            ti = tarfile.TarInfo(name)
            ti.size = 1
            t.addfile(ti, io.BytesIO(b"x"))
    (tmp_path / "dup.tar").write_bytes(buf.getvalue())
    with pytest.raises(ShardError, match="duplicate sample key 'k'"):
        list(iter_samples(str(tmp_path / "dup.tar")))
    assert [s.key for s in iter_samples(str(tmp_path / "dup.tar"), on_duplicate="skip")] == ["k", "j"]
    assert split_member("d/abc.image_codes.npy") == ("d/abc", "image_codes.npy")
