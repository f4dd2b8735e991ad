"""Progress while Beam runs: lines with documents and bytes done and the rate, a last line with
Beam's own counters, none with --quiet, and the same output bytes either way."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

from pipelines import progress

REPO = Path(__file__).resolve().parent.parent
ENV = {
    **os.environ,
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "PYTHONHASHSEED": "0",
    progress.SECONDS_ENV: "0.2",
}


def text_config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg["text"]["sources"] = {k: v for k, v in cfg["text"]["sources"].items() if k in ("c4", "wikipedia")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def jam(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "jamdata.cli", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_stage_reports_progress_and_quiet_silences_it(tmp_path):
    config = text_config(tmp_path)
    loud = jam("text", "clean", "--config", str(config), "--out", str(tmp_path / "loud"), "--workers", "2")
    lines = [ln for ln in loud.stderr.splitlines() if "jam.progress: text-clean:" in ln]
    assert lines, loud.stderr[-3000:]
    last = lines[-1]
    assert last.endswith("(done)"), last
    # the last line counts what the funnel table calls read documents, with a rate
    read = sum(int(ln.split()[3]) for ln in loud.stdout.splitlines() if ln.split()[1:2] == ["read"])
    assert f": {read:,} documents, " in last and "documents/s" in last and "kB" in last, last
    quiet = jam("run", "--config", str(config), "--out", str(tmp_path / "quiet"), "--stage", "text-clean", "--quiet")
    assert "jam.progress" not in quiet.stderr and "INFO" not in quiet.stderr, quiet.stderr[-3000:]
    assert "[1/" not in quiet.stdout and "== summary" in quiet.stdout, quiet.stdout
    for name in ("text-clean", "text-clean-rejects"):
        assert files(tmp_path / "loud" / name) == files(tmp_path / "quiet" / name), name


def test_tallies_of_worker_processes_add_up(tmp_path, monkeypatch):
    monkeypatch.setenv(progress.DIR_ENV, str(tmp_path))
    monkeypatch.setattr(progress, "FLUSH_SECONDS", 0.05)
    progress.count("documents", 3)
    progress.count("bytes", 2_500_000)
    (tmp_path / "other-process.json").write_text('{"documents": 4}')
    deadline = time.monotonic() + 5  # this process's tally is written by its flush thread
    while progress.read_tallies(str(tmp_path)) != Counter(documents=7, bytes=2_500_000):
        assert time.monotonic() < deadline, progress.read_tallies(str(tmp_path))
        time.sleep(0.05)
    line = progress.format_line("text-clean", Counter(documents=7, bytes=2_500_000), 2.0)
    assert line == "text-clean: 7 documents, 2.5 MB (4 documents/s, 1.2 MB/s) after 00:00:02", line
