"""Reliability of the main job (`jamdata run`): killed runs, unwritable or full output directories,
two jobs into one directory, 1 vs 2 workers, and bad input in every reader.

Every case runs the real command line in a subprocess on the demo config made small with `--set`,
and compares against one uninterrupted reference run (module-scoped) by manifest bytes and the
sha256 of every file in each dataset directory.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from jamdata.io import sha256_file
from jamdata.manifest import LOCK, MANIFEST, read_manifest

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "demo.yaml"
# The demo, smaller where it costs time and does not change what is tested.
TINY = ["--set", "vqvae.train.steps=2", "--set", "vqvae.train.checkpoint_every=0"]
ENV = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
REF_STAGES = ["text-clean", "tokenizer", "text-sample", "vqvae-train", "images", "instruct"]
TEXT_OUT = ["text-clean", "text-clean-rejects"]
IMAGE_OUT = ["image-caption", "image-caption-rejects"]


# -- helpers ------------------------------------------------------------------------------------
def jam_cmd(out: Path, stages: list[str], *extra: str, config: Path = DEMO) -> list[str]:
    cmd = [sys.executable, "-m", "jamdata.cli", "run", "--config", str(config), "--out", str(out), *TINY]
    for s in stages:
        cmd += ["--stage", s]
    return cmd + list(extra)


def jam(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def ok(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    r = jam(cmd, timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-4000:]}"
    return r


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """A job in its own process group (so the group can be killed or stopped as a whole)."""
    f = open(log, "w")
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def lock_held(d: Path) -> bool:
    """Whether some process holds the flock on `d`/.jam.lock; read from /proc/locks so that
    looking never takes the lock away from the job."""
    try:
        ino = os.stat(d / LOCK).st_ino
    except FileNotFoundError:
        return False
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if "FLOCK" in parts and any(p.endswith(f":{ino}") for p in parts):
            return True
    return False


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    t0 = time.time()
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"job ended ({proc.returncode}) before {what}:\n" + (log.read_text()[-3000:] if log else "")
            )
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def written(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if p.is_file() and p.name != LOCK] if d.exists() else []


def digest(run: Path, name: str) -> tuple[str, dict[str, str]]:
    """(manifest text with the run directory replaced by <RUN>, sha256 of every file).

    Also checks that the directory holds exactly the manifest's shards: no leftover temporary
    file, no duplicate or stray shard, none missing."""
    d = run / name
    manifest = read_manifest(str(d))
    files = {str(p.relative_to(d)): sha256_file(p) for p in written(d)}
    assert set(files) == {s["path"] for s in manifest["shards"]} | {MANIFEST}, (
        f"{d}: files on disk differ from the manifest's shards: {sorted(files)}"
    )
    for s in manifest["shards"]:
        assert files[s["path"]] == s["sha256"], f"{d}/{s['path']}: sha256 differs from its manifest"
    text = files.pop(MANIFEST) and (d / MANIFEST).read_text()
    for form in {str(run.resolve()), str(run)}:
        text = text.replace(form, "<RUN>")
    return text, files


def assert_same(run: Path, ref: Path, names: list[str]) -> None:
    for name in names:
        got, want = digest(run, name), digest(ref, name)
        assert got[1] == want[1], f"{name}: shard bytes differ from the reference run"
        assert got[0] == want[0], f"{name}: manifest.json differs from the reference run"


def validate(run: Path, names: list[str]) -> None:
    r = jam([sys.executable, "-m", "jamdata.cli", "validate", *[str(run / n) for n in names]])
    assert r.returncode == 0, r.stdout + r.stderr


def no_temp_files(run: Path) -> None:
    leftovers = [str(p) for p in run.rglob("*") if ".tmp-" in p.name]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def copy_inputs(ref: Path, run: Path, names: list[str]) -> None:
    for n in names:
        shutil.copytree(ref / n, run / n)


def one_line_error(r: subprocess.CompletedProcess, *needles: str, worker_logs: bool = False) -> str:
    """Exit 1 and one `jamdata: error:` line naming the problem, as the last line, with no traceback.

    `worker_logs`: Beam's local worker processes (`--workers 2`) share stderr and log their own
    failures there before the job reports it; only the job's own output must stay traceback-free."""
    assert r.returncode == 1, f"exit code {r.returncode}, stderr:\n{r.stderr[-3000:]}"
    lines = r.stderr.splitlines()
    errors = [ln for ln in lines if ln.startswith("jamdata: error:")]
    assert len(errors) == 1, f"expected one 'jamdata: error:' line, stderr:\n{r.stderr[-3000:]}"
    assert lines[-1] == errors[0], f"the error is not the last line:\n{r.stderr[-3000:]}"
    for n in needles:
        assert n in errors[0], f"{n!r} not in {errors[0]!r}"
    if not worker_logs:
        assert "Traceback" not in r.stderr, f"traceback printed:\n{r.stderr[-3000:]}"
    return errors[0]


