"""The Beam stages on a real portable runner: Beam's own job service and an external SDK worker
pool, both on 127.0.0.1, started here. text-clean, text-sample, images and instruct run once with
the local runner and once through the job service; every shard must be byte-identical.

This is the path a cluster takes (the job is a portable pipeline proto, executed by workers in
other processes that share nothing with the driver but the files), without a cluster. The worker
pool starts its workers with the `python` on PATH, so PATH starts with this interpreter's
directory. The config names its inputs by absolute paths and the worker pool runs in an empty
directory, so no stage can lean on the driver's working directory.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "PYTHONHASHSEED": "0",
    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
}
BEAM_STAGES = ["text-clean", "text-sample", "images", "instruct"]
OUTPUTS = [
    "text-clean",
    "text-clean-rejects",
    "text-tokens",
    "image-caption",
    "image-caption-rejects",
    "instruct",
    "instruct-rejects",
]

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[2]} ended with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"{proc.args[2]} did not listen on {port} within {timeout}s: {log.read_text()[-2000:]}")


def start(module: str, flag: str, cwd: Path, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, f"{flag}={port}"], cwd=cwd, env=ENV, stdout=out, stderr=subprocess.STDOUT
        )
    wait_for_port(port, proc, log)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def portable(tmp_path_factory) -> list[str]:
    """A job service and an external worker pool; yields the Beam flags that reach them."""
    root = tmp_path_factory.mktemp("portable")
    elsewhere = root / "worker-cwd"
    elsewhere.mkdir()
    job, job_port = start(
        "apache_beam.runners.portability.local_job_service_main", "--port", root, root / "job-service.log"
    )
    try:
        pool, pool_port = start(
            "apache_beam.runners.worker.worker_pool_main", "--service_port", elsewhere, root / "worker-pool.log"
        )
        try:
            yield [
                "--runner=PortableRunner",
                f"--job_endpoint=localhost:{job_port}",
                "--environment_type=EXTERNAL",
                f"--environment_config=localhost:{pool_port}",
            ]
        finally:
            stop(pool)
    finally:
        stop(job)


def absolute(value):
    """The demo config with every `sample_data/...` path made absolute."""
    if isinstance(value, dict):
        return {k: absolute(v) for k, v in value.items()}
    if isinstance(value, list):
        return [absolute(v) for v in value]
    if isinstance(value, str) and value.startswith(("sample_data/", "configs/")):
        return str(REPO / value)
    return value


def small_config(tmp_path: Path) -> Path:
    cfg = absolute(yaml.safe_load((REPO / "configs" / "demo.yaml").read_text()))
    sources = cfg["text"]["sources"]
    cfg["text"]["sources"] = {k: sources[k] for k in ("c4", "wikipedia")}
    cfg["text"]["sample"]["shares"] = {"c4": 0.5, "wikipedia": 0.5}
    cfg["text"]["sample"]["epochs"] = {"c4": 8, "wikipedia": 8}
    cfg["text"]["tokenizer"]["vocab_size"] = 600
    cfg["vqvae"]["train"].update(steps=4, checkpoint_every=4)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def jam(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "jamdata.cli", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def shard_bytes(dataset: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(dataset)): p.read_bytes()
        for p in sorted(dataset.rglob("*"))
        if p.is_file() and p.name not in ("manifest.json", ".jam.lock")
    }


def test_stages_on_a_portable_runner_match_the_local_runner(tmp_path, portable):
    config = small_config(tmp_path)
    local, remote = tmp_path / "local", tmp_path / "portable"
    stages = [
        a
        for s in ["text-clean", "tokenizer", "text-sample", "vqvae-train", "images", "instruct"]
        for a in ("--stage", s)
    ]
    jam("run", "--config", str(config), "--out", str(local), *stages)
    remote.mkdir()
    for name in ("tokenizer", "vqvae"):  # not Beam stages: the same inputs for both runs
        shutil.copytree(local / name, remote / name)
    r = jam(
        "run",
        "--config",
        str(config),
        "--out",
        str(remote),
        *[a for s in BEAM_STAGES for a in ("--stage", s)],
        "--",
        *portable,
    )
    assert "reusing" not in r.stdout, r.stdout
    # each stage ends with a progress line from the counters the job service returns
    for label, unit in (
        ("text-clean", "documents"),
        ("text-sample", "tokens"),
        ("images", "images"),
        ("instruct", "samples"),
    ):
        done = [ln for ln in r.stderr.splitlines() if f"jam.progress: {label}: " in ln and ln.endswith("(done)")]
        assert len(done) == 1 and f" {unit}" in done[0], (label, r.stderr[-3000:])
    for name in OUTPUTS:
        here, there = shard_bytes(local / name), shard_bytes(remote / name)
        assert here, f"{name}: no shards"
        assert sorted(here) == sorted(there), name
        for rel in here:
            assert here[rel] == there[rel], f"{name}/{rel} differs between the local and the portable runner"
        m_here = json.loads((local / name / "manifest.json").read_text())
        m_there = json.loads((remote / name / "manifest.json").read_text())
        assert m_here["totals"] == m_there["totals"], name
        assert [s["sha256"] for s in m_here["shards"]] == [s["sha256"] for s in m_there["shards"]], name
    assert json.loads((remote / "text-clean" / "manifest.json").read_text())["totals"]["records"] > 0
