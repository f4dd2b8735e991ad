"""The training output directory belongs to one run at a time.

A run claims its directory before writing anything:

- a lock (`OUT/.train.lock`, an flock held for the whole run) refuses a second trainer; the file
  names the holder's pid and host for the refusal message. The kernel drops the lock when its
  process dies, so a killed run never blocks the next one, whatever the file still says;
- a fresh run refuses a directory that already holds another run's outputs (checkpoints, log,
  evaluation, export) unless it resumes that run (`--resume`) or replaces it (`--overwrite`,
  which deletes the old outputs first), so a new run never mixes its checkpoints and log with an
  older run's, and pruning never compares against the older run's steps;
- `run.json` records the run's id; each checkpoint carries it and pruning only ever deletes
  checkpoints of its own run;
- temporary files a killed process left (atomic writes, unsealed checkpoints) are removed, and on
  resume the log is cut back to the resumed step so no step is logged twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from jamdata.errors import UserError
from jamdata.io import LockHeld, acquire_lock, atomic_write, release_lock
from jamdata.manifest import MANIFEST, OutputLockedError
from jamtrain import checkpoint as ckpt

LOCK = ".train.lock"
CKPT_DIR = "checkpoints"
RUN_FILE = "run.json"
LOG = "log.jsonl"
# what a run writes (besides the lock): a directory holding any of these holds a run
OUTPUTS = (CKPT_DIR, LOG, "eval.json", "export", RUN_FILE, MANIFEST)
# temporaries of jamdata.io.atomic_write (`.<name>.tmp-<pid>-<hex>`) and of write_export
_TMP_FILE = re.compile(r"^\..+\.tmp(-\d+-[0-9a-f]+)?$")


class TrainDirError(UserError, ValueError):
    """The training output directory holds another run (or cannot be claimed as asked)."""


class TrainDirLocked(OutputLockedError):
    """Another live process is training into this directory."""


@dataclass
class Claim:
    run_id: str
    cleared: list[str]  # outputs of an older run removed by --overwrite


# -- the lock --------------------------------------------------------------------------------------
def _holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "pid unknown"
    return f"pid {info['pid']}" + (f" on {info['host']}" if info.get("host") else "")


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold the directory's training lock (refused with TrainDirLocked while another process holds it)."""
    out_dir = Path(out_dir)
    lock = out_dir / LOCK
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        f: IO[str] = acquire_lock(lock)
    except OSError as e:  # a file in the way, read-only mount, permissions, disk full: name the directory once
        raise TrainDirError(f"cannot write to the training output directory {out_dir}: {e.strerror or e}") from None
    except LockHeld:
        raise TrainDirLocked(
            f"{out_dir} is being trained by another process ({_holder(lock)}, lock {lock}); "
            "wait for it to finish or choose another output directory"
        ) from None
    try:
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
        f.flush()
        yield
    finally:
        release_lock(f)


# -- owning the directory --------------------------------------------------------------------------
def existing_outputs(out_dir: Path) -> list[str]:
    """The run outputs present in out_dir (an empty checkpoints/ directory does not count)."""
    found = []
    for name in OUTPUTS:
        p = Path(out_dir) / name
        if name == CKPT_DIR:
            if p.is_dir() and any(not c.name.startswith(".") for c in p.iterdir()):
                found.append(name + "/")
        elif p.exists():
            found.append(name + ("/" if p.is_dir() else ""))
    return found


def remove_leftovers(out_dir: Path) -> list[Path]:
    """Delete what killed processes left half-written: atomic-write temporaries in the output,
    export and checkpoint directories and unsealed `.tmp-step-*` checkpoints. Only safe while
    holding the lock (a live writer's temporaries look the same)."""
    out_dir = Path(out_dir)
    removed = []
    for d in (out_dir, out_dir / "export"):
        if d.is_dir():
            for p in d.iterdir():
                if p.is_file() and _TMP_FILE.match(p.name):
                    p.unlink(missing_ok=True)
                    removed.append(p)
    return removed + ckpt.remove_leftovers(out_dir / CKPT_DIR)


def claim(out_dir: Path, resume: bool, overwrite: bool) -> Claim:
    """Make out_dir this run's (call while holding the lock): refuse another run's outputs unless
    resuming or overwriting, clear them for --overwrite, and return the run's id."""
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise TrainDirError(
            "--resume continues the run in the output directory and --overwrite deletes it; pass one of them"
        )
    remove_leftovers(out_dir)
    found = existing_outputs(out_dir)
    cleared: list[str] = []
    if found and not resume:
        if not overwrite:
            raise TrainDirError(
                f"{out_dir} already holds a training run ({', '.join(found)}); pass --resume to "
                "continue it or --overwrite to delete it and start afresh"
            )
        for name in found:
            p = out_dir / name.rstrip("/")
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        cleared = found
    run_id = _read_run_id(out_dir) if resume else None
    if run_id is None:
        run_id = uuid.uuid4().hex[:16]
        with atomic_write(out_dir / RUN_FILE, "w") as f:
            json.dump({"run_id": run_id}, f)
    return Claim(run_id, cleared)


def _read_run_id(out_dir: Path) -> str | None:
    try:
        return str(json.loads((out_dir / RUN_FILE).read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- the log ---------------------------------------------------------------------------------------
def truncate_log(path: Path, step: int) -> int:
    """Keep only the log records of steps up to `step` (the resumed checkpoint), rewritten
    atomically, so the steps re-run after a resume appear once. A line cut short by a kill is
    dropped. Returns the number of records removed."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            keep = int(rec["step"]) <= step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        with atomic_write(path, "w") as f:
            f.write("".join(x + "\n" for x in kept))
    return dropped
