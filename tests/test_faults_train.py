"""Training directories owned by one run, and the training side's crash and loss faults.

- a fresh run in a directory holding an older run is refused (its checkpoints would be pruned
  against the older run's higher steps, and a later --resume would load the older run);
  --overwrite replaces the older run, --resume continues it;
- a second trainer is refused while the directory's lock is held; a killed run's lock is not;
- a kill leaves temporaries (`.latest.tmp-*`, `.tmp-step-*`) and log lines past the checkpoint:
  the resume removes both, so every step is logged once;
- the final evaluation skips a shard the loader skipped (`loader.on_corrupt: skip`) and the export
  is still written;
- `jamdata loader inspect` refuses a step too far to replay instead of spinning;
- every refusal is one line on stderr, a non-zero exit and no traceback.

Every run is a real `jamtrain` subprocess on CPU (gloo), as in test_train_run.py.
"""

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

from jamtrain import checkpoint as ckpt
from jamtrain import rundir
from test_train_data import VOCAB, TINY_MODEL, write_config
from test_train_run import BIN, ENV, data, jamtrain  # noqa: F401  (data is a fixture)


def logged_steps(out: Path) -> list[int]:
    """Steps of the loss records in the JSON-lines log, in file order (duplicates kept)."""
    return [r["step"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]


def one_error_line(r: subprocess.CompletedProcess, prog: str = "jamtrain") -> str:
    """The refusal: a non-zero exit, exactly one `<prog>: error:` line and no traceback."""
    assert r.returncode not in (0, -signal.SIGKILL), r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    return errors[0]


def steps_dirs(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir() if ckpt.TAG_RE.match(p.name))


# -- one run per directory -----------------------------------------------------------------------
def test_fresh_run_in_a_used_directory_is_refused_and_overwrite_replaces_the_older_run(data, tmp_path):
    out = tmp_path / "train"
    out.mkdir()
    (out / rundir.LOCK).write_text(json.dumps({"pid": 2**22 + 12345, "host": "gone"}))  # a dead holder's file
    older = write_config(tmp_path / "older.yaml", data, out, steps=4, save_every=2)
    r = jamtrain("train", "--config", str(older))
    assert r.returncode == 0, r.stdout + r.stderr  # a lock file nobody holds does not block
    assert steps_dirs(out) == ["step-00000002", "step-00000004"]

    newer = write_config(tmp_path / "newer.yaml", data, out, steps=2, save_every=1)
    line = one_error_line(jamtrain("train", "--config", str(newer)))
    assert str(out) in line and "already holds a training run" in line and "--resume" in line
    assert "--overwrite" in line
    assert steps_dirs(out) == ["step-00000002", "step-00000004"]  # the older run is untouched

    r = jamtrain("train", "--config", str(newer), "--overwrite")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "deleted the previous run's checkpoints/" in r.stdout
    assert steps_dirs(out) == ["step-00000001", "step-00000002"]  # the new run's own, none pruned away
    assert logged_steps(out) == [1, 2]
    run_id = json.loads((out / rundir.RUN_FILE).read_text())["run_id"]
    assert all(ckpt.run_of(out / "checkpoints" / t) == run_id for t in steps_dirs(out))

    r = jamtrain("train", "--config", str(newer), "--resume", "--set", "train.steps=3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "step-00000002 (step 2)" in r.stdout  # the newer run's checkpoint, not the older run's step 4
    assert logged_steps(out) == [1, 2, 3]


def test_a_second_trainer_is_refused_while_the_lock_is_held(data, tmp_path):
    out = tmp_path / "train"
    cfg = write_config(tmp_path / "cfg.yaml", data, out, steps=1, save_every=0)
    with rundir.locked(out):  # held as a running trainer holds it
        line = one_error_line(jamtrain("train", "--config", str(cfg)))
        again = one_error_line(jamtrain("train", "--config", str(cfg), "--resume"))
    for text in (line, again):
        assert f"{out} is being trained by another process (pid {os.getpid()}" in text
    assert rundir.existing_outputs(out) == []  # the refused trainers wrote nothing


def test_prune_counts_and_deletes_only_the_runs_own_checkpoints(tmp_path):
    def fake(step: int, run_id: str | None) -> Path:
        d = tmp_path / ckpt.tag_for(step)
        d.mkdir()
        (d / ckpt.rank_file(0)).write_bytes(b"state" * 10)
        files = {ckpt.rank_file(0): {"bytes": 50, "sha256": None}}
        (d / ckpt.MARKER).write_text(
            json.dumps({"step": step, "world_size": 1, "files": files, "meta": {"run_id": run_id}})
        )
        return d

    other = [fake(6, "older"), fake(8, "older")]
    own = [fake(1, "mine"), fake(2, "mine"), fake(3, "mine")]
    legacy = fake(0, None)  # written before checkpoints named their run: pruned as before
    leftovers = [tmp_path / ".latest.tmp-4242-0badcafe", tmp_path / ".tmp-step-00000009"]
    leftovers[0].write_text("step-00000008\n")
    leftovers[1].mkdir()
    ckpt.prune(tmp_path, keep=2, run_id="mine")
    assert all(p.exists() for p in other) and own[1].exists() and own[2].exists()
    assert not own[0].exists() and not legacy.exists()
    assert not any(p.exists() for p in leftovers)


# -- a kill and its leftovers --------------------------------------------------------------------
def test_resume_after_a_kill_removes_leftovers_and_logs_every_step_once(data, tmp_path):
    out = tmp_path / "train"
    cfg = write_config(tmp_path / "cfg.yaml", data, out, steps=4, save_every=2)
    r = jamtrain("train", "--config", str(cfg), fault="kill-after-step:3")
    assert r.returncode == -signal.SIGKILL
    assert logged_steps(out) == [1, 2, 3] and steps_dirs(out) == ["step-00000002"]
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 1.')  # a record cut short by the kill
    ck = out / "checkpoints"
    planted = [ck / ".latest.tmp-999999-0123abcd", ck / ".tmp-step-00000004", out / ".eval.json.tmp-999999-89abcdef"]
    planted[0].write_text("step-00000004\n")  # killed while replacing `latest`
    planted[1].mkdir()
    (planted[1] / "mp_rank_00_model_states.pt").write_bytes(b"half")
    planted[2].write_text("{")

    r = jamtrain("train", "--config", str(cfg), "--resume")  # the killed run's lock does not block
    assert r.returncode == 0, r.stdout + r.stderr
    assert "step-00000002 (step 2)" in r.stdout
    assert logged_steps(out) == [1, 2, 3, 4]  # steps 3 (re-run) and 4 once each, no torn line
    assert not any(p.exists() for p in planted)
    assert (ck / ckpt.LATEST).read_text() == "step-00000004\n"


def test_resume_log_truncation_keeps_records_up_to_the_step(tmp_path):
    log = tmp_path / "log.jsonl"
    records = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, {"step": 2, "eval": {}}, {"step": 3, "loss": 2.0}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 4, "lo')
    assert rundir.truncate_log(log, 2) == 2
    assert [json.loads(x) for x in log.read_text().splitlines()] == records[:3]
    assert not [p for p in tmp_path.iterdir() if p.name != "log.jsonl"]  # written atomically, no temporary left
    assert rundir.truncate_log(log, 2) == 0


# -- damaged data at the final evaluation --------------------------------------------------------
def _damaged_image_set(data: dict[str, str], root: Path) -> Path:
    """A copy of the image-caption set whose first shard is cut short (both training and the
    evaluation read it: its samples are in the held-out share too)."""
    copy = root / "image-caption"
    shutil.copytree(data["image_caption"], copy)
    shard = copy / "part-00000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size * 3 // 5])
    return copy


def test_final_evaluation_skips_the_shard_training_skipped_and_still_exports(data, tmp_path):
    damaged = _damaged_image_set(data, tmp_path)
    out = tmp_path / "train"
    cfg = write_config(
        tmp_path / "cfg.yaml", data, out, steps=2, save_every=0, loader={"paths": {"image-caption": str(damaged)}}
    )
    r = jamtrain("train", "--config", str(cfg))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "part-00000.tar" in r.stderr and "loader.on_corrupt=skip" in r.stderr
    assert (out / "export" / "model.safetensors").exists()
    final = json.loads((out / "eval.json").read_text())["datasets"]
    assert final["image-caption"]["skipped_shards"] == 1 and final["image-caption"]["ppl"] > 1
    assert final["text-tokens"]["skipped_shards"] == 0

    line = one_error_line(jamtrain("train", "--config", str(cfg), "--overwrite", "--set", "loader.on_corrupt=fail"))
    assert "part-00000.tar" in line


def test_evaluation_follows_the_loaders_shard_policy(data, tmp_path):
    from jamdata.formats.wds import ShardError
    from jamtrain.evaluate import Holdout, ShardPolicy, evaluate
    from jamtrain.models import build_model

    damaged = _damaged_image_set(data, tmp_path)
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, VOCAB.size).eval()
    sets = {"image-caption": (str(damaged), Holdout(None))}
    res = evaluate(model, sets, VOCAB, 32, max_samples=None, policy=ShardPolicy("sha256", "skip"))
    assert res["image-caption"]["skipped_shards"] == 1 and res["image-caption"]["samples"] == 32  # the other shard
    with pytest.raises(ShardError, match="part-00000.tar"):
        evaluate(model, sets, VOCAB, 32, policy=ShardPolicy("size", "fail"))
    # without verification the samples before the damage are kept, as the loader keeps them
    kept = evaluate(model, sets, VOCAB, 32, max_samples=None, policy=ShardPolicy("none", "skip"))["image-caption"]
    assert 32 < kept["samples"] < 64 and kept["skipped_shards"] == 1


# -- loader inspect --------------------------------------------------------------------------------
def test_loader_inspect_refuses_a_step_too_far_to_replay(data, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "train")

    def inspect(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "jamdata"), "loader", "inspect", "--config", str(cfg), *args],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )

    line = one_error_line(inspect("--step", str(10**15)), "jamdata")
    assert "--step 1000000000000000" in line and "--max-replay" in line and "--state" in line
    one_error_line(inspect("--step", "5", "--max-replay", "4"), "jamdata")
    r = inspect("--step", "4", "--max-replay", "4", "--json")
    assert r.returncode == 0, r.stderr
    assert {json.loads(x)["step"] for x in r.stdout.splitlines()} == {4}


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
