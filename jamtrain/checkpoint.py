"""Atomic training checkpoints: DeepSpeed's own files plus per-rank loader and RNG state.

Layout under the checkpoint directory:

    step-00000040/                  one complete checkpoint (DeepSpeed tag = directory name)
        mp_rank_00_model_states.pt, zero_pp_rank_*_optim_states.pt   (DeepSpeed)
        trainer_rank00000.pt ...    loader state_dict + RNG states of each rank
        COMPLETE.json               written last: step, world size, size (+ sha256) of every file
    latest                          name of the newest complete checkpoint (informational)
    .tmp-step-00000050/             a save in progress (or killed); never loaded, removed later
    .latest.tmp-<pid>-<hex>         `latest` being replaced (or killed); removed later

A checkpoint is written under a temporary name, sealed with COMPLETE.json and renamed, so a crash
mid-save never leaves a directory that looks complete. On resume every candidate is verified
against its marker (newest first); a partial or altered one is refused with the reason and the
previous good one is used. Before DeepSpeed (which unpickles without restrictions) reads a
checkpoint, every `.pt` file in it is loaded weights-only with an allow-list of DeepSpeed's own
types (`check_safe`), so a file holding pickled code is refused before any of it runs; rank files
hold plain types and tensors only and are read weights-only.
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
from typing import Any, Callable, cast

import numpy as np
import torch

from jamdata.errors import UserError
from jamdata.io import atomic_write, sha256_file
from jamdata.safe_load import RefusedCheckpoint, load_weights_only

log = logging.getLogger(__name__)

MARKER = "COMPLETE.json"
LATEST = "latest"
TMP_PREFIX = ".tmp-"
TAG_RE = re.compile(r"^step-(\d{8})$")


class CheckpointError(UserError, ValueError):
    """No usable checkpoint where one was required, or one that cannot be resumed here."""


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def rank_file(rank: int) -> str:
    return f"trainer_rank{rank:05d}.pt"


# -- RNG state -------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Every generator's state in plain types and tensors, so the rank file loads weights-only."""
    # legacy=True (the default): the (name, keys, pos, has_gauss, cached) tuple
    name, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    npy = state["numpy"]
    if isinstance(npy, dict):
        npy = (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    np.random.set_state(npy)  # a tuple with an ndarray: written before the plain form
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
    refused: list[tuple[Path, list[str]]] = []
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


def save(
    engine,
    ckpt_dir: Path,
    step: int,
    rank: int,
    world_size: int,
    rank_state: dict,
    meta: dict,
    keep: int = 2,
    hash_files: bool = True,
    before_seal: Callable[[], None] | None = None,
) -> Path:
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
        files = {
            rel: {"bytes": (tmp / rel).stat().st_size, "sha256": sha256_file(tmp / rel) if hash_files else None}
            for rel in _files(tmp)
        }
        missing = [rank_file(r) for r in range(world_size) if rank_file(r) not in files]
        if missing:
            raise CheckpointError(f"{tmp}: ranks did not write {', '.join(missing)}")
        marker = {"step": step, "tag": tag, "world_size": world_size, "meta": meta, "files": files}
        with atomic_write(tmp / MARKER, "w") as f:
            json.dump(marker, f, indent=1, sort_keys=True)
        if final.exists():
            if run_of(final) not in (meta.get("run_id"), None):
                raise CheckpointError(f"{final} belongs to another run ({run_of(final)}); not replacing it")
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
        with atomic_write(ckpt_dir / LATEST, "w") as f:
            f.write(tag + "\n")
        prune(ckpt_dir, keep, meta.get("run_id"))
    _barrier()
    return final


def run_of(path: Path) -> str | None:
    """The id of the run that wrote this checkpoint (None: unreadable marker or written before
    checkpoints carried one)."""
    try:
        return read_marker(path).get("meta", {}).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def prune(ckpt_dir: Path, keep: int, run_id: str | None = None) -> None:
    """Keep the newest `keep` checkpoints of this run that pass the size check; remove this run's
    checkpoints older than those and abandoned temporaries (refused newer ones stay for
    inspection). Checkpoints another run wrote (a different run id) are neither counted nor
    deleted, so one run never removes another's."""
    mine = [p for p in candidates(ckpt_dir) if run_id is None or run_of(p) in (run_id, None)]
    good = [p for p in mine if not verify(p, deep=False)][: max(1, keep)]
    if good:
        for old in mine:
            if old.name < good[-1].name:
                shutil.rmtree(old, ignore_errors=True)
    remove_leftovers(ckpt_dir)


# `.tmp-step-*` (an unsealed save) and `.<name>.tmp-<pid>-<hex>` (jamdata.io.atomic_write, e.g. of `latest`)
_LEFTOVER = re.compile(r"^(\.tmp-step-\d+|\..+\.tmp-\d+-[0-9a-f]+)$")


def remove_leftovers(ckpt_dir: Path) -> list[Path]:
    """Delete temporaries that a killed save left in the checkpoint directory. Only safe while no
    other save is writing there (the training directory's lock guarantees it)."""
    removed: list[Path] = []
    if not Path(ckpt_dir).is_dir():
        return removed
    for p in Path(ckpt_dir).iterdir():
        if _LEFTOVER.match(p.name):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def load(engine, path: Path, rank: int, world_size: int) -> dict:
    """Collective: restore DeepSpeed state (module, optimizer, scheduler) and return this rank's
    trainer state (loader state, RNG states, step)."""
    marker = read_marker(path)
    if marker["world_size"] != world_size:
        raise CheckpointError(
            f"{path} was written by {marker['world_size']} ranks, this run has {world_size}; an exact resume "
            "needs the same number of ranks (export the weights and start a new run to change it)"
        )
    check_safe(path)
    load_path, _ = engine.load_checkpoint(
        str(path.parent),
        tag=path.name,
        load_module_strict=True,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    if load_path is None:
        raise CheckpointError(f"{path}: DeepSpeed could not load it")
    return read_rank_state(path, rank)


def read_rank_state(path: Path, rank: int) -> dict:
    """This rank's trainer state (loader state, RNG states, step), read weights-only."""
    return _load_file(Path(path) / rank_file(rank), _trainer_globals())


# -- safe loading ----------------------------------------------------------------------------------
def _trainer_globals() -> list:
    """What a rank file may need besides tensors and plain containers: nothing for files written
    now; files written before the RNG states were saved in plain form hold numpy's state as an
    ndarray (rebuilt by numpy's array reconstructor from raw bytes)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]  # the same function
    return [
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
    ]


def _deepspeed_globals() -> list:
    """The classes DeepSpeed pickles into its own checkpoint files (ZeRO optimizer states hold the
    loss scaler, the ZeRO stage enum and the fragment addresses of parameters)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _load_file(path: Path, allow: list, mmap: bool = False) -> Any:
    try:
        return load_weights_only(str(path), allow, mmap=mmap)
    except RefusedCheckpoint as e:
        raise CheckpointError(f"{path}: refusing to load: {e}") from None
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"{path}: cannot read it ({str(e).strip().splitlines()[0]})") from None


def check_safe(path: Path) -> None:
    """Load every `.pt` file of a checkpoint weights-only before DeepSpeed, which unpickles its
    files with weights_only=False, reads them: a file that needs anything but DeepSpeed's own
    types (or, for rank files, plain state) is refused before any of it runs. The marker's hashes
    do not protect against this: anyone who can write the files can also re-seal the marker."""
    rank_re = re.compile(r"^trainer_rank\d+\.pt$")
    for f in sorted(Path(path).rglob("*.pt")):
        _load_file(f, _trainer_globals() if rank_re.match(f.name) else _deepspeed_globals(), mmap=True)
