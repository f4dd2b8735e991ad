"""Process-group set-up for one CPU process, torchrun or the deepspeed launcher, and the device name."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Iterator

import torch

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def process_group(cpu_shm_comm: bool = False) -> Iterator[tuple[int, int, int]]:
    """`setup_distributed` for the length of a run: a group this call joined is left at the end,
    and the launch variables it set are removed, so a later run or test in the same process starts
    as this one did (a leftover world of one would make the next loader or fork join it)."""
    joined = not torch.distributed.is_initialized()
    before = {k: os.environ.get(k) for k in LAUNCH_ENV}
    try:
        yield setup_distributed(cpu_shm_comm)
    finally:
        if joined:
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            for k, v in before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def setup_distributed(cpu_shm_comm: bool = False) -> tuple[int, int, int]:
    """(rank, world_size, local_rank). Under torchrun/deepspeed the launcher's env is used; a plain
    process becomes a world of one (gloo on CPU). The CPU shared-memory all-reduce extension is
    compiled (once, cached in TORCH_EXTENSIONS_DIR) only when asked for."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(_free_port())
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    cpu = get_accelerator().device_name() == "cpu"
    if cpu and not cpu_shm_comm:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if cpu else None, verbose=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local_rank = int(os.environ["LOCAL_RANK"])
    if not cpu:
        get_accelerator().set_device(local_rank)
    return rank, world, local_rank


def device_name() -> str:
    from deepspeed.accelerator import get_accelerator

    name = get_accelerator().device_name()
    return "cpu" if name == "cpu" else f"{name}:{get_accelerator().current_device()}"


# -- building blocks ---------------------------------------------------------------------------
