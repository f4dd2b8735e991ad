"""Inputs and outputs in object storage: a real S3-compatible server (moto's, on 127.0.0.1 and a free
port, started here and stopped after) and fsspec's `memory://` standing in for `gs://` in-process.

What is shown: `--out s3://...` writes every shard and manifest into the bucket and nothing local;
the main job runs with its inputs and run directory in the bucket, and validate, stats and the
loader read it back; a killed re-run leaves nothing that looks complete and a re-run gives the same
bytes; a writer that fails mid-file publishes nothing; an unreachable endpoint is one line; storage
options reach Beam worker processes (`--workers 2`). No traffic leaves 127.0.0.1: the endpoint is
explicit, credentials are dummies and the EC2 metadata lookup is off.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from jamdata import io as jio
from jamdata.manifest import MANIFEST, is_complete, output_dir, read_manifest, validate_dataset, write_manifest

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "demo.yaml"
BUCKET = "jam-test"
TINY = ["--set", "vqvae.train.steps=2", "--set", "vqvae.train.checkpoint_every=0"]
LOCAL_ONLY = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
    # anything without explicit storage options goes to a closed local port, never to AWS
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server with one bucket; yields its storage options ({prefix: fsspec arguments}).
    The loader's shard cache goes to a temporary directory (never the user's ~/.cache)."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    from jamdata.loader.cache import CACHE_ENV

    local = {**LOCAL_ONLY, CACHE_ENV: str(tmp_path_factory.mktemp("shard-cache"))}
    saved = {k: os.environ.get(k) for k in local}
    os.environ.update(local)
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server.start()
    options = {f"s3://{BUCKET}": {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing"}}
    jio.set_storage_options(options)
    fs, _ = jio.fs_and_path(f"s3://{BUCKET}")
    fs.mkdir(BUCKET)
    try:
        yield options
    finally:
        jio.set_storage_options({})
        server.stop()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def env(storage: dict | None = None) -> dict:
    """A subprocess environment: dummy credentials, no metadata lookups, storage options only when
    given (JAM_STORAGE_OPTIONS), else none at all."""
    e = {k: v for k, v in os.environ.items() if k != jio.STORAGE_ENV}
    e.update(LOCAL_ONLY, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", PYTHONHASHSEED="0")
    if storage:
        e[jio.STORAGE_ENV] = json.dumps(storage)
    return e


def jam(*args: str, storage: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jamdata.cli", *args],
        cwd=REPO,
        env=env(storage),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(*args: str, **kw) -> subprocess.CompletedProcess:
    r = jam(*args, **kw)
    assert r.returncode == 0, f"jamdata {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-4000:]}"
    return r


def storage_set(options: dict) -> list[str]:
    return ["--set", f"run.storage_options={json.dumps(options)}"]


def objects(url: str) -> dict[str, bytes]:
    """Every object under a prefix: relative name -> bytes."""
    fs, p = jio.fs_and_path(url)
    fs.invalidate_cache()
    return {f[len(p) + 1 :]: fs.cat_file(f) for f in fs.find(p)}


def no_local_folder(scheme: str) -> None:
    assert not (REPO / f"{scheme}:").exists(), f"a local folder {scheme}: was written (pathlib folded the //)"


# -- defects, in-process ------------------------------------------------------------------------
@pytest.mark.parametrize("root", ["memory://jam-gs-standin/w", f"s3://{BUCKET}/w"])
def test_failed_writer_publishes_nothing(root, request):
    """A writer that raises mid-file leaves no object, not even its temporary one."""
    if root.startswith("s3"):
        request.getfixturevalue("s3")
    url = f"{root}/part-00000.bin"
    with pytest.raises(RuntimeError, match="mid-shard"):
        with jio.atomic_write(url, "wb") as f:
            f.write(b"x" * 1000)
            raise RuntimeError("mid-shard")
    assert objects(root) == {}
    with jio.atomic_write(url, "wb") as f:
        f.write(b"whole")
    assert objects(root) == {"part-00000.bin": b"whole"}


def _dataset(root: str) -> None:
    from jamdata.manifest import build_manifest, describe_shard

    with jio.atomic_write(f"{root}/part-00000.bin", "wb") as f:
        f.write(b"old shard")
    write_manifest(root, build_manifest("rejects", [describe_shard(root, "part-00000.bin")], {}))


@pytest.mark.parametrize("root", ["memory://jam-gs-standin/ds", f"s3://{BUCKET}/ds"])
def test_rerun_removes_old_manifest_first(root, request):
    """Entering a remote output directory deletes the old manifest (and shards) before anything is
    written; a failing attempt leaves no manifest and no temporaries."""
    if root.startswith("s3"):
        request.getfixturevalue("s3")
    _dataset(root)
    assert is_complete(root)
    with pytest.raises(RuntimeError):
        with output_dir(root) as out:
            assert out == root and not is_complete(root)
            assert objects(root) == {}
            fs, p = jio.fs_and_path(f"{root}/part-00000.bin")
            with fs.open(f"{p}{jio.TMP_MARK}killed", "wb") as f:  # what a killed writer leaves
                f.write(b"half")
            raise RuntimeError("job failed")
    assert not is_complete(root) and validate_dataset(root)
    assert objects(root) == {}


def test_storage_options_by_longest_prefix(monkeypatch):
    from jamdata import storage

    monkeypatch.setattr(storage, "_storage", None)  # read again from the environment, like a worker
    monkeypatch.setenv(jio.STORAGE_ENV, json.dumps({"s3://": {"anon": True}, "s3://b/x/": {"endpoint_url": "E"}}))
    assert jio.storage_options("s3://b/x/y") == {"endpoint_url": "E"}
    assert jio.storage_options("s3://b/xy") == {"anon": True}
    assert jio.storage_options("gs://b/x") == {} and jio.storage_options("local/x") == {}


def test_gs_out_is_not_a_local_folder():
    """`--out gs://...` never becomes ./gs:/...: without gcsfs it is one line naming the URL."""
    r = jam("text", "clean", "--config", str(DEMO), "--out", "gs://no-such-bucket/x")
    assert r.returncode == 1, r.stderr
    assert "gs://no-such-bucket/x" in r.stderr and "Traceback" not in r.stderr, r.stderr
    no_local_folder("gs")
    r = jam("text", "plan", "--config", str(REPO / "configs" / "reference-30b.yaml"))
    assert r.returncode == 1 and "gs://YOUR_BUCKET/" in r.stderr and "gs:/Y" not in r.stderr, r.stderr


def test_memory_url_stands_in_for_gs(tmp_path, monkeypatch):
    """The same code path as gs://, in-process: text clean into memory://, then validate."""
    from jamdata.cli import main

    from jamdata import storage

    monkeypatch.chdir(REPO)
    root = "memory://jam-gs-standin/run"
    before = dict(storage._current_storage())
    try:  # the command applies the config's (empty) storage options in this process
        assert main(["text", "clean", "--config", str(DEMO), "--out", root, "--workers", "1"]) == 0
    finally:
        jio.set_storage_options(before)
    for name in ("text-clean", "text-clean-rejects"):
        assert not validate_dataset(f"{root}/{name}")
        names = set(objects(f"{root}/{name}"))
        assert names == {s["path"] for s in read_manifest(f"{root}/{name}")["shards"]} | {MANIFEST}
    no_local_folder("memory")
    inputs = read_manifest(f"{root}/text-clean")["inputs"]  # relative in the config, absolute for the workers
    assert inputs and all(i.startswith(str(REPO / "sample_data")) for i in inputs), inputs


