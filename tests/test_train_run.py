"""End-to-end `jamtrain` runs with DeepSpeed on CPU (gloo): 2 ranks under ZeRO-2, a run killed with
SIGKILL (mid-checkpoint) and resumed, a corrupt checkpoint refused, eval and export of the result.
Every run is a real subprocess, so each resume starts from a fresh process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_train_data import REPO, write_config, write_datasets

BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "DS_ACCELERATOR": "cpu",
    "CUDA_VISIBLE_DEVICES": "",
    "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions")),
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(REPO),
}
for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(k, None)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    return write_datasets(tmp_path_factory.mktemp("data"))


def jamtrain(*args: str, fault: str | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    env = dict(ENV, **({"JAMTRAIN_FAULT": fault} if fault else {}))
    return subprocess.run([str(BIN / "jamtrain"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def torchrun(*args: str, fault: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`jamtrain train ARGS` on 2 gloo ranks through torchrun."""
    env = dict(ENV, **({"JAMTRAIN_FAULT": fault} if fault else {}))
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_port()), "-m", "jamtrain.cli"]
    return subprocess.run([*cmd, "train", *args], env=env, capture_output=True, text=True, timeout=timeout)


def losses(out: Path) -> dict[int, float]:
    """Step -> loss from the JSON-lines log; a step logged twice (killed, then resumed) keeps the last."""
    got = {}
    for line in (out / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            got[rec["step"]] = rec["loss"]
    return got


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """The uninterrupted single-process run (6 steps, checkpoints at 2, 4, 6)."""
    root = tmp_path_factory.mktemp("ref")
    cfg = write_config(root / "cfg.yaml", data, root / "train")
    r = jamtrain("train", "--config", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    return root


def test_single_process_run_logs_falling_loss_exports_and_evaluates(reference):
    out = reference / "train"
    recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[-1]["loss"] < steps[0]["loss"]
    for r in steps:
        assert r["tokens_text"] > 0 and r["tokens_image"] > 0 and r["loss_text"] > 0 and r["loss_image"] > 0
        assert r["tokens/text-tokens"] + r["tokens/image-caption"] == r["tokens_text"] + r["tokens_image"]
        assert r["tokens_per_s"] > 0 and r["lr"] > 0
    assert [round(r["lr"] / 3e-3, 4) for r in steps[:2]] == [0.5, 1.0]  # warm-up over 2 steps
    final = json.loads((out / "eval.json").read_text())["datasets"]
    assert set(final) == {"text-tokens", "image-caption"} and all(v["ppl"] > 1 for v in final.values())
    # `jamtrain eval` on the exported weights gives the same figures as the run's own evaluation
    r = jamtrain("eval", "--config", str(reference / "cfg.yaml"), "--json", str(reference / "eval-cli.json"))
    assert r.returncode == 0, r.stderr
    cli = json.loads((reference / "eval-cli.json").read_text())["datasets"]
    for name, v in final.items():
        assert cli[name]["ppl"] == pytest.approx(v["ppl"], rel=1e-5) and cli[name]["tokens"] == v["tokens"]
    assert "image-caption" in r.stdout and "ppl" in r.stdout


def test_killed_mid_checkpoint_then_resumed_matches_the_uninterrupted_run(data, reference, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "train")
    # SIGKILL during the step-4 save: DeepSpeed's files are written, the checkpoint is not sealed
    r = jamtrain("train", "--config", str(cfg), fault="kill-in-save:4")
    assert r.returncode == -signal.SIGKILL
    ckdir = tmp_path / "train" / "checkpoints"
    assert (ckdir / ".tmp-step-00000004").is_dir() and not (ckdir / "step-00000004").exists()
    assert (ckdir / "step-00000002" / "COMPLETE.json").exists()
    r = jamtrain("train", "--config", str(cfg), "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed from" in r.stdout and "step-00000002 (step 2)" in r.stdout
    want, got = losses(reference / "train"), losses(tmp_path / "train")
    assert got == want  # exactly equal, step for step (steps 3-4 re-run after the resume)
    assert not (ckdir / ".tmp-step-00000004").exists()


def test_corrupt_latest_checkpoint_is_refused_and_the_previous_one_used(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference / "train", run)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text((reference / "cfg.yaml").read_text().replace(str(reference / "train"), str(run)))
    shard = next((run / "checkpoints" / "step-00000006").glob("zero_pp_rank_0_*optim_states.pt"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x55
    shard.write_bytes(bytes(data))
    (run / "log.jsonl").unlink()
    r = jamtrain("train", "--config", str(cfg), "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "refusing checkpoint" in r.stdout and "step-00000006" in r.stdout and "sha256 differs" in r.stdout
    assert "resumed from" in r.stdout and "step-00000004 (step 4)" in r.stdout
    want = losses(reference / "train")
    assert losses(run) == {5: want[5], 6: want[6]}


def test_two_ranks_gloo_zero2_finish_and_export(data, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "train", steps=3, save_every=3)
    r = torchrun("--config", str(cfg), timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 rank(s) on cpu | ZeRO-2" in r.stdout
    ck = tmp_path / "train" / "checkpoints" / "step-00000003"
    marker = json.loads((ck / "COMPLETE.json").read_text())
    assert marker["world_size"] == 2
    assert {"trainer_rank00000.pt", "trainer_rank00001.pt"} <= set(marker["files"])
    assert len([f for f in marker["files"] if "optim_states" in f]) == 2  # optimizer state sharded over ranks
    state0 = torch.load(ck / "trainer_rank00000.pt", weights_only=False)["loader"]
    assert state0["step"] == 3 * 2 and state0["world_size"] == 2  # 3 steps x 2 micro-batches, both ranks' lanes
    steps = losses(tmp_path / "train")
    assert sorted(steps) == [1, 2, 3] and all(v > 0 for v in steps.values())
    assert (tmp_path / "train" / "export" / "model.safetensors").exists()


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STAGE_SCRIPT = """
import json, sys, yaml
from pathlib import Path
from jamdata.config import Config
from pipelines.stages import StageContext
from jamtrain.stage import run_stage
cfg = yaml.safe_load(open(sys.argv[2]))
for line in run_stage(StageContext(Config(cfg), Path(sys.argv[1]))):
    print("SUMMARY", line)
"""


def test_main_job_stage_trains_on_the_run_directory_and_writes_a_manifest(data, tmp_path):
    import yaml

    from jamdata.manifest import read_manifest, validate_dataset

    run_dir = Path(data["text"]).parent  # text-tokens/, image-caption/, instruct/ of a run
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg = {
        "run": {"seed": 1},
        "train": {**demo["train"], "steps": 3, "save_every": 0, "log_every": 1},
        "loader": {
            "mixture": {"text-tokens": 0.4, "image-caption": 0.4, "instruct": 0.2, "missing-set": 0.1},
            "seq_len": 64,
            "global_batch_size": 2,
        },
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    run = tmp_path / "run"
    for name in ("text-tokens", "image-caption", "instruct"):
        shutil.copytree(run_dir / name, run / name)
    r = subprocess.run(
        [sys.executable, "-c", STAGE_SCRIPT, str(run), str(tmp_path / "cfg.yaml")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = [line[8:] for line in r.stdout.splitlines() if line.startswith("SUMMARY ")]
    assert "mixture entry 'missing-set' left out" in summary[0]
    assert "3 steps on text-tokens, image-caption, instruct: loss" in summary[1]
    assert any(s.startswith("validation perplexity image-caption:") for s in summary)
    m = read_manifest(str(run / "train"))
    assert m["kind"] == "checkpoint" and m["summary"]["steps"] == 3
    assert {"export/model.safetensors", "export/model.json", "log.jsonl", "eval.json"} <= {
        s["path"] for s in m["shards"]
    }
    assert validate_dataset(str(run / "train")) == []
    from jamtrain.export import load_exported

    model, info = load_exported(run / "train" / "export")  # the demo's JAM-Cross reloads from the export
    assert info["model"]["fusion"] == "cross" and info["model"]["text_rows"] == info["vocab"]["image_offset"]
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]]))).all()


def test_export_of_a_checkpoint_equals_the_final_export(reference, tmp_path):
    from jamtrain.export import export_checkpoint, load_exported

    export_checkpoint(reference / "train" / "checkpoints" / "step-00000006", tmp_path)
    a, info_a = load_exported(reference / "train" / "export")
    b, info_b = load_exported(tmp_path)
    assert info_a["step"] == info_b["step"] == 6
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
