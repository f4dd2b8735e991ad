"""Loader: real processes over gloo, torchdata's StatefulDataLoader, datasets, webdataset, the CLI."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest
import torch
import yaml

from jamdata.config import Config
from jamdata.loader import build_loader, build_spec, hf_iterable_dataset
from jamdata.loader.stream import PackedStream
from jamdata.loader.testing import make_tars, make_text_tokens


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("interop")
    return {
        "text": str(make_text_tokens(d / "text", {"wiki": [30, 25], "web": [30]}, seed=1)),
        "img": str(make_tars(d / "img", "image_caption", [20, 15, 12], seed=2)),
    }


LOADER = {
    "mixture": {"text": 0.6, "img": 0.4},
    "seq_len": 48,
    "global_batch_size": 4,
    "shuffle_block": 8,
    "steps_per_epoch": 8,
    "seed": 3,
}


def cfg(**kw):
    return Config({"loader": {**LOADER, **kw}}).section("loader")


def tokens(batches):
    return [b["tokens"] for b in batches]


# -- two real ranks over gloo ---------------------------------------------------------------------
def _rank_main(rank: int, world: int, init: str, dirs: dict, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        lo = build_loader(cfg(), dirs, rank=rank, world_size=world)
        got = []
        for b in lo:
            got.append(b)
            if len(got) == 5:
                break
        state = lo.state_dict()  # gathered over both ranks
        torch.save(
            {"tokens": [b["tokens"] for b in got], "keys": [b["keys"] for b in got], "state": state},
            f"{out}/rank{rank}.pt",
        )
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_gloo_partition_and_elastic_resume(dirs, tmp_path):
    ctx = mp.get_context("fork")
    init = f"file://{tmp_path}/store"
    procs = [ctx.Process(target=_rank_main, args=(r, 2, init, dirs, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    ref = list(build_loader(cfg(), dirs))
    for step in range(5):
        assert torch.equal(torch.cat([res[0]["tokens"][step], res[1]["tokens"][step]]), ref[step]["tokens"])
        assert res[0]["keys"][step] + res[1]["keys"][step] == ref[step]["keys"]
    keys = [k for r in res for b in r["keys"] for row in b for k in row]
    img_keys = [k for k in keys if ":" not in k]
    assert len(img_keys) == len(set(img_keys))  # no image sample twice across the ranks
    assert res[0]["state"] == res[1]["state"] and res[0]["state"]["step"] == 5
    one = build_loader(cfg(), dirs)  # the gathered state resumes a single process
    one.load_state_dict(res[0]["state"])
    assert all(torch.equal(a, b) for a, b in zip(tokens(list(one)), tokens(ref[5:])))


# -- torchdata's StatefulDataLoader ---------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_protocol(dirs, workers):
    from torchdata.stateful_dataloader import StatefulDataLoader

    spec, sources = build_spec(cfg(), dirs)
    ref = tokens(list(build_loader(cfg(), dirs)))

    def loader():
        return StatefulDataLoader(PackedStream(spec, sources, steps_per_epoch=8), batch_size=None, num_workers=workers)

    dl = loader()
    it = iter(dl)
    first = [next(it)["tokens"] for _ in range(3)]
    state = dl.state_dict()
    dl2 = loader()
    dl2.load_state_dict(state)
    rest = [b["tokens"] for b in dl2]
    assert all(torch.equal(a, b) for a, b in zip(first + rest, ref)) and len(first + rest) == 8


# -- datasets / webdataset --------------------------------------------------------------------------
def test_hf_iterable_dataset_gives_the_same_rows(dirs):
    lo = build_loader(cfg(), dirs)
    ref = list(build_loader(cfg(), dirs))
    rows = list(hf_iterable_dataset(lo))
    assert len(rows) == 8 * 4
    for i, row in enumerate(rows):
        b = ref[i // 4]
        assert row["tokens"] == b["tokens"][i % 4].tolist() and row["keys"] == b["keys"][i % 4]
        assert row["dataset"] == lo.dataset_names[int(b["dataset_index"][i % 4])]


def test_tars_readable_by_plain_webdataset(dirs):
    import webdataset as wds

    from jamdata.formats.wds import iter_samples

    tar = f"{dirs['img']}/part-00000.tar"
    ours = {s.key: s.decoded()["tokens.npy"] for s in iter_samples(tar)}
    theirs = {s["__key__"]: s["tokens.npy"] for s in wds.WebDataset(tar, shardshuffle=False).decode()}
    assert ours.keys() == theirs.keys()
    assert all((ours[k] == theirs[k]).all() for k in ours)


# -- jamdata loader inspect ---------------------------------------------------------------------------
def test_inspect_prints_the_keys_of_step_n(dirs, tmp_path, capsys):
    from jamdata.cli import main

    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump({"run": {"out_dir": str(tmp_path)}, "loader": {**LOADER, "paths": dirs}}))
    ref = list(build_loader(cfg(), dirs))
    assert main(["loader", "inspect", "--config", str(conf), "--step", "6", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["keys"] for r in rows] == ref[6]["keys"]
    assert [r["step"] for r in rows] == [6] * 4
    assert main(["loader", "inspect", "--config", str(conf), "--step", "0"]) == 0
    assert "step 0 row 3" in capsys.readouterr().out
