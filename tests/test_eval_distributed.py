"""Evaluation under ZeRO-3 on 2 gloo ranks (CPU): every rank runs the same number of forward passes
(the one with fewer samples pads with masked dummy batches; unequal counts would hang ZeRO-3's
parameter gathering, so the run is bounded by a timeout) and the figures equal a one-rank evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from jamtrain.evaluate import Holdout, dummy_batch, evaluate, score_batch
from jamtrain.models import build_model
from test_train_data import REPO, TINY_MODEL, VOCAB, write_datasets

WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    import torch.multiprocessing as mp

    def run(rank, out, data):
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
        import deepspeed
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="gloo", verbose=False)
        torch.set_num_threads(1)
        from jamtrain.evaluate import Holdout, evaluate
        from jamtrain.models import build_model
        from test_train_data import TINY_MODEL, VOCAB
        torch.manual_seed(0)
        model = build_model(TINY_MODEL, VOCAB.size)
        ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "bf16": {"enabled": False}, "steps_per_print": 10 ** 9}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
        calls = [0]
        engine.module.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
        engine.eval()
        sets = {"image-caption": (data["image_caption"], Holdout(None)), "text-tokens": (data["text"], Holdout(0.1))}
        res = evaluate(engine.module, sets, VOCAB, seq_len=32, batch_size=4, max_samples=17, rank=rank, world_size=2)
        sharded = sum(1 for p in engine.module.parameters() if p.numel() == 0)  # ZeRO-3 partitions them
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump({"res": res, "forwards": calls[0], "partitioned": sharded}, f)
        torch.distributed.barrier()

    if __name__ == "__main__":
        out, data = sys.argv[1], json.loads(sys.argv[2])
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3])
        mp.spawn(run, args=(out, data), nprocs=2)
""")


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dummy_batches_add_nothing():
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, VOCAB.size).eval()
    assert score_batch(model, dummy_batch(VOCAB), VOCAB, torch.device("cpu")).abs().sum() == 0


def test_zero3_two_rank_eval_runs_equal_forwards_and_matches_one_rank(tmp_path):
    data = write_datasets(tmp_path / "data", n_text=40, n_images=24, n_instruct=2)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}",
    }
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    try:
        r = subprocess.run(
            [sys.executable, str(script), str(tmp_path), json.dumps(data), str(_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("2-rank ZeRO-3 evaluation did not finish (ranks ran different numbers of forward passes?)")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert all(x["partitioned"] > 0 for x in ranks), "the model was not partitioned by ZeRO-3"
    # 17 image samples at batch 4: 9 + 8 samples; 3 rounds of 8, the second rank scores a dummy in the last
    assert ranks[0]["forwards"] == ranks[1]["forwards"]
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, VOCAB.size).eval()
    sets = {"image-caption": (data["image_caption"], Holdout(None)), "text-tokens": (data["text"], Holdout(0.1))}
    one = evaluate(model, sets, VOCAB, seq_len=32, batch_size=4, max_samples=17)
    assert one["image-caption"]["samples"] == 17 and one["image-caption"]["tokens"] > 0
    for x in ranks:
        for name, want in one.items():
            got = x["res"][name]
            assert {k: got[k] for k in ("samples", "tokens", "text_tokens", "image_tokens")} == {
                k: want[k] for k in ("samples", "tokens", "text_tokens", "image_tokens")
            }
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), name