def jam_here(cmd: list[str], capsys) -> subprocess.CompletedProcess:
    """The command line in this process (for errors raised before any pipeline starts: no start-up cost)."""
    from jamdata.cli import main

    assert cmd[1:3] == ["-m", "jamdata.cli"]
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        code = main(cmd[3:])
    finally:
        os.chdir(cwd)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(cmd, code, out, err)


def rejects(run: Path, name: str) -> list[dict]:
    d = run / name
    return [r for s in read_manifest(str(d))["shards"] for r in pq.read_table(d / s["path"]).to_pylist()]


# -- the reference run --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ref_text(tmp_path_factory) -> Path:
    """An uninterrupted single-worker text-clean run; `ref` adds the other data stages to it."""
    out = tmp_path_factory.mktemp("reference") / "run"
    ok(jam_cmd(out, ["text-clean"], "--workers", "1"), timeout=600)
    return out


@pytest.fixture(scope="module")
def ref(ref_text) -> Path:
    """One uninterrupted single-worker run of every data stage; the other cases compare to it."""
    ok(jam_cmd(ref_text, [s for s in REF_STAGES if s != "text-clean"], "--workers", "1"), timeout=600)
    for name in TEXT_OUT + IMAGE_OUT + ["text-tokens", "tokenizer", "vqvae", "instruct", "instruct-rejects"]:
        assert (ref_text / name / MANIFEST).exists(), name
    return ref_text


# -- 1. kill mid-run, re-run ----------------------------------------------------------------------
def kill_then_rerun(run: Path, stages: list[str], outputs: list[str], log: Path) -> bool:
    """SIGKILL the job's process group once it holds its output locks and has started writing
    (the first shard or temporary file, before the manifest); then the same command again."""
    cmd = jam_cmd(run, stages, "--workers", "1")
    proc = start(cmd, log)
    try:
        wait_for(lambda: all(lock_held(run / o) for o in outputs), 240, "the output locks", proc, log)
        wait_for(lambda: any(written(run / o) for o in outputs), 240, "the first file written", proc, log)
        was_writing = any(written(run / o) for o in outputs)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the job ended by itself ({proc.returncode}) before the kill"
    assert not all((run / o / MANIFEST).exists() for o in outputs), "killed too late: the stage had finished"
    print(
        f"{stages}: killed {'after the first file was written' if was_writing else 'before any file was written'}: "
        f"{sorted(str(p.relative_to(run)) for o in outputs for p in written(run / o))}"
    )
    ok(cmd)
    return was_writing


def test_kill_text_clean_and_rerun(ref_text, tmp_path):
    ref = ref_text
    run = tmp_path / "run"
    kill_then_rerun(run, ["text-clean"], TEXT_OUT, tmp_path / "job.log")
    assert_same(run, ref, TEXT_OUT)
    validate(run, TEXT_OUT)
    no_temp_files(run)


@pytest.mark.slow
def test_kill_images_and_rerun(ref, tmp_path):
    run = tmp_path / "run"
    copy_inputs(ref, run, ["tokenizer", "vqvae"])
    kill_then_rerun(run, ["images"], IMAGE_OUT, tmp_path / "job.log")
    assert_same(run, ref, IMAGE_OUT)
    validate(run, IMAGE_OUT)
    no_temp_files(run)


