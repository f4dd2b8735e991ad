"""Faults around the main job and the command line: stage reuse that must look at the data, user
mistakes on the command line that must end in one line, and worker processes that must not outlive
their job. Every case runs the real `jamdata` command in a subprocess."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from jamdata.config import Config

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "demo.yaml"
ENV = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}


def jam(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jamdata.cli", *args],
        cwd=REPO,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """A user mistake: non-zero exit, no traceback, one `jamdata: error:` line naming the culprit."""
    assert r.returncode != 0, r.stdout[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("jamdata: error:")]
    assert len(lines) == 1, r.stderr[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def text_only_config(tmp_path: Path) -> Path:
    """The demo config with its C4 input copied into tmp_path (so a test may change it)."""
    cfg = yaml.safe_load(DEMO.read_text())
    c4 = tmp_path / "c4"
    shutil.copytree(REPO / "sample_data" / "text" / "c4", c4)
    cfg["text"]["sources"] = {"c4": {"inputs": [{"format": "c4", "paths": [str(c4)]}]}}
    cfg["text"]["sample"]["shares"] = {"c4": 1.0}
    cfg["text"]["sample"]["epochs"] = {"c4": 8}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- stage reuse ---------------------------------------------------------------------------------
def reused(r: subprocess.CompletedProcess) -> bool:
    assert r.returncode == 0, r.stderr[-3000:]
    return "text-clean: reusing finished outputs" in r.stdout


def jam_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """`jamdata ARGS` in this process (the reuse checks run the main job many times; a process
    each would spend most of its time importing)."""
    from jamdata.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), rc, out.out, out.err)


def test_reuse_checks_shards_and_raw_inputs(tmp_path, capsys):
    config = text_only_config(tmp_path)
    out = tmp_path / "run"
    args = ["run", "--config", str(config), "--out", str(out), "--stage", "text-clean"]
    jam = functools.partial(jam_here, capsys)
    assert not reused(jam(*args))
    assert reused(jam(*args))

    # a shard deleted: the stage is redone, not reused
    shard = next((out / "text-clean" / "c4").glob("*.parquet"))
    shard.unlink()
    assert not reused(jam(*args))
    assert shard.exists()
    assert reused(jam(*args))

    # a shard truncated (same name, other size): redone
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    assert not reused(jam(*args))
    assert shard.read_bytes() == data

    # a raw input file changed in place: redone
    raw = next((tmp_path / "c4").iterdir())
    raw.write_bytes(raw.read_bytes() + b"\n")
    assert not reused(jam(*args))
    assert reused(jam(*args))


def test_reuse_with_sha256_catches_altered_bytes(tmp_path, capsys):
    config = text_only_config(tmp_path)
    out = tmp_path / "run"
    args = ["run", "--config", str(config), "--out", str(out), "--stage", "text-clean"]
    jam = functools.partial(jam_here, capsys)
    assert not reused(jam(*args))
    shard = next((out / "text-clean" / "c4").glob("*.parquet"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    assert reused(jam(*args))  # the default check is by size: cheap on buckets
    assert not reused(jam(*args, "--set", "run.reuse_verify=sha256"))


# -- command-line mistakes -----------------------------------------------------------------------
def test_manifest_with_invalid_utf8_is_one_line(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "manifest.json").write_bytes(b'{"kind": "\xff\xfe"}')
    r = jam("validate", str(ds))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "manifest.json" in r.stdout + r.stderr and "UTF-8" in r.stdout + r.stderr


@pytest.mark.parametrize(
    "item, needle",
    [
        ("text.clean.shards", "key.path=value"),
        ("text.clean.shards=[1, 2", "text.clean.shards"),
        ("=3", "key.path=value"),
    ],
)
def test_malformed_set_is_one_line(item, needle):
    r = jam("run", "--config", str(DEMO), "--out", "/nonexistent/never", "--set", item)
    one_line_error(r, needle)


def test_set_parses_numbers_as_numbers():
    cfg = Config({})
    cfg.override(["train.lr=1e-3", "train.min_lr_ratio=5E-2", "train.steps=20", "run.out_dir=1e3x", "stats.b=.inf"])
    assert cfg.get("train.lr") == 1e-3 and isinstance(cfg.get("train.lr"), float)
    assert cfg.get("train.min_lr_ratio") == 0.05
    assert cfg.get("train.steps") == 20
    assert cfg.get("run.out_dir") == "1e3x"  # not a number: stays a string
    assert cfg.get("stats.b") == float("inf")


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_workers_below_one_is_refused(workers):
    r = jam("run", "--config", str(DEMO), "--out", "/nonexistent/never", "--workers", workers)
    one_line_error(r, "--workers", workers)


def test_config_workers_below_one_is_refused():
    r = jam("run", "--config", str(DEMO), "--out", "/nonexistent/never", "--set", "run.workers=0")
    one_line_error(r, "run.workers")


# -- worker processes do not outlive a killed job ------------------------------------------------
def _tagged_pids(tag: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if f"JAM_TEST_TAG={tag}".encode() in (d / "environ").read_bytes():
                found.append(int(d.name))
        except OSError:
            continue
    return found


def _tagged_workers(tag: str) -> list[int]:
    out = []
    for pid in _tagged_pids(tag):
        try:
            if b"sdk_worker_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            continue
    return out


def test_killing_the_job_ends_its_worker_processes(tmp_path):
    tag = uuid.uuid4().hex
    env = {**ENV, "JAM_TEST_TAG": tag}
    log = open(tmp_path / "log", "w")
    main = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jamdata.cli",
            "run",
            "--config",
            str(DEMO),
            "--out",
            str(tmp_path / "run"),
            "--stage",
            "text-clean",
            "--workers",
            "2",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(_tagged_workers(tag)) < 2:
            assert main.poll() is None, (tmp_path / "log").read_text()[-3000:]
            time.sleep(0.2)
        assert len(_tagged_workers(tag)) >= 2, "the job never started its worker processes"
        time.sleep(1.0)  # the workers are at work
        os.kill(main.pid, signal.SIGKILL)
        main.wait()
        deadline = time.time() + 20
        while time.time() < deadline and _tagged_pids(tag):
            time.sleep(0.25)
        assert _tagged_pids(tag) == [], "worker processes outlived their killed job"
    finally:
        for pid in _tagged_pids(tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        log.close()


# -- Beam flags after `--` reach the pipeline of every stage command -----------------------------
@pytest.mark.parametrize(
    "command",
    [
        ["run", "--config", str(DEMO), "--out", "/nonexistent/never"],
        ["text", "clean", "--config", str(DEMO), "--out", "/nonexistent/never"],
        ["text", "sample", "--config", str(DEMO), "--out", "/nonexistent/never"],
        [
            "images",
            "tokenize",
            "--config",
            str(DEMO),
            "--vqvae",
            "v",
            "--tokenizer",
            "t",
            "--out",
            "/nonexistent/never",
        ],
        ["instruct", "build", "--config", str(DEMO), "--out", "/nonexistent/never"],
        ["stats", "/nonexistent/never", "--out", "/nonexistent/never"],
    ],
)
def test_unknown_runner_fails_naming_it(command):
    r = jam(*command, "--", "--runner=NoSuchRunner")
    one_line_error(r, "NoSuchRunner")


def test_config_beam_args_reach_the_pipeline(tmp_path):
    config = text_only_config(tmp_path)
    r = jam(
        "text",
        "clean",
        "--config",
        str(config),
        "--out",
        str(tmp_path / "x"),
        "--set",
        "run.beam_args=[--runner=NoSuchRunner]",
    )
    one_line_error(r, "NoSuchRunner")


# -- config mistakes: each one line naming the key, before any data is read -------------------------
F = "text.clean.filters"
CONFIG_MISTAKES = [  # (--set items or a raw file body, what the one line must name)
    (["txt.sources={}"], "txt"),
    (["text.cleen.shards=2"], "text.cleen"),
    ([f"{F}.language.languages=en"], f"{F}.language.languages"),
    ([f"{F}.language.threshold=high"], f"{F}.language.threshold"),
    ([f"{F}.min_length.min_words=many"], f"{F}.min_length.min_words"),
    ([f"{F}.min_length.min_word=3"], f"{F}.min_length.min_word"),
    ([f"{F}.chains.c4=min_length"], f"{F}.chains.c4"),
    ([f"{F}.chains.c4=[min_length, no_such_filter]"], "no_such_filter"),
    ([f"{F}.per_source.c4={{langauge: {{}}}}"], "langauge"),
    ([f"{F}.gopher_quality.stop_words=the"], f"{F}.gopher_quality.stop_words"),
    ([f"{F}.c4.bad_words=/nonexistent/words.txt"], "/nonexistent/words.txt"),
    (["text.clean.shards=0"], "text.clean.shards"),
    (["text.clean.max_record_bytes=big"], "text.clean.max_record_bytes"),
    (["run.beam_args=--runner=DirectRunner"], "run.beam_args"),
    (["run.beam_args=[1, 2]"], "run.beam_args"),
    (["run.reuse_verify=md5"], "run.reuse_verify"),
    (["run.workers=two"], "run.workers"),
    ("text: [unclosed\n", "not valid YAML"),
    (b"run: {out_dir: \xff}\n", "not UTF-8"),
    ("- just\n- a list\n", "mapping"),
]


@pytest.mark.parametrize("mistake, needle", CONFIG_MISTAKES, ids=[str(n) for _, n in CONFIG_MISTAKES])
def test_config_mistake_is_one_line(tmp_path, mistake, needle):
    config = text_only_config(tmp_path)
    sets: list[str] = []
    if isinstance(mistake, list):
        for item in mistake:
            sets += ["--set", item]
    else:
        config.write_bytes(mistake if isinstance(mistake, bytes) else mistake.encode())
    r = jam("run", "--config", str(config), "--out", str(tmp_path / "run"), "--stage", "text-clean", *sets)
    one_line_error(r, needle)
    assert not (tmp_path / "run" / "text-clean" / "manifest.json").exists()


def test_user_error_is_one_line_and_a_traceback_only_with_verbose(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "manifest.json").write_text("{not json")
    r = jam("stats", str(ds), "--out", str(tmp_path / "rep"), "--workers", "0")
    one_line_error(r, "--workers")
    r = jam("-v", "stats", str(ds), "--out", str(tmp_path / "rep"), "--workers", "0")
    assert r.returncode != 0 and "Traceback" in r.stderr and "ConfigError" in r.stderr


def test_every_error_class_is_a_user_error():
    """Each module raises its own subclass of the one ground-floor UserError."""
    import importlib

    from jamdata.errors import UserError

    for module, name in [
        ("jamdata.config", "ConfigError"),
        ("jamdata.io", "InputError"),
        ("jamdata.io", "OutputDirError"),
        ("jamdata.manifest", "ManifestError"),
        ("jamdata.manifest", "OutputLockedError"),
        ("jamdata.vocab", "VocabMismatchError"),
        ("schemas.records", "SchemaError"),
        ("jamdata.formats.wds", "ShardError"),
        ("jamdata.formats.megatron", "IndexedDatasetError"),
        ("jamdata.text.sampling", "PlanError"),
        ("jamdata.text.tokenizer", "TokenizerError"),
        ("jamdata.loader.sources", "LoaderError"),
        ("jamdata.storage", "StorageError"),
        ("jamtrain.checkpoint", "CheckpointError"),
        ("jamtrain.rundir", "TrainDirError"),
        ("jamdata.errors", "ModelError"),
    ]:
        assert issubclass(getattr(importlib.import_module(module), name), UserError), name
