"""ZeRO-3 construction on 2 gloo ranks (CPU): a JAM-Cross fused from two imported LLaMA parents is
built inside `deepspeed.zero.Init` (every parameter partitioned as it is built, filled one gathered
parameter at a time) and gathers back to exactly the unpartitioned fusion; `jamtrain train` under
ZeRO-3 gives the ZeRO-2 run's loss at step 1, and a run killed after step 3 resumes from step 2 with
the same loss at step 3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from test_models_hf_train import ARCH, imported_parent
from test_train_data import REPO, VOCAB, write_config
from test_train_run import ENV, _port, data, losses, torchrun  # noqa: F401  (data is a fixture)

WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    import torch.multiprocessing as mp

    def run(rank, out, section, vocab_size):
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
        import deepspeed
        from deepspeed import zero
        deepspeed.init_distributed(dist_backend="gloo", verbose=False)
        torch.set_num_threads(1)
        from jamtrain.models import build_model
        ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3,
              "stage3_param_persistence_threshold": 0}, "bf16": {"enabled": False}}
        torch.manual_seed(7)
        model = build_model(section, vocab_size, zero=ds)
        params = dict(model.named_parameters())
        local = {n: p.ds_tensor.numel() for n, p in params.items()}
        full = {n: p.ds_numel for n, p in params.items()}
        empty = all(p.numel() == 0 for p in params.values())
        if rank == 0:
            state = {}
            for n, p in params.items():
                with zero.GatheredParameters([p]):
                    state[n] = p.data.clone()
            torch.save(state, f"{out}/gathered.pt")
        else:
            for p in params.values():
                with zero.GatheredParameters([p]):
                    pass
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump({"local": local, "full": full, "empty": empty}, f)
        torch.distributed.barrier()

    if __name__ == "__main__":
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[4])
        mp.spawn(run, args=(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])), nprocs=2)
""")


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    root = tmp_path_factory.mktemp("parents")
    return str(imported_parent(root, "text", 1)), str(imported_parent(root, "image", 2))


def _section(parents) -> dict:
    return {
        **ARCH,
        "fusion": "cross",
        "text_checkpoint": parents[0],
        "image_checkpoint": parents[1],
        "extend_vocab": True,
        "n_image_codes": VOCAB.n_image_codes,
        "text_rows": VOCAB.image_offset,
        "cross_kernel": "reference",
    }


def test_zero3_build_partitions_every_parameter_and_gathers_to_the_plain_fusion(parents, tmp_path):
    from jamtrain.models import build_model

    section = _section(parents)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**ENV, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    r = subprocess.run(
        [sys.executable, str(script), str(tmp_path), json.dumps(section), str(VOCAB.size), str(_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    torch.manual_seed(7)
    plain = build_model(section, VOCAB.size)
    want = plain.state_dict()
    for x in ranks:
        assert x["empty"], "a parameter kept its full data outside a gather"
        assert x["full"] == {k: v.numel() for k, v in want.items()}
        # each rank stores about half of every parameter (ZeRO-3 pads to the world size)
        assert all(x["local"][k] == -(-v.numel() // 2) for k, v in want.items())
    got = torch.load(tmp_path / "gathered.pt", weights_only=True)
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert torch.equal(got[k], v), k


def test_zero3_run_from_imported_parents_matches_zero2_at_step_1_and_resumes(data, parents, tmp_path):  # noqa: F811
    model = _section(parents)
    ds = json.loads((REPO / "configs" / "deepspeed-cpu.json").read_text())
    ds["zero_optimization"] = {"stage": 3, "stage3_param_persistence_threshold": 0}
    (tmp_path / "ds3.json").write_text(json.dumps(ds))
    small_eval = {"max_samples": 4, "holdout_fraction": 0.2}
    two = write_config(
        tmp_path / "z2.yaml", data, tmp_path / "z2", model=model, steps=1, save_every=0, export=False, eval=small_eval
    )
    r = torchrun("--config", str(two))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    want = losses(tmp_path / "z2")[1]

    three = write_config(
        tmp_path / "z3.yaml",
        data,
        tmp_path / "z3",
        ds_json=str(tmp_path / "ds3.json"),
        model=model,
        steps=4,
        save_every=2,
        eval=small_eval,
    )
    r = torchrun("--config", str(three), fault="kill-after-step:3")
    assert r.returncode != 0 and f"exitcode  : {-signal.SIGKILL}" in r.stdout + r.stderr, r.stderr[-3000:]
    first = losses(tmp_path / "z3")
    assert sorted(first) == [1, 2, 3]
    assert first[1] == pytest.approx(want, rel=1e-5, abs=0)
    r = torchrun("--config", str(three), "--resume")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "model built partitioned over 2 rank(s)" in r.stdout, r.stdout[-3000:]
    assert "ZeRO-3" in r.stdout and "resumed from" in r.stdout and "step-00000002 (step 2)" in r.stdout
    again = losses(tmp_path / "z3")
    assert sorted(again) == [1, 2, 3, 4] and again[3] == first[3]
    assert (tmp_path / "z3" / "export" / "model.safetensors").exists()
