"""DDP plumbing: relaunch under torchrun, process-group setup, gathers. One process works too.

`trajstack stage1 --nproc N` re-executes itself as `python -m torch.distributed.run
--nproc_per_node=N -m stage1_nn.train ...`; under torchrun (RANK/WORLD_SIZE set) each process
joins the group (nccl on GPU, gloo on CPU). Rank 0 writes every artifact.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from trajstack.config import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the DDP group (rank 0 of 1 without torchrun) and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def under_torchrun() -> bool:
    """Whether torchrun launched this process (it sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch_with_torchrun(argv: list[str], nproc: int) -> int:
    """Run this command again as `nproc` torchrun processes; returns their exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "stage1_nn.train", *_without_nproc(argv)]
    return subprocess.call(cmd)


def _without_nproc(argv: list[str]) -> list[str]:
    # torchrun's own parser would read `--nproc` as an ambiguous abbreviation of its options.
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def setup(device_name: str) -> DistEnv:
    """Join the process group when launched by torchrun; pick the device of this process."""
    if device_name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("stage1.device=cuda but torch sees no GPU; use stage1.device=auto or cpu")
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if not under_torchrun():
        return DistEnv(device=torch.device("cuda" if use_cuda else "cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistEnv(rank, world, local_rank, device)


def barrier(env: DistEnv) -> None:
    """Wait for every process (no-op in a single process)."""
    if env.distributed:
        dist.barrier()


def gather(env: DistEnv, obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order, on every process."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def teardown(env: DistEnv) -> None:
    """Leave the process group, if one was joined."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
