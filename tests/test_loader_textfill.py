"""The compiled text packer gives exactly what its Python twin gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jamdata.config import Config
from jamdata.loader import build_loader, packing, stream, textfill
from jamdata.loader.testing import make_text_tokens

compiled = pytest.mark.skipif(not textfill.COMPILED, reason="the C extension was not built")


def random_block(rng: np.random.Generator, dtype) -> tuple:
    """Block arguments: shards of random tokens and a block of documents taken in windows from
    them, with gaps between windows, unreadable positions between documents, and documents of one
    token up to thousands."""
    hi = 1 << 40 if dtype == np.int64 else int(np.iinfo(dtype).max)
    shards = tuple(rng.integers(0, hi, 20000).astype(dtype) for _ in range(3))
    lens, starts, sh = [], [], []
    while len(lens) < 60:
        u, at = int(rng.integers(3)), int(rng.integers(0, 5000))
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
    nz = np.sort(rng.choice(np.arange(len(lens) + 30), len(lens), replace=False)).astype(np.int64)
    keys = [f"k{i}" for i in range(len(lens))]
    return (
        cum,
        nz,
        np.append(ws, len(lens)),
        (starts[ws] - cum[ws]).astype(np.int64),
        sh[ws].astype(np.int64),
        shards,
        17,
        int(nz[-1]) + 3,
        keys,
    )


def start_at(rng, args, blocks) -> None:
    """Put every block at the same random position (sometimes an unreadable one, or past the end)."""
    cum, nz, b0, size = args[0], args[1], args[6], args[7]
    d = int(rng.integers(len(nz)))
    pos = b0 + int(nz[d]) - int(rng.integers(0, 2))
    offset = int(rng.integers(0, cum[d + 1] - cum[d])) if pos == b0 + nz[d] else 0
    if rng.random() < 0.05:
        pos, offset = b0 + size, 0
    for blk in blocks:
        blk.pos, blk.offset = pos, offset


@compiled
@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
@pytest.mark.parametrize("out_dtype", [np.int32, np.int64])
def test_compiled_block_fill_equals_python(dtype, out_dtype):
    rng = np.random.default_rng(0)
    for _ in range(20):
        args = random_block(rng, dtype)
        c, p = textfill.Block(*args), textfill.BlockPy(*args)
        for _ in range(30):
            start_at(rng, args, (c, p))
            n = int(rng.choice([1, 64, 4096, 20000]))
            done, c0 = int(rng.integers(0, n)), int(rng.integers(0, 100))
            outs = []
            for blk in (c, p):
                tok, seg = np.full(n, -1, dtype=out_dtype), np.full(n, -1, dtype=np.int32)
                outs.append((blk.fill(tok, seg, done, n, c0), tok, seg, blk.pos, blk.offset))
            (rc, tc, sc, *pc), (rp, tp, sp, *pp) = outs
            assert rc == rp and pc == pp
            assert np.array_equal(tc, tp) and np.array_equal(sc, sp)
            assert (tc[:done] == -1).all() and (tc[done + rc[0] :] == -1).all()


@compiled
def test_compiled_fill_rows_equals_python():
    rng = np.random.default_rng(2)
    for _ in range(20):
        args = [random_block(rng, np.uint16) for _ in range(4)]
        cs, ps = [textfill.Block(*a) for a in args], [textfill.BlockPy(*a) for a in args]
        for a, c, p in zip(args, cs, ps):
            start_at(rng, a, (c, p))
        L = int(rng.choice([16, 512, 4096]))
        outs = []
        for blocks, fill_rows in ((cs, textfill.fill_rows), (ps, textfill.fill_rows_py)):
            tok, seg = np.full(5 * L, -1, dtype=np.int32), np.full(5 * L, -1, dtype=np.int32)
            keys = fill_rows(tok, seg, L, blocks + [None])  # a row of another kind is left alone
            outs.append((keys, tok, seg, [(b.pos, b.offset) for b in blocks]))
        assert outs[0][0] == outs[1][0] and outs[0][3] == outs[1][3]
        assert np.array_equal(outs[0][1], outs[1][1]) and np.array_equal(outs[0][2], outs[1][2])
        for b, k in enumerate(outs[0][0]):
            row = outs[0][2][b * L : (b + 1) * L]
            if k is None:
                assert (row == -1).all()
            else:
                assert row[0] == 0 and row[-1] == len(k) - 1


@compiled
def test_compiled_block_rejects_bad_input():
    args = random_block(np.random.default_rng(1), np.uint16)
    with pytest.raises(TypeError):
        textfill.Block(args[0].astype(np.int32), *args[1:])
    bad_tok = args[3].copy()
    bad_tok[0] = 10**9  # a window past its shard's end
    with pytest.raises(ValueError, match="past its shard"):
        textfill.Block(*args[:3], bad_tok, *args[4:])
    with pytest.raises(ValueError, match="lengths disagree"):
        textfill.Block(*args[:-1], args[-1][:-1])
    blk = textfill.Block(*args)
    with pytest.raises(TypeError, match="int32 or int64"):
        blk.fill(np.zeros(8, np.float32), np.zeros(8, np.int32), 0, 8, 0)
    with pytest.raises(ValueError, match="out of range"):
        blk.fill(np.zeros(8, np.int32), np.zeros(8, np.int32), 0, 9, 0)


@compiled
def test_loader_same_batches_with_python_packer(tmp_path, monkeypatch):
    text = str(make_text_tokens(tmp_path / "text", {"wiki": [40, 33], "web": [50]}, seed=1))
    for slot_lanes in (2, 4):  # two rows per lane (one stretch), one row per lane (fill_rows)
        cfg = Config(
            {
                "loader": {
                    "mixture": {"text": 1},
                    "seq_len": 64,
                    "global_batch_size": 4,
                    "slot_lanes": slot_lanes,
                    "shuffle_block": 8,
                    "steps_per_epoch": 30,
                    "seed": 3,
                }
            }
        ).section("loader")
        ours = list(build_loader(cfg, {"text": text}))
        with monkeypatch.context() as mp:
            mp.setattr(packing, "Block", textfill.BlockPy)
            mp.setattr(stream, "fill_rows", textfill.fill_rows_py)
            theirs = list(build_loader(cfg, {"text": text}))
        for a, b in zip(ours, theirs, strict=True):
            for k in ("tokens", "segment_ids", "loss_mask"):
                assert torch.equal(a[k], b[k])
            assert a["keys"] == b["keys"]