def test_main_job_stamps_and_reuse_in_memory_url(monkeypatch):
    """The run directory, its stage stamps and the reuse check work on a URL (memory:// for gs://)."""
    from jamdata.config import Config
    from pipelines.stages import StageContext, run_all

    monkeypatch.chdir(REPO)
    ctx = StageContext(Config.load(DEMO), "memory://jam-gs-standin/main")
    assert ctx.path("text-clean") == "memory://jam-gs-standin/main/text-clean"
    run_all(ctx, only=["text-clean"], log=lambda line: None)
    assert ".jam-stages/text-clean.stamp" in objects("memory://jam-gs-standin/main")
    lines: list[str] = []
    run_all(ctx, only=["text-clean"], log=lines.append)
    assert any("reusing finished outputs" in line for line in lines), lines
    no_local_folder("memory")


def test_unreachable_endpoint_is_one_line():
    dead = {
        "s3://": {
            "endpoint_url": f"http://127.0.0.1:{_free_port()}",
            "key": "k",
            "secret": "s",
            "config_kwargs": {"retries": {"max_attempts": 1}},
        }
    }
    r = jam("text", "clean", "--config", str(DEMO), "--out", f"s3://{BUCKET}/x", *storage_set(dead), timeout=120)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and f"s3://{BUCKET}/x/text-clean" in errors[0], r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_unlistable_input_is_a_storage_error(monkeypatch):
    """Inputs in a bucket that cannot be reached: a StorageError naming the pattern (one line at
    the command line), not the client library's exception."""
    from jamdata import storage

    for k, v in LOCAL_ONLY.items():
        monkeypatch.setenv(k, v)
    before = dict(storage._current_storage())
    jio.set_storage_options(
        {
            "s3://": {
                "endpoint_url": f"http://127.0.0.1:{_free_port()}",
                "key": "k",
                "secret": "s",
                "config_kwargs": {"retries": {"max_attempts": 1}},
            }
        }
    )
    try:
        with pytest.raises(jio.StorageError, match=f"cannot use s3://{BUCKET}/raw/"):
            jio.expand_inputs([str(DEMO), f"s3://{BUCKET}/raw/"])
    finally:
        jio.set_storage_options(before)


