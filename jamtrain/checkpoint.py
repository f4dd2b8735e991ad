"""Atomic training checkpoints: DeepSpeed's own files plus per-rank loader and RNG state.

Layout under the checkpoint directory:

    step-00000040/                  one complete checkpoint (DeepSpeed tag = directory name)
        mp_rank_00_model_states.pt, zero_pp_rank_*_optim_states.pt   (DeepSpeed)
        trainer_rank00000.pt ...    loader state_dict + RNG states of each rank
        COMPLETE.json               written last: step, world size, size (+ sha256) of every file
    latest                          name of the newest complete checkpoint (informational)
    .tmp-step-00000050/             a save in progress (or killed); never loaded, removed later

A checkpoint is written under a temporary name, sealed with COMPLETE.json and renamed, so a crash
mid-save never leaves a directory that looks complete. On resume every candidate is verified
against its marker (newest first); a partial or altered one is refused with the reason and the
previous good one is used.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from jamdata.io import atomic_write, sha256_file

log = logging.getLogger(__name__)

MARKER = "COMPLETE.json"
LATEST = "latest"
TMP_PREFIX = ".tmp-"
TAG_RE = re.compile(r"^step-(\d{8})$")


class CheckpointError(ValueError):
    """No usable checkpoint where one was required, or one that cannot be resumed here."""


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def rank_file(rank: int) -> str:
    return f"trainer_rank{rank:05d}.pt"


# -- RNG state -------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# -- verification ----------------------------------------------------------------------------------
def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != MARKER)


def verify(path: Path, deep: bool = True) -> list[str]:
    """Every reason this checkpoint cannot be trusted (empty = good)."""
    marker = path / MARKER
    if not marker.exists():
        return [f"no {MARKER} (the save did not finish)"]
    try:
        info = json.loads(marker.read_text())
        files = info["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return [f"{MARKER} unreadable ({e})"]
    problems = []
    for rel, want in sorted(files.items()):
        p = path / rel
        if not p.exists():
            problems.append(f"{rel}: missing")
        elif p.stat().st_size != want["bytes"]:
            problems.append(f"{rel}: {p.stat().st_size} bytes, marker says {want['bytes']} (truncated or altered)")
        elif deep and want.get("sha256") and sha256_file(p) != want["sha256"]:
            problems.append(f"{rel}: sha256 differs from the marker (altered)")
    return problems


def read_marker(path: Path) -> dict:
    return json.loads((path / MARKER).read_text())


def candidates(ckpt_dir: Path) -> list[Path]:
    """Checkpoint directories, newest step first (partial temp directories excluded)."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and TAG_RE.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


@dataclass
class Choice:
    path: Path | None
    refused: list[tuple[Path, list[str]]]


def find_resumable(ckpt_dir: Path, deep: bool = True, warn: Callable[[str], None] = log.warning) -> Choice:
    """The newest checkpoint that verifies; each refused newer one is reported with its reasons."""
    refused = []
    for path in candidates(Path(ckpt_dir)):
        problems = verify(path, deep)
        if not problems:
            return Choice(path, refused)
        refused.append((path, problems))
        warn(f"refusing checkpoint {path}: {'; '.join(problems)}; falling back to the previous one")
    return Choice(None, refused)


# -- save / load -----------------------------------------------------------------------------------
def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(engine, ckpt_dir: Path, step: int, rank: int, world_size: int, rank_state: dict,
         meta: dict, keep: int = 2, hash_files: bool = True,
         before_seal: Callable[[], None] | None = None) -> Path:
    """Collective: every rank calls it. Returns the sealed checkpoint directory."""
    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(step)
    tmp_tag = TMP_PREFIX + tag
    tmp = ckpt_dir / tmp_tag
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    _barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, client_state={"jam_meta": meta}, save_latest=False)
    with atomic_write(tmp / rank_file(rank), "wb") as f:
        torch.save({"rank": rank, "world_size": world_size, "step": step, **rank_state}, f)
    _barrier()
    final = ckpt_dir / tag
    if before_seal is not None:
        before_seal()
    if rank == 0:
        files = {rel: {"bytes": (tmp / rel).stat().st_size, "sha256": sha256_file(tmp / rel) if hash_files else None}
                 for rel in _files(tmp)}
        missing = [rank_file(r) for r in range(world_size) if rank_file(r) not in files]
        if missing:
            raise CheckpointError(f"{tmp}: ranks did not write {', '.join(missing)}")
        marker = {"step": step, "tag": tag, "world_size": world_size, "meta": meta, "files": files}
        with atomic_write(tmp / MARKER, "w") as f:
            json.dump(marker, f, indent=1, sort_keys=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
        with atomic_write(ckpt_dir / LATEST, "w") as f:
            f.write(tag + "\n")
        prune(ckpt_dir, keep)
    _barrier()
    return final


def prune(ckpt_dir: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints that pass the size check; remove checkpoints older than
    those and abandoned temporary directories (refused newer ones stay for inspection)."""
    good = [p for p in candidates(ckpt_dir) if not verify(p, deep=False)][:max(1, keep)]
    if good:
        for old in candidates(ckpt_dir):
            if old.name < good[-1].name:
                shutil.rmtree(old, ignore_errors=True)
    for p in ckpt_dir.iterdir():
        if p.is_dir() and p.name.startswith(TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)


def load(engine, path: Path, rank: int, world_size: int) -> dict:
    """Collective: restore DeepSpeed state (module, optimizer, scheduler) and return this rank's
    trainer state (loader state, RNG states, step)."""
    marker = read_marker(path)
    if marker["world_size"] != world_size:
        raise CheckpointError(
            f"{path} was written by {marker['world_size']} ranks, this run has {world_size}; an exact resume "
            "needs the same number of ranks (export the weights and start a new run to change it)")
    load_path, _ = engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=True,
                                          load_optimizer_states=True, load_lr_scheduler_states=True)
    if load_path is None:
        raise CheckpointError(f"{path}: DeepSpeed could not load it")
    return torch.load(path / rank_file(rank), map_location="cpu", weights_only=False)