def test_killed_shard_write_leaves_no_complete_looking_file(tmp_path):
    """atomic_write in a process killed mid-write: no file at the target name, only a dot-temp."""
    target = tmp_path / "part-00000.tar"
    code = (
        "import os, signal\nfrom jamdata.io import atomic_write\n"
        f"with atomic_write({str(target)!r}) as f:\n"
        "    f.write(b'x' * 100000); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV)
    assert r.returncode == -signal.SIGKILL
    assert not target.exists()
    assert all(p.name.startswith(".part-00000.tar.tmp-") for p in tmp_path.iterdir())


# -- 2. unwritable / full output directory ---------------------------------------------------------
def test_output_dir_is_a_file(tmp_path, capsys):
    out = tmp_path / "not-a-dir"
    out.write_text("a file where the run directory should be\n")
    one_line_error(jam_here(jam_cmd(out, ["text-clean"]), capsys), str(out / "text-clean"))


def test_output_dir_under_proc(capsys):
    out = Path("/proc/jam-reliability-test")
    one_line_error(jam_here(jam_cmd(out, ["text-clean"]), capsys), str(out))


def test_unknown_stage_is_one_line(tmp_path, capsys):
    one_line_error(jam_here(jam_cmd(tmp_path / "run", ["text-clean", "imges"]), capsys), "'imges'", "images")
    assert not (tmp_path / "run").exists()  # refused before anything ran


@pytest.fixture
def immutable(tmp_path):
    """A directory nobody (root included) may write into, via `chattr +i`."""
    if not shutil.which("chattr"):
        pytest.skip("chattr not available (read-only directories cannot be made for root otherwise)")
    d = tmp_path / "read-only"
    made: list[Path] = []

    def make(p: Path) -> Path:
        p.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["chattr", "+i", str(p)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"chattr +i not permitted here: {r.stderr.strip()}")
        made.append(p)
        return p

    yield d, make
    for p in reversed(made):
        subprocess.run(["chattr", "-i", str(p)], check=False)


def test_permission_denied_run_dir(immutable, capsys):
    d, make = immutable
    out = make(d)  # the run directory itself is read-only: text-clean/ cannot be created
    one_line_error(jam_here(jam_cmd(out, ["text-clean"]), capsys), str(out / "text-clean"), "permission denied")


def test_permission_denied_dataset_dir(immutable, capsys):
    d, make = immutable
    make(d / "text-clean")  # the dataset directory exists but is read-only: no lock, no shards
    one_line_error(jam_here(jam_cmd(d, ["text-clean"]), capsys), str(d / "text-clean"))
    assert list((d / "text-clean").iterdir()) == []


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "tiny-fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tiny tmpfs to fill up (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full(tiny_fs):
    """8 kB of space: the text-clean shards cannot all be written."""
    line = one_line_error(jam(jam_cmd(tiny_fs, ["text-clean"])), "disk full", str(tiny_fs))
    assert "No space left on device" in line
    assert not (tiny_fs / "text-clean" / MANIFEST).exists()
    no_temp_files(tiny_fs)


@pytest.mark.slow
def test_disk_full_two_workers(tiny_fs):
    one_line_error(jam(jam_cmd(tiny_fs, ["text-clean"], "--workers", "2")), "disk full", str(tiny_fs), worker_logs=True)


def test_disk_full_atomic_write(tiny_fs):
    from jamdata.io import OutputDirError, atomic_write

    with pytest.raises(OutputDirError, match=f"disk full: output directory {tiny_fs}"):
        with atomic_write(tiny_fs / "big.bin") as f:
            f.write(b"\0" * 100_000)
    assert list(tiny_fs.iterdir()) == []  # neither the target nor the temporary file


# -- 3. two jobs, one output directory -------------------------------------------------------------
def test_second_job_is_refused_while_first_runs(ref_text, tmp_path):
    ref = ref_text
    run = tmp_path / "run"
    cmd = jam_cmd(run, ["text-clean"], "--workers", "1")
    log = tmp_path / "first.log"
    first = start(cmd, log)
    try:
        wait_for(lambda: all(lock_held(run / o) for o in TEXT_OUT), 240, "the first job's locks", first, log)
        os.killpg(first.pid, signal.SIGSTOP)  # hold it mid-run, locks held, for as long as the second needs
        try:
            second = jam(cmd)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        one_line_error(second, "being written by another job", str(run / "text-clean"))
        assert first.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert_same(run, ref, TEXT_OUT)
    validate(run, TEXT_OUT)


# -- 4. one worker or two: the same bytes -----------------------------------------------------------
@pytest.mark.slow
def test_two_workers_same_bytes(ref, tmp_path):
    run = tmp_path / "run"
    copy_inputs(ref, run, ["tokenizer", "vqvae"])
    ok(jam_cmd(run, ["text-clean", "text-sample", "images", "instruct"], "--workers", "2"), timeout=600)
    names = TEXT_OUT + ["text-tokens"] + IMAGE_OUT + ["instruct", "instruct-rejects"]
    assert_same(run, ref, names)
    validate(run, names)


# -- 5. bad input in every reader ----------------------------------------------------------------
def _jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _doc(i: int, tag: str) -> dict:
    text = (
        f"Document {i} of the {tag} set is about a small garden behind an old house. "
        "Every morning the owner walks along the path and waters the tomatoes before breakfast. "
        "In the afternoon the children come home from school and pick the ripe beans for dinner. "
        "When it rains they stay inside and read books about plants, birds and the weather. "
        "By the end of the summer there are more vegetables than the family can eat, "
        "so they give the rest to their neighbours and friends in the village."
    )
    return {"url": f"https://example.org/{tag}/{i}", "text": text, "timestamp": "2019-04-25T12:57:54Z"}


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """An uncompressed USTAR archive of (name, data) members with fixed times (same bytes every run)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# (rejects dataset, planted file or sample key, words the reason must contain)
PLANTED = [
    ("text-clean-rejects", "truncated.jsonl.gz", "unreadable from here on: EOFError"),
    ("text-clean-rejects", "truncated.jsonl.bz2", "unreadable from here on: EOFError"),
    ("text-clean-rejects", "truncated.jsonl.zst", "truncated"),
    ("text-clean-rejects", "corrupt.jsonl.gz", "unreadable from here on"),
    ("text-clean-rejects", "bad-json.jsonl", "malformed JSON"),
    ("text-clean-rejects", "latin1.jsonl", "invalid UTF-8"),
    ("text-clean-rejects", "enormous.jsonl", "longer than 100000 bytes"),
    ("text-clean-rejects", "latin1-book.txt", "invalid UTF-8"),
    ("text-clean-rejects", "empty-book.txt", "empty"),
    ("text-clean-rejects", "enormous-book.txt", "longer than 100000 bytes"),
    ("text-clean-rejects", "truncated-book.txt.gz", "unreadable from here on"),
    ("text-clean-rejects", "wiki.xml.bz2", "unreadable from here on"),
    ("text-clean-rejects", "2101.00001", "not a tar archive"),
    ("image-caption-rejects", "truncimg", "undecodable"),
    ("image-caption-rejects", "zeroimg", "empty_file"),
    ("image-caption-rejects", "notimg", "undecodable"),
    ("image-caption-rejects", "truncated.tar", "truncated_shard"),
    ("instruct-rejects", "lost-picture", "missing"),
    ("instruct-rejects", "chats.jsonl", "not valid JSON"),
    ("text-clean-rejects", "empty.jsonl.gz", "empty"),
    ("text-clean-rejects", "truncated.warc.wet.gz", "unreadable"),
    ("image-caption-rejects", "truncated-in-header.tar", "truncated_shard"),
]


def build_bad_inputs(root: Path, max_record: int) -> dict:
    """Planted bad files for every reader (PLANTED); returns the config overlay."""
    import zstandard

    t = root / "text"
    t.mkdir(parents=True)
    good = _jsonl([_doc(i, "good") for i in range(3)])
    (t / "good.jsonl").write_bytes(good)
    lines = _jsonl([_doc(i, "trunc") for i in range(6)])
    (t / "truncated.jsonl.gz").write_bytes(gzip.compress(lines, mtime=0)[: len(gzip.compress(lines, mtime=0)) // 2])
    (t / "truncated.jsonl.bz2").write_bytes(bz2.compress(lines)[: len(bz2.compress(lines)) // 2])
    z = zstandard.ZstdCompressor().compress(lines)
    (t / "truncated.jsonl.zst").write_bytes(z[: len(z) // 2])
    corrupt = bytearray(gzip.compress(lines, mtime=0))
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 16] = b"\xff" * 16
    (t / "corrupt.jsonl.gz").write_bytes(bytes(corrupt))
    (t / "bad-json.jsonl").write_bytes(b'{"url": "https://example.org/x", "text": "unterminated\n')
    (t / "latin1.jsonl").write_bytes(json.dumps(_doc(0, "latin")).encode()[:-2] + ' caf\xe9"}\n'.encode("latin-1"))
    (t / "empty.jsonl.gz").write_bytes(b"")
    (t / "enormous.jsonl").write_bytes(b'{"text": "' + b"a" * (max_record * 2) + b'"}\n')
    books = root / "books"
    books.mkdir()
    (books / "latin1-book.txt").write_bytes("Une histoire d'\xe9t\xe9 en fran\xe7ais.\n".encode("latin-1") * 20)
    (books / "empty-book.txt").write_bytes(b"")
    (books / "enormous-book.txt").write_bytes(b"word " * (max_record // 5 + 100))
    book = ("Chapter one. " + " ".join(f"word{j}" for j in range(2000))).encode()
    gz = gzip.compress(book, mtime=0)
    (books / "truncated-book.txt.gz").write_bytes(gz[: len(gz) // 2])
    wiki = root / "wiki.xml.bz2"
    xml = (
        b"<mediawiki><page><title>A</title><ns>0</ns><id>1</id><revision><text>"
        + b"Article text. " * 400
        + b"</text></revision></page></mediawiki>"
    )
    wiki.write_bytes(bz2.compress(xml)[: len(bz2.compress(xml)) // 2])
    arxiv = root / "arxiv"
    arxiv.mkdir()
    (arxiv / "2101.00001").write_bytes(bytes(range(256)) * 8)  # neither a tar nor a .tex file
    wet = root / "truncated.warc.wet.gz"
    rec = (
        b"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Target-URI: https://example.org/w\r\n"
        b"WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-000000000001>\r\n"
        b"WARC-Date: 2019-04-25T12:57:54Z\r\nContent-Type: text/plain\r\n"
    )
    body = b"Plain text of a crawled page. " * 200
    rec += b"Content-Length: %d\r\n\r\n" % len(body) + body + b"\r\n\r\n"
    wgz = gzip.compress(rec, mtime=0)
    wet.write_bytes(wgz[: len(wgz) // 2])

    # images: one tar with a truncated, a zero-byte and a not-an-image picture, one truncated tar
    with tarfile.open(REPO / "sample_data" / "images" / "shapes-00000.tar") as src:
        good_jpg = src.extractfile("000000000.jpg").read()
        members = [(m.name, src.extractfile(m).read()) for m in src.getmembers()[:12]]
    cap = b"a red circle on a white background"
    meta = json.dumps({"url": "https://example.org/i.jpg", "width": 96, "height": 96}).encode()
    bad_tar = members[:6] + [
        ("truncimg.jpg", good_jpg[: len(good_jpg) // 3]),
        ("truncimg.txt", cap),
        ("truncimg.json", meta),
        ("zeroimg.jpg", b""),
        ("zeroimg.txt", cap),
        ("zeroimg.json", meta),
        ("notimg.jpg", b"this is a caption file, not a picture\n" * 4),
        ("notimg.txt", cap),
        ("notimg.json", meta),
    ]
    img = root / "images"
    img.mkdir()
    (img / "bad-members.tar").write_bytes(tar_bytes(bad_tar))
    whole = tar_bytes(members[6:])
    first = len(members[6][1])
    (img / "truncated.tar").write_bytes(whole[: 512 + first // 2])  # inside the first picture's bytes
    second_header = 512 + -(-first // 512) * 512
    (img / "truncated-in-header.tar").write_bytes(whole[: second_header + 100])  # inside a member header

    # instruct: a missing image (howto) and a line of bad JSON (conversation)
    how = root / "howto"
    (how / "images").mkdir(parents=True)
    pic = next((REPO / "sample_data" / "instruct" / "howto" / "images").glob("*.png"))
    shutil.copy(pic, how / "images" / "ok.png")
    (how / "articles.jsonl").write_bytes(
        _jsonl(
            [
                {
                    "id": "ok-article",
                    "title": "Water a Plant",
                    "steps": [{"text": "Pour water slowly.", "image": "images/ok.png"}],
                },
                {
                    "id": "lost-picture",
                    "title": "Tie a Knot",
                    "steps": [{"text": "Cross the ends.", "image": "images/gone.png"}],
                },
            ]
        )
    )
    conv = root / "conversations"
    conv.mkdir()
    (conv / "chats.jsonl").write_bytes(
        _jsonl(
            [
                {
                    "id": "chat-ok",
                    "turns": [{"role": "user", "content": "Hello there?"}, {"role": "assistant", "content": "Hello."}],
                }
            ]
        )
        + b'{"id": "chat-broken", "turns": [{"role": "user", "content": "unterminated\n'
    )

    overlay = {
        "text": {
            "sources": {
                "c4": {"inputs": [{"format": "c4", "paths": [str(t)]}]},
                "books": {"inputs": [{"format": "text", "paths": [str(books)]}]},
                "wikipedia": {"inputs": [{"format": "wiki_xml", "paths": [str(wiki)]}]},
                "arxiv": {"inputs": [{"format": "arxiv", "paths": [str(arxiv)]}]},
                "commoncrawl": {"inputs": [{"format": "wet", "paths": [str(wet)]}]},
            },
            "clean": {"max_record_bytes": max_record},
        },
        "images": {
            "inputs": [str(img / "bad-members.tar"), str(img / "truncated.tar"), str(img / "truncated-in-header.tar")]
        },
        "instruct": {
            "sources": [{"format": "howto", "paths": [str(how)]}, {"format": "conversation", "paths": [str(conv)]}]
        },
    }
    return overlay


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = _merge(base.get(k) or {}, v) if isinstance(v, dict) and k != "sources" else v
    return base


@pytest.fixture(scope="module")
def bad_run(ref, tmp_path_factory) -> Path:
    """text-clean, images and instruct over the planted bad inputs (tokenizer/vqvae from `ref`)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    cfg = _merge(yaml.safe_load(DEMO.read_text()), build_bad_inputs(root / "inputs", max_record=100_000))
    config = root / "bad.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = root / "run"
    copy_inputs(ref, run, ["tokenizer", "vqvae"])
    ok(jam_cmd(run, ["text-clean", "images", "instruct"], config=config), timeout=600)
    return run


def planted_reject(run: Path, name: str, needle: str, reason: str) -> None:
    found = rejects(run, name)
    hits = [
        x
        for x in found
        if needle in Path(x.get("file") or "").name
        or (x.get("id") or "").startswith(needle)
        or f"-{needle}" in (x.get("id") or "")
    ]
    listing = "\n".join(f"  {Path(x['file'] or '').name} | {x['id']} | {x['reason'][:90]}" for x in found)
    assert hits, f"{name}: no reject for planted {needle!r}; rejects are:\n{listing}"
    assert any(reason in (x["reason"] or "") for x in hits), (
        f"{name}: {needle!r} rejected without {reason!r}:\n{listing}"
    )


@pytest.mark.slow
def test_bad_input_matrix(bad_run):
    """Every planted bad input is in its rejects dataset with a reason; the run still finishes."""
    problems = []
    for name, needle, reason in PLANTED:
        try:
            planted_reject(bad_run, name, needle, reason)
        except AssertionError as e:
            problems.append(str(e).splitlines()[0])
    assert not problems, "\n".join(problems)
    for name in ("text-clean-rejects", "image-caption-rejects", "instruct-rejects"):
        manifest = read_manifest(str(bad_run / name))
        assert manifest["totals"]["records"] == len(rejects(bad_run, name)) > 0
    validate(bad_run, TEXT_OUT + IMAGE_OUT + ["instruct", "instruct-rejects"])
    # the good records next to the bad ones still made it through
    texts = [
        r["text"]
        for s in read_manifest(str(bad_run / "text-clean"))["shards"]
        for r in pq.read_table(bad_run / "text-clean" / s["path"]).to_pylist()
    ]
    assert any("of the good set" in t for t in texts), texts
    assert read_manifest(str(bad_run / "image-caption"))["totals"]["records"] >= 2  # the 2 good samples
    assert read_manifest(str(bad_run / "instruct"))["totals"]["records"] >= 2
