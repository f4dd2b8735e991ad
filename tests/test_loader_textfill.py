"""The compiled text packer gives exactly what its Python twin gives."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from jamdata.config import Config
from jamdata.loader import build_loader, lane, textfill
from jamdata.loader.testing import make_text_tokens

compiled = pytest.mark.skipif(not textfill.COMPILED, reason="the C extension was not built")


def random_block(rng: np.random.Generator, dtype):
    """Shards of random tokens; a block of documents taken in runs from them, with gaps (not
    back to back) and documents of one token up to thousands."""
    shards = tuple(rng.integers(0, np.iinfo(dtype).max if dtype != np.int64 else 1 << 40, 20000).astype(dtype)
                   for _ in range(3))
    lens, starts, sh = [], [], []
    while len(lens) < 60:
        u = int(rng.integers(3))
        at = int(rng.integers(0, 5000))
        for _ in range(int(rng.integers(1, 8))):  # a window of back-to-back documents
            m = int(rng.choice([1, 2, 7, 100, 900, 3000]))
            if at + m > 20000:
                break
            lens.append(m), starts.append(at), sh.append(u)
            at += m
    lens, starts, sh = np.array(lens), np.array(starts), np.array(sh)
    cum = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=cum[1:])
    brk = np.ones(len(lens), dtype=bool)
    brk[1:] = (starts[1:] != starts[:-1] + lens[:-1]) | (sh[1:] != sh[:-1])
    ws = np.flatnonzero(brk).astype(np.int64)
    nz = np.sort(rng.choice(np.arange(len(lens) + 30), len(lens), replace=False)).astype(np.int64)  # unreadable gaps
    args = (cum, nz, np.append(ws, len(lens)), (starts[ws] - cum[ws]).astype(np.int64), sh[ws].astype(np.int64), shards,
            17, int(nz[-1]) + 3)
    return args


@compiled
@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
@pytest.mark.parametrize("out_dtype", [np.int32, np.int64])
def test_compiled_block_fill_equals_python(dtype, out_dtype):
    rng = np.random.default_rng(0)
    for _ in range(20):
        args = random_block(rng, dtype)
        c, p = textfill.Block(*args), textfill.BlockPy(*args)
        cum, nz, b0 = args[0], args[1], args[6]
        for _ in range(30):
            d = int(rng.integers(len(nz)))
            pos = b0 + int(nz[d]) - int(rng.integers(0, 2))  # sometimes an unreadable position before it
            offset = 0 if pos != b0 + nz[d] else int(rng.integers(0, cum[d + 1] - cum[d]))
            n = int(rng.choice([1, 64, 4096, 20000]))
            done = int(rng.integers(0, n))
            c0 = int(rng.integers(0, 100))
            outs = []
            for blk in (c, p):
                tok = np.full(n, -1, dtype=out_dtype)
                seg = np.full(n, -1, dtype=np.int32)
                r = blk.fill(tok, seg, done, n, pos, offset, c0)
                outs.append((r, tok, seg))
            (rc, tc, sc), (rp, tp, sp) = outs
            assert rc == rp
            assert np.array_equal(tc, tp) and np.array_equal(sc, sp)
            take = rc[0]
            assert (tc[:done] == -1).all() and (tc[done + take:] == -1).all()


@compiled
def test_compiled_block_rejects_bad_input():
    rng = np.random.default_rng(1)
    args = random_block(rng, np.uint16)
    with pytest.raises(TypeError):
        textfill.Block(args[0].astype(np.int32), *args[1:])
    bad_tok = args[3].copy()
    bad_tok[0] = 10 ** 9  # a window past its shard's end
    with pytest.raises(ValueError, match="past its shard"):
        textfill.Block(*args[:3], bad_tok, *args[4:])
    blk = textfill.Block(*args)
    with pytest.raises(TypeError, match="int32 or int64"):
        blk.fill(np.zeros(8, np.float32), np.zeros(8, np.int32), 0, 8, args[6], 0, 0)
    with pytest.raises(ValueError, match="out of range"):
        blk.fill(np.zeros(8, np.int32), np.zeros(8, np.int32), 0, 9, args[6], 0, 0)


@compiled
def test_loader_same_batches_with_python_packer(tmp_path, monkeypatch):
    text = str(make_text_tokens(tmp_path / "text", {"wiki": [40, 33], "web": [50]}, seed=1))
    cfg = Config({"loader": {"mixture": {"text": 1}, "seq_len": 64, "global_batch_size": 4, "slot_lanes": 2,
                             "shuffle_block": 8, "steps_per_epoch": 30, "seed": 3}}).section("loader")
    ours = list(build_loader(cfg, {"text": text}))
    monkeypatch.setattr(lane, "Block", textfill.BlockPy)
    theirs = list(build_loader(cfg, {"text": text}))
    for a, b in zip(ours, theirs, strict=True):
        for k in ("tokens", "segment_ids", "loss_mask"):
            assert torch.equal(a[k], b[k])
        assert a["keys"] == b["keys"]
