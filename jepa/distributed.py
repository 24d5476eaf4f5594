"""Process-group setup for torchrun (env:// rendezvous) and single-process runs."""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from jepa.device import resolve_device


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: `rank` of `world_size`, on `device`."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def die_with_launcher() -> None:
    """Under torchrun, make this worker die when its launcher does (Linux: a parent-death
    signal). torchrun starts each worker in a session of its own, so killing the launcher's
    process group (a cancelled job, `kill -9 -<pgid>`) would otherwise leave the worker
    training on, writing into a run directory that a rerun is about to use."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    launcher = os.getppid()
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != launcher:  # the launcher died before the signal was armed
        os._exit(1)


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Join the process group that torchrun describes through its environment.

    Without torchrun's variables this is a plain single process. NCCL serves GPUs,
    gloo the CPU. Idempotent: a second call returns the same description.
    """
    die_with_launcher()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        store = attempt_store(rank, world_size, timeout)
        dist.init_process_group(
            backend=backend,
            init_method=None if store is not None else "env://",
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=timeout,
        )
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def attempt_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dist.Store | None:
    """Under torchrun, the rendezvous store of this attempt of the worker group: torchrun's
    store with a prefix per restart (`TORCHELASTIC_RESTART_COUNT`); None without torchrun.

    torchrun keeps one store across the restarts of a group (torch 2.14, c10d rendezvous)
    and `env://` adds no prefix, so a restarted group could read the dead group's addresses
    and fail with "Gloo connectFullMesh failed ... Connection refused", depending on which
    rank writes first.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        return None
    agent_serves = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=rank == 0 and not agent_serves,
        timeout=timeout,
    )
    return dist.PrefixStore(f"jepa/attempt_{attempt}", store)


def cleanup_distributed() -> None:
    """Leave the process group, if any."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (identity in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def value_range(value: int) -> tuple[int, int]:
    """`(min, max)` of an integer over ranks (`(value, value)` in a single process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value, value
    both = torch.tensor([-value, value], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        both = both.cuda()
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    return -int(both[0]), int(both[1])


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
