"""CM3 at batch time (`loader.cm3`): equal to the documented direct call, redrawn per epoch, exact
across resume and worker counts, other datasets untouched, loss mask right, bad config named."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from jamdata.config import Config, ConfigError
from jamdata.formats.wds import TarShardWriter, iter_samples
from jamdata.interleaved.cm3 import CM3Config, cm3_inverse, cm3_transform, regions
from jamdata.loader import build_loader
from jamdata.loader.cm3 import draw_rng, is_drawn
from jamdata.loader.testing import VOCAB, make_tars, make_text_tokens
from jamdata.manifest import build_manifest, describe_shard, write_manifest
from tests.test_loader import run

V = VOCAB
SEED = 7
WHOLE = CM3Config(lam=1.0, max_spans=4, max_span_len=8, whole_images=True)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("loader_cm3")
    return {
        "text": str(make_text_tokens(d / "text", {"wiki": [40, 33]}, seed=1)),
        "img": str(make_tars(d / "img", "image_caption", [30, 25, 17], seed=2)),
        "inst": str(make_tars(d / "inst", "interleaved", [20, 21], seed=3, prefix="i")),
    }


def samples(root: str) -> dict:
    return {s.key: s.decoded() for tar in sorted(Path(root).glob("*.tar")) for s in iter_samples(str(tar))}


def cfg(cm3=None, **kw) -> Config:
    base = {
        "mixture": {"text": 0.4, "img": 0.4, "inst": 0.2},
        "seq_len": 96,
        "global_batch_size": 4,
        "shuffle_block": 8,
        "steps_per_epoch": 10,
        "seed": SEED,
    }
    if cm3 is not None:
        base["cm3"] = cm3
    base.update(kw)
    return Config({"loader": base}).section("loader")


CM3 = {"datasets": ["img", "inst"], "lambda": 1.0, "max_spans": 4, "max_span_len": 8}


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in ("tokens", "loss_mask", "segment_ids", "dataset_index"):
            assert torch.equal(x[k], y[k]), k
        assert x["keys"] == y["keys"]


def test_batch_rows_equal_the_documented_direct_transform(dirs):
    """One lane reads every sample once per dataset epoch, so a key's n-th appearance is its epoch n:
    each packed sample must equal cm3_transform with the documented Generator of (seed, epoch, key)."""
    raw = samples(dirs["img"])
    lo = build_loader(
        cfg(
            {**CM3, "datasets": ["img"]},
            mixture={"img": 1},
            global_batch_size=1,
            step_lanes=1,
            slot_lanes=1,
            steps_per_epoch=40,
        ),
        {"img": dirs["img"]},
    )
    seen: Counter = Counter()
    draws: dict[tuple[str, int], np.ndarray] = {}
    for b in run(lo) + run(lo):  # two loader epochs: 80 rows, more than two dataset epochs of 72 samples
        toks, mask, seg = b["tokens"][0].numpy(), b["loss_mask"][0].numpy(), b["segment_ids"][0].numpy()
        for s, key in enumerate(b["keys"][0]):
            epoch = seen[key]
            seen[key] += 1
            res = cm3_transform(
                raw[key]["tokens.npy"],
                V,
                key,
                WHOLE,
                np.ones(len(raw[key]["tokens.npy"]), np.uint8),
                rng=draw_rng(SEED, epoch, key),
            )
            assert res.n_spans >= 1
            np.testing.assert_array_equal(toks[seg == s], res.tokens)
            np.testing.assert_array_equal(mask[seg == s], res.loss_mask.astype(bool))
            back, back_mask = cm3_inverse(toks[seg == s], V, mask[seg == s].astype(np.uint8))
            np.testing.assert_array_equal(back, raw[key]["tokens.npy"])  # the sample, recovered exactly
            draws[key, epoch] = res.tokens
        pad = seg < 0
        assert (toks[pad] == V.pad_id).all() and not mask[pad].any()
    assert min(seen.values()) >= 2 and len(seen) == len(raw)
    # a new draw each epoch: the same key is masked differently in epochs 0 and 1 (not always: a
    # draw that masks just the whole image can repeat)
    differ = sum(not np.array_equal(draws[k, 0], draws[k, 1]) for k in raw)
    assert differ >= len(raw) // 3, differ


def test_resume_mid_epoch_gives_identical_batches_for_any_worker_count(dirs):
    ref_lo = build_loader(cfg(CM3), dirs)
    reference = run(ref_lo) + run(ref_lo)
    assert any((b["tokens"] == V.mask_id(0)).any() for b in reference)
    lo = build_loader(cfg(CM3), dirs)
    first = run(lo, 13)  # into the second epoch
    state = lo.state_dict()
    for workers in (0, 2):
        resumed = build_loader(cfg(CM3), dirs, num_workers=workers)
        resumed.load_state_dict(state)
        assert_same(first + run(resumed), reference)
    # the same global batches from two ranks, each with two dataloader workers
    per_rank = [run(build_loader(cfg(CM3), dirs, rank=r, world_size=2, num_workers=2)) for r in range(2)]
    tokens = [torch.cat([r[i]["tokens"] for r in per_rank]) for i in range(10)]
    assert all(torch.equal(t, b["tokens"]) for t, b in zip(tokens, reference))


def test_datasets_not_named_are_untouched(dirs):
    plain = run(build_loader(cfg(), dirs))
    lo = build_loader(cfg({"datasets": ["img"]}), dirs)
    with_cm3 = run(lo)
    masks = {V.mask_id(i) for i in range(16)}
    changed = 0
    for a, b in zip(plain, with_cm3):
        assert torch.equal(a["dataset_index"], b["dataset_index"])
        for r, d in enumerate(a["dataset_index"].tolist()):
            name = lo.dataset_names[d]
            if name == "img":
                changed += not torch.equal(a["tokens"][r], b["tokens"][r])
                continue
            for k in ("tokens", "loss_mask", "segment_ids"):
                assert torch.equal(a[k][r], b[k][r]), (name, k)
            assert not set(b["tokens"][r].tolist()) & masks
    assert changed > 0


def hand_dataset(root: Path, tokens: np.ndarray, mask: np.ndarray) -> str:
    root.mkdir(parents=True, exist_ok=True)
    with TarShardWriter(str(root / "part-00000.tar")) as w:
        w.write("hand", {"tokens.npy": tokens, "loss_mask.npy": mask})
    shards = [describe_shard(str(root), "part-00000.tar", records=1, tokens=len(tokens))]
    write_manifest(str(root), build_manifest("interleaved", shards, {"test": True}, V))
    return str(root)


def test_loss_mask_on_a_hand_built_sample(tmp_path):
    """<s> a b c <break> <boi> i1 i2 i3 <eoi> </s>, prompt `<s> a` without loss. One sample, one lane:
    each row holds its successive epochs, each with its own draw."""
    a, b, c = 11, 12, 13
    i1, i2, i3 = V.image_ids([1, 2, 3]).tolist()
    s, e, brk, boi, eoi = V.bos_id, V.eos_id, V.break_id, V.boi_id, V.eoi_id
    m0, m1 = V.mask_id(0), V.mask_id(1)
    tokens = np.array([s, a, b, c, brk, boi, i1, i2, i3, eoi, e], np.int32)
    mask = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1], np.uint8)
    root = hand_dataset(tmp_path / "hand", tokens, mask)
    conf = {"datasets": ["hand"], "max_spans": 2, "max_span_len": 8}
    lo = build_loader(
        cfg(conf, mixture={"hand": 1}, seq_len=30, global_batch_size=1, step_lanes=1, slot_lanes=1, steps_per_epoch=60),
        {"hand": root},
    )
    # what each span choice must produce (placeholder: no loss; sentinel: its span's first token's
    # loss; moved tokens keep theirs; </s> stays last)
    expected = {
        ((5 + 1, 3),): ([s, a, b, c, brk, boi, m0, eoi, m0, i1, i2, i3, e], [0, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1]),
        ((1, 1),): ([s, m0, b, c, brk, boi, i1, i2, i3, eoi, m0, a, e], [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1]),
        ((1, 1), (6, 3)): (
            [s, m0, b, c, brk, boi, m1, eoi, m0, a, m1, i1, i2, i3, e],
            [0, 0, 1, 1, 1, 1, 0, 1, 0, 0, 1, 1, 1, 1, 1],
        ),
        ((2, 2),): ([s, a, m0, brk, boi, i1, i2, i3, eoi, m0, b, c, e], [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
    }
    found = set()
    epoch = 0
    for batch in run(lo):
        toks, lm, seg = batch["tokens"][0].numpy(), batch["loss_mask"][0].numpy(), batch["segment_ids"][0].numpy()
        for k in range(seg.max() + 1):
            res = cm3_transform(
                tokens,
                V,
                "hand",
                CM3Config(max_spans=2, max_span_len=8, whole_images=True),
                mask,
                rng=draw_rng(SEED, epoch, "hand"),
            )
            np.testing.assert_array_equal(toks[seg == k], res.tokens)
            np.testing.assert_array_equal(lm[seg == k], res.loss_mask.astype(bool))
            for a_, n_ in res.spans:  # an image is masked whole, never partly
                assert not (6 <= a_ <= 8) or (a_, n_) == (6, 3)
            spans = tuple(res.spans)
            if spans in expected:
                want_t, want_m = expected[spans]
                assert toks[seg == k].tolist() == want_t and lm[seg == k].astype(int).tolist() == want_m
                found.add(spans)
            epoch += 1
    assert epoch > 60 and found == set(expected), found  # every hand-written case was drawn and checked


def test_whole_images_never_split_and_never_cross_a_break():
    rng = np.random.default_rng(0)
    for t in range(300):
        parts = [V.bos_id]
        for _ in range(int(rng.integers(1, 4))):
            parts += rng.integers(0, V.text_size, int(rng.integers(1, 12))).tolist()
            parts += [V.break_id, V.boi_id, *V.image_ids(rng.integers(0, 64, 16)).tolist(), V.eoi_id, V.break_id]
        toks = np.array(parts + [V.eos_id], np.int32)
        res = cm3_transform(toks, V, f"k{t}", WHOLE, rng=draw_rng(1, t, f"k{t}"))
        regs = regions(toks, V)
        for a, n in res.spans:
            reg = next(r for r in regs if r[0] <= a and a + n <= r[1])  # inside one region: no <break> crossed
            if toks[a] >= V.image_offset:
                assert (a, a + n) == reg
        assert np.array_equal(cm3_inverse(res.tokens, V)[0], toks)


def test_rate_selects_a_share_of_samples_per_epoch():
    keys = [f"k{i}" for i in range(4000)]
    for rate in (0.0, 0.25, 1.0):
        share = np.mean([is_drawn(3, 0, k, rate) for k in keys])
        assert abs(share - rate) < 0.03
    assert [is_drawn(3, 0, k, 0.5) for k in keys] != [is_drawn(3, 1, k, 0.5) for k in keys]
    assert [is_drawn(3, 1, k, 0.5) for k in keys] == [is_drawn(3, 1, k, 0.5) for k in keys]


def test_order_includes_cm3(dirs):
    lo = build_loader(cfg(), dirs)
    run(lo, 2)
    state = lo.state_dict()
    other = build_loader(cfg(CM3), dirs)
    with pytest.raises(Exception, match="different data order"):
        other.load_state_dict(state)
    assert build_loader(cfg({"datasets": []}), dirs).fingerprint == lo.fingerprint  # off: order unchanged


@pytest.mark.parametrize(
    "conf,key,word",
    [
        ({"datasets": ["nope"]}, "loader.cm3.datasets", "not in loader.mixture"),
        ({"datasets": ["text"]}, "loader.cm3.datasets", "text-token dataset"),
        ({"datasets": ["img"], "rate": 1.5}, "loader.cm3.rate", "[0.0, 1.0]"),
        ({"datasets": ["img"], "rate": -0.1}, "loader.cm3.rate", "[0.0, 1.0]"),
        ({"datasets": ["img"], "max_spans": 17}, "loader.cm3.max_spans", "16"),
        ({"datasets": ["img"], "lamda": 1}, "loader.cm3.lamda", "unknown key"),
        ({"datasets": ["img"], "max_spans": 16}, "loader.cm3.max_spans", "less than loader.seq_len"),
        ("img", "loader.cm3", "must be a mapping"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(dirs, conf, key, word):
    extra = {"seq_len": 30} if conf == {"datasets": ["img"], "max_spans": 16} else {}
    with pytest.raises(ConfigError) as e:
        build_loader(cfg(conf, **extra), dirs)
    msg = str(e.value)
    assert f"'{key}'" in msg and word in msg and "\n" not in msg
