"""Data-parallel VQ-VAE training under torchrun: process group, devices, codebook agreement.

`torchrun --nproc_per_node N -m jamdata.cli vqvae train ...` starts N processes with RANK,
WORLD_SIZE and LOCAL_RANK set; each joins one process group (NCCL on GPUs, gloo on CPUs), reads
its own share of the data (train_data.ImageStream), and gradients are averaged by
DistributedDataParallel. The EMA codebook is updated outside autograd, so `CodebookSync` sums its
statistics over ranks and takes restarted codes from rank 0. Rank 0 alone writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from jamdata.config import ConfigError

DEVICES = ("cpu", "cuda", "auto")


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def gather(self, obj):
        """Every rank's `obj` (a list, rank order) on every rank."""
        if not self.active:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name not in DEVICES:
        raise ConfigError("vqvae.train.device", f"unknown device {name!r}", list(DEVICES))
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("vqvae.train.device", "is cuda but this machine has no CUDA device (use cpu or auto)")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def setup(device: str = "cpu") -> Dist:
    """Join the process group torchrun describes (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if world <= 1:
        return Dist(0, 1, dev)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), dev)


def teardown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class CodebookSync:
    """What `VectorQuantizer.sync` calls under data parallelism."""

    @staticmethod
    def sum(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def share(*tensors: torch.Tensor) -> None:
        for t in tensors:
            dist.broadcast(t, src=0)
