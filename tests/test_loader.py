"""Loader: partitioning, packing content, mixture proportions and exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jamdata.config import Config
from jamdata.formats.megatron import IndexedDataset
from jamdata.formats.wds import iter_samples
from jamdata.loader import LoaderError, build_loader, merge_state_dicts, order
from jamdata.loader.testing import VOCAB, make_tars, make_text_tokens

SAMPLE_LEN = 3 + 2 + 16 + 2  # caption 3, <break><boi>, 4x4 codes, <eoi></s>


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("loader")
    return {
        "text": str(make_text_tokens(d / "text", {"wiki": [40, 33], "web": [50]}, seed=1)),
        "img": str(make_tars(d / "img", "image_caption", [30, 25, 17], seed=2)),
        "inst": str(make_tars(d / "inst", "interleaved", [20, 21], seed=3, prefix="i")),
        # fixed-length samples, two per row, 80 samples over 3 uneven shards
        "fixed": str(make_tars(d / "fixed", "image_caption", [30, 27, 23], seed=4, caption_len=(3, 4), prefix="f")),
    }


def cfg(**kw) -> Config:
    base = {
        "mixture": {"text": 0.5, "img": 0.3, "inst": 0.2},
        "seq_len": 64,
        "global_batch_size": 4,
        "shuffle_block": 8,
        "steps_per_epoch": 12,
        "seed": 7,
    }
    base.update(kw)
    return Config({"loader": base}).section("loader")


def run(loader, n=None):
    out = []
    for b in loader:
        out.append(b)
        if n is not None and len(out) == n:
            break
    return out


def global_batches(per_rank: list[list[dict]]) -> list[torch.Tensor]:
    return [torch.cat([r[i]["tokens"] for r in per_rank]) for i in range(len(per_rank[0]))]


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x["tokens"], y["tokens"])
        assert torch.equal(x["loss_mask"], y["loss_mask"])
        assert torch.equal(x["segment_ids"], y["segment_ids"])
        assert torch.equal(x["dataset_index"], y["dataset_index"])
        assert x["keys"] == y["keys"]


@pytest.fixture(scope="module")
def reference(dirs):
    """Two uninterrupted epochs, one process."""
    lo = build_loader(cfg(), dirs)
    return run(lo) + run(lo)


# -- order ---------------------------------------------------------------------------------------
def test_lane_spans_cover_every_sample_once():
    for n in (1, 7, 80, 83, 1001):
        for lanes in (1, 3, 8, 16):
            spans = [order.lane_span(n, l, lanes) for l in range(lanes)]
            assert [i for s in spans for i in range(*s)] == list(range(n))
            assert max(b - a for a, b in spans) - min(b - a for a, b in spans) <= 1


def test_mixture_schedule_is_largest_deficit():
    q = tuple(order.mixture_quotas([0.5, 0.3, 0.2], 10))
    assert q == (5, 3, 2)
    assert order.mixture_schedule(q).tolist() == [0, 1, 2, 0, 0, 1, 0, 2, 1, 0]
    assert order.mixture_quotas([1, 1, 1], 10) == [4, 3, 3]


def test_start_up_reads_only_manifests(dirs, tmp_path):
    import shutil

    copy = tmp_path / "img"
    shutil.copytree(dirs["img"], copy)
    for tar in copy.glob("*.tar"):
        tar.unlink()  # shards are opened lazily by the reader, never at start-up
    lo = build_loader(cfg(mixture={"img": 1}), {"img": str(copy)})
    assert len(lo) == 12 and lo.dataset_names == ["img"]


# -- partitioning --------------------------------------------------------------------------------
def fixed_cfg(**kw):
    return cfg(
        mixture={"fixed": 1},
        seq_len=2 * SAMPLE_LEN,
        global_batch_size=4,
        slot_lanes=4,
        steps_per_epoch=10,
        shuffle_block=4,
        **kw,
    )


def test_two_ranks_two_workers_no_duplicates_no_omissions(dirs):
    """80 samples, 8 lanes of 10, two samples per row: 10 steps read each sample exactly once."""
    per_rank = []
    for rank in range(2):
        per_rank.append(
            run(build_loader(fixed_cfg(), {"fixed": dirs["fixed"]}, rank=rank, world_size=2, num_workers=2))
        )
    keys = [k for r in per_rank for b in r for row in b["keys"] for k in row]
    expected = [s.key for i in range(3) for s in iter_samples(f"{dirs['fixed']}/part-{i:05d}.tar")]
    assert len(keys) == 80 and sorted(keys) == sorted(expected)
    # the same global batches as one process without workers (order independent of topology)
    single = run(build_loader(fixed_cfg(), {"fixed": dirs["fixed"]}))
    assert all(torch.equal(a, b["tokens"]) for a, b in zip(global_batches(per_rank), single))
    # each row's content is exactly its samples' tokens
    tokens = {
        s.key: s.decoded()["tokens.npy"] for i in range(3) for s in iter_samples(f"{dirs['fixed']}/part-{i:05d}.tar")
    }
    for b in single:
        for row, keys_ in zip(b["tokens"], b["keys"]):
            assert torch.equal(row, torch.from_numpy(np.concatenate([tokens[k] for k in keys_]).astype(np.int64)))


def test_ranks_simulated_match_single_process_mixture(dirs, reference):
    per_rank = [run(build_loader(cfg(), dirs, rank=r, world_size=2)) for r in range(2)]
    assert [len(r) for r in per_rank] == [12, 12]  # same number of batches on every rank
    ref = [b["tokens"] for b in reference[:12]]
    assert all(torch.equal(a, b) for a, b in zip(global_batches(per_rank), ref))


# -- packing content -----------------------------------------------------------------------------
@pytest.mark.parametrize("run_rows,slot_lanes", [(8, None), (0, None), (8, 2)])
def test_rows_hold_exactly_their_documents(dirs, reference, run_rows, slot_lanes):
    """run_rows 0 shuffles text document by document; slot_lanes 2 packs two rows of a lane at once."""
    if (run_rows, slot_lanes) != (8, None):  # the reference's defaults
        reference = run(build_loader(cfg(text_run_rows=run_rows, slot_lanes=slot_lanes), dirs))
    text = {}
    for src, n in (("wiki", 2), ("web", 1)):
        for i in range(n):
            ds = IndexedDataset(f"{dirs['text']}/{src}/part-{i:05d}")
            text.update({f"{src}/part-{i:05d}:{j}": np.asarray(ds[j]) for j in range(len(ds))})
    tars = {}
    for name in ("img", "inst"):
        from pathlib import Path

        for tar in sorted(Path(dirs[name]).glob("*.tar")):
            tars.update({s.key: s.decoded() for s in iter_samples(str(tar))})
    kinds = set()
    for b in reference:
        for r in range(4):
            toks, mask, seg = b["tokens"][r].numpy(), b["loss_mask"][r].numpy(), b["segment_ids"][r].numpy()
            keys, d = b["keys"][r], int(b["dataset_index"][r])
            kinds.add(d)
            assert seg.max() == len(keys) - 1 and (np.diff(seg[seg >= 0]) >= 0).all()
            if d == 0:  # text: head of the row may continue a document; the last may run on
                assert (seg >= 0).all() and mask.all()
                for s, key in enumerate(keys):
                    piece, doc = toks[seg == s], text[key]
                    if s == 0 == len(keys) - 1:  # a window inside one long document
                        assert any(
                            np.array_equal(piece, doc[o : o + len(piece)]) for o in range(len(doc) - len(piece) + 1)
                        )
                    elif s == 0:
                        assert np.array_equal(piece, doc[len(doc) - len(piece) :])
                    elif s == len(keys) - 1:
                        assert np.array_equal(piece, doc[: len(piece)])
                    else:
                        assert np.array_equal(piece, doc)
                continue
            for s, key in enumerate(keys):
                sample = tars[key]
                want = sample["tokens.npy"]
                piece = toks[seg == s]
                assert len(piece) <= len(want) and np.array_equal(piece, want[: len(piece)])
                if len(piece) < len(want):  # truncated: never inside an image
                    assert (piece == VOCAB.boi_id).sum() == (piece == VOCAB.eoi_id).sum()
                want_mask = sample.get("loss_mask.npy", np.ones(len(want), np.uint8))[: len(piece)].astype(bool)
                assert np.array_equal(mask[seg == s], want_mask)
            pad = seg < 0
            assert (toks[pad] == VOCAB.pad_id).all() and not mask[pad].any()
            assert pad.sum() == 0 or np.flatnonzero(pad)[0] == (~pad).sum()  # padding only at the end
    assert kinds == {0, 1, 2}


def test_oversize_truncated_before_image_or_skipped(dirs):
    big = cfg(mixture={"inst": 1}, seq_len=30)  # interleaved samples are 23..~70 tokens
    lo = build_loader(big, dirs)
    for b in run(lo, 4):
        for row, seg in zip(b["tokens"], b["segment_ids"]):
            boi = (row == VOCAB.boi_id).nonzero().flatten().tolist()
            eoi = (row == VOCAB.eoi_id).nonzero().flatten().tolist()
            assert len(boi) == len(eoi) and all(e > s for s, e in zip(boi, eoi))  # whole images only
    assert lo.counters.get("truncated", 0) > 0
    lo = build_loader(cfg(mixture={"inst": 1}, seq_len=80, oversize="skip"), dirs)
    for b in run(lo, 4):
        assert (b["segment_ids"] >= 0).sum(dim=1).max() <= 80
    assert lo.counters.get("skipped_oversize", 0) > 0 and "truncated" not in lo.counters
    with pytest.raises(LoaderError, match="fits in seq_len 20"):
        run(build_loader(cfg(mixture={"inst": 1}, seq_len=20, oversize="skip"), dirs), 1)


def test_mixture_proportions_within_one_percent_over_1000_batches(dirs):
    lo = build_loader(cfg(seq_len=16, global_batch_size=4, steps_per_epoch=1000), dirs)
    counts = np.zeros(3)
    n = 0
    for b in lo:
        counts += np.bincount(b["dataset_index"].numpy(), minlength=3)
        n += 1
    assert n == 1000
    share = counts / counts.sum()
    assert np.abs(share - [0.5, 0.3, 0.2]).max() < 0.01, share
    assert lo.state_dict()["lanes"]["0"]["ds"]["img"][0] >= 1  # datasets repeat for more epochs
    epochs = lo.dataset_epochs()
    assert epochs["text"][0] >= 1 and epochs["img"][0] >= 1 and set(epochs) == {"text", "img", "inst"}


def test_config_errors_name_the_key(dirs):
    with pytest.raises(Exception, match="loader.sed"):
        build_loader(cfg(sed=1), dirs)
    with pytest.raises(LoaderError, match="world size 3 must divide"):
        build_loader(cfg(), dirs, rank=0, world_size=3)
    with pytest.raises(LoaderError, match="num_workers 3"):
        build_loader(cfg(), dirs, num_workers=3)
    with pytest.raises(LoaderError, match="mixture.nope"):
        build_loader(cfg(mixture={"nope": 1}), dirs)


def test_vocab_mismatch_refused(dirs, tmp_path):
    from jamdata.vocab import JointVocab, VocabMismatchError

    other = make_tars(tmp_path / "o", "image_caption", [3], vocab=JointVocab(1000, "1" * 64, 64))
    with pytest.raises(VocabMismatchError):
        build_loader(cfg(mixture={"img": 1, "o": 1}), {"img": dirs["img"], "o": str(other)})


# -- exact resume --------------------------------------------------------------------------------
@pytest.mark.parametrize("workers,persistent", [(0, False), (1, False), (2, False), (2, True)])
def test_resume_exact(dirs, reference, workers, persistent):
    lo = build_loader(cfg(), dirs, num_workers=workers, persistent_workers=persistent)
    first = run(lo, 5)  # stop mid-epoch (workers have prefetched further)
    state = lo.state_dict()
    assert state["step"] == 5
    lo2 = build_loader(cfg(), dirs, num_workers=workers, persistent_workers=persistent)
    lo2.load_state_dict(state)
    rest = run(lo2) + run(lo2)  # rest of epoch 0, then epoch 1
    assert_same(first + rest, reference)


def test_resume_twice_in_a_row_and_at_epoch_boundary(dirs, reference):
    lo = build_loader(cfg(), dirs, num_workers=2)
    got = run(lo, 3)
    for stop in (9, 12):
        lo2 = build_loader(cfg(), dirs, num_workers=2)
        lo2.load_state_dict(lo.state_dict())
        got += run(lo2, stop - len(got))
        lo = lo2
    assert lo.step == 12 and lo.epoch == 1
    lo2 = build_loader(cfg(), dirs, num_workers=1)
    lo2.load_state_dict(lo.state_dict())
    got += run(lo2)
    assert_same(got, reference)


def test_persistent_workers_keep_full_epochs(dirs, reference):
    lo = build_loader(cfg(), dirs, num_workers=2, persistent_workers=True)
    e0, e1 = run(lo), run(lo)
    assert len(e0) == len(e1) == 12
    assert_same(e0 + e1, reference)
    lo.close()


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (2, 4)])
def test_resume_after_changing_world_size(dirs, reference, before, after):
    c = cfg(slot_lanes=4)
    loaders = [build_loader(c, dirs, rank=r, world_size=before) for r in range(before)]
    first = [run(l, 5) for l in loaders]
    state = merge_state_dicts([l.state_dict() for l in loaders])
    if before > 1:  # one rank's own state does not cover the lanes of the new topology
        with pytest.raises(LoaderError, match="covers lanes"):
            build_loader(c, dirs, rank=0, world_size=after).load_state_dict(loaders[-1].state_dict())
    resumed = []
    for r in range(after):
        l = build_loader(c, dirs, rank=r, world_size=after)
        l.load_state_dict(state)
        resumed.append(run(l))
    ref = [b["tokens"] for b in run(build_loader(c, dirs))]
    assert all(torch.equal(a, b) for a, b in zip(global_batches(first) + global_batches(resumed), ref))


def test_state_from_other_order_refused(dirs):
    lo = build_loader(cfg(), dirs)
    run(lo, 2)
    with pytest.raises(LoaderError, match="different data order"):
        build_loader(cfg(seed=8), dirs).load_state_dict(lo.state_dict())


def test_resume_cost_does_not_grow_with_step(dirs):
    lo = build_loader(cfg(steps_per_epoch=200), dirs)
    run(lo, 150)
    state = lo.state_dict()
    import json

    assert len(json.dumps(state)) < 4000  # a few integers per lane, whatever the step
    nxt = run(lo, 1)[0]
    lo2 = build_loader(cfg(steps_per_epoch=200), dirs)
    lo2.load_state_dict(state)
    assert_same([next(iter(lo2))], [nxt])


def test_token_dtype_int32_default_int64_same_values_and_order(dirs, reference):
    assert reference[0]["tokens"].dtype == torch.int32
    lo64 = build_loader(cfg(token_dtype="int64"), dirs)
    wide = run(lo64, 5)
    assert wide[0]["tokens"].dtype == torch.int64
    assert all(torch.equal(a["tokens"].long(), b["tokens"]) for a, b in zip(reference, wide))
    # the dtype is not part of the order: a state saved by one resumes the other
    lo32 = build_loader(cfg(), dirs)
    lo32.load_state_dict(lo64.state_dict())
    assert torch.equal(next(iter(lo32))["tokens"].long(), reference[5]["tokens"].long())


def test_leaving_and_reentering_an_epoch_in_process_continues_exactly(dirs, reference):
    lo = build_loader(cfg(), dirs)
    first = run(lo, 3)  # leaves the loop after 3 of 12 steps
    assert lo.step == 3
    rest = run(lo)
    assert_same(first + rest, reference[:12])


def test_text_runs_stay_inside_back_to_back_stretches_and_keep_their_order():
    # shard 0: docs back to back; shard 1 unreadable (length 0); a gap before position 8
    shards = np.array([0, 0, 0, 0, 0, 1, 1, 0, 0, 0])
    length = np.array([30, 30, 30, 30, 30, 0, 0, 30, 30, 30])
    start = np.array([0, 30, 60, 90, 120, 0, 0, 150, 500, 530])
    firsts = order.text_runs(shards, start, length, 64)
    assert firsts.tolist() == [0, 3, 5, 7, 8]  # windows of 64 tokens, shard change, gap
    runs = np.split(np.arange(10), firsts[1:])
    for run in runs:
        assert len(set(shards[run])) == 1
        assert (start[run][1:] == start[run][:-1] + length[run][:-1]).all()
    idx, run_at = order.run_order(order.rng(0, "t"), firsts, 10)
    assert sorted(idx.tolist()) == list(range(10))
    assert {tuple(idx[a:b]) for a, b in zip(run_at, list(run_at[1:]) + [10])} == {tuple(r) for r in runs}
    # merging the unreadable shard's positions into one run moves no other run
    alone = order.text_runs(shards, start, length, 64)
    split = np.array([0, 3, 5, 6, 7, 8])
    a, _ = order.run_order(order.rng(0, "t"), alone, 10)
    b, _ = order.run_order(order.rng(0, "t"), split, 10)
    assert [i for i in a if i not in (5, 6)] == [i for i in b if i not in (5, 6)]


def test_text_run_rows_is_part_of_the_order(dirs):
    lo = build_loader(cfg(mixture={"text": 1}, text_run_rows=1, steps_per_epoch=20), dirs)
    first = [k for b in run(lo) for row in b["keys"] for k in row]
    lo0 = build_loader(cfg(mixture={"text": 1}, text_run_rows=0, steps_per_epoch=20), dirs)
    per_doc = [k for b in run(lo0) for row in b["keys"] for k in row]
    assert first != per_doc  # the run length is part of the order
    with pytest.raises(LoaderError, match="different data order"):
        lo0.load_state_dict(lo.state_dict())