def test_missing_bucket_is_one_line(s3):
    """Checked before the old dataset is touched, instead of failing in a worker at the first shard."""
    endpoint = {"s3://": next(iter(s3.values()))}
    r = jam("text", "clean", "--config", str(DEMO), "--out", "s3://no-such-bucket/x", *storage_set(endpoint))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "cannot use s3://no-such-bucket/x/text-clean" in r.stderr and "bucket does not exist" in r.stderr


# -- text clean into the bucket, killed and re-run ------------------------------------------------
def test_text_clean_into_bucket_killed_and_rerun(s3):
    """`--workers 2` with the options only in the config: Beam's worker processes must get them.
    Then a re-run killed mid-job leaves nothing complete, and a third run (one worker: the bytes do
    not depend on the worker count) gives the same bytes."""
    out = f"s3://{BUCKET}/clean"
    args = ["text", "clean", "--config", str(DEMO), "--out", out, *storage_set(s3)]
    ok(*args, "--workers", "2")
    no_local_folder("s3")
    first = {name: objects(f"{out}/{name}") for name in ("text-clean", "text-clean-rejects")}
    for name, files in first.items():
        assert set(files) == {s["path"] for s in read_manifest(f"{out}/{name}")["shards"]} | {MANIFEST}
        assert not validate_dataset(f"{out}/{name}")

    proc = subprocess.Popen(
        [sys.executable, "-m", "jamdata.cli", *args],
        cwd=REPO,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    fs, p = jio.fs_and_path(f"{out}/text-clean/{MANIFEST}")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        fs.invalidate_cache()
        if not fs.exists(p):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not is_complete(f"{out}/text-clean"), "a killed re-run left a dataset that looks complete"
    r = jam("validate", f"{out}/text-clean", storage=s3)
    assert r.returncode == 1 and MANIFEST in r.stderr

    ok(*args)
    again = {name: objects(f"{out}/{name}") for name in first}
    assert again == first


# -- the main job with inputs and outputs in the bucket ---------------------------------------------
def _bucket_config(tmp: Path, s3: dict) -> Path:
    """The demo config with every sample_data path moved into the bucket (the data copied there)."""
    fs, _ = jio.fs_and_path(f"s3://{BUCKET}")
    fs.put(str(REPO / "sample_data"), f"{BUCKET}/in/", recursive=True)
    text = DEMO.read_text().replace("sample_data/", f"s3://{BUCKET}/in/sample_data/")
    cfg = yaml.safe_load(text)
    cfg["run"]["storage_options"] = s3
    path = tmp / "bucket.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def bucket_run(s3, tmp_path_factory):
    cfg = _bucket_config(tmp_path_factory.mktemp("cfg"), s3)
    out = f"s3://{BUCKET}/run"
    r = ok(
        "run",
        "--config",
        str(cfg),
        "--out",
        out,
        *TINY,
        "--set",
        "stats.fast=true",
        "--set",
        "stats.loader_batches=2",
        timeout=600,
    )
    no_local_folder("s3")
    return cfg, out, r.stdout


def test_main_job_in_bucket(bucket_run, s3):
    cfg, out, stdout = bucket_run
    assert "train: skipped: the CPU smoke run needs a local run directory" in stdout
    datasets = [
        "text-clean",
        "text-clean-rejects",
        "tokenizer",
        "text-tokens",
        "vqvae",
        "image-caption",
        "image-caption-rejects",
        "instruct",
        "instruct-rejects",
        "report",
    ]
    for name in datasets:
        assert is_complete(f"{out}/{name}"), name
    manifest = read_manifest(f"{out}/text-clean")
    assert all(i.startswith(f"s3://{BUCKET}/in/") for i in manifest["inputs"])
    r = ok("validate", *[f"{out}/{n}" for n in datasets], storage=s3)
    assert r.stdout.count(": OK") == len(datasets)
    r = ok("stats", f"{out}/text-tokens", f"{out}/text-clean", "--out", f"s3://{BUCKET}/report", storage=s3)
    assert f"s3://{BUCKET}/report/report.html" in r.stdout
    report = objects(f"s3://{BUCKET}/report")
    assert "stats.json" in report and "report.html" in report
    assert json.loads(report["stats.json"])["datasets"]["text-tokens"]["status"] == "ok"


def test_loader_reads_bucket_through_disk_cache(bucket_run, tmp_path):
    """The loader streams remote shards into a local disk cache (never whole into memory) and
    gives the same batches as over a local copy of the same datasets."""
    from jamdata.config import Config
    from jamdata.loader import build_loader
    from jamdata.loader.sources import DatasetSource, ShardPool, TarShard

    cfg_path, out, _ = bucket_run
    names = ["text-tokens", "image-caption", "instruct"]
    local = tmp_path / "local"
    fs, p = jio.fs_and_path(out)
    for n in names:
        fs.get(f"{p}/{n}", str(local / n), recursive=True)
    section = Config(yaml.safe_load(Path(cfg_path).read_text())).section("loader")
    section.set("cache_dir", str(tmp_path / "cache"))

    def batches(dirs: dict[str, str]) -> tuple[list, object]:
        loader = build_loader(section, dirs)
        got = []
        for i, b in enumerate(loader):
            got.append((b["keys"], b["tokens"].tolist()))
            if i == 2:
                break
        return got, loader

    remote, _ = batches({n: f"{out}/{n}" for n in names})
    assert remote == batches({n: str(local / n) for n in names})[0]
    cached = [f for f in (tmp_path / "cache").rglob("*") if f.is_file()]
    assert cached and not any(".tmp-" in f.name for f in cached)

    pool = ShardPool("sha256", "fail", cache_dir=str(tmp_path / "cache2"))
    shard = pool.get(DatasetSource.from_manifest("image-caption", f"{out}/image-caption"), 0)
    assert isinstance(shard, TarShard) and isinstance(shard.buf, mmap.mmap), "a remote tar was read into memory"
    assert shard.path.startswith(str(tmp_path / "cache2"))
