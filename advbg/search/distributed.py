"""torch.distributed for the search: join torchrun's process group, shard units by rank, small collectives.

Launched by ``torchrun`` (WORLD_SIZE > 1 in the environment) a process joins the group on first use: NCCL when
it searches on CUDA, gloo on CPU. Each rank then uses ``cuda:LOCAL_RANK``. Without torchrun everything here is
a no-op for a single process, so the same code path serves both.
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
_TIMEOUT = _dt.timedelta(hours=2)   # ranks wait at the end for the slowest one's last unit


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run, and the only place barriers and collectives happen: who writes (``main``),
    which units are this rank's (``shard``), and the waits between them. No-ops for a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share: every world-th item from its rank on (round robin balances classes sorted in a
        store; each item goes to exactly one rank, none is padded or repeated)."""
        return list(items[self.rank::self.world])

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum_int(self, value: int) -> int:
        if not self.active:
            return value
        box = [None] * self.world
        dist.all_gather_object(box, int(value))
        return int(sum(box))


def launched() -> bool:
    """True inside a torchrun launch of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device(device: torch.device) -> torch.device:
    """Under torchrun a bare 'cuda' (or cuda:0) means this process's GPU, cuda:LOCAL_RANK."""
    if device.type == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % max(1, torch.cuda.device_count()))
    return device


def setup(device: torch.device | None = None) -> Ranks:
    """Join (once) the process group torchrun set up; single-process Ranks when not launched by torchrun."""
    if not launched():
        return Ranks()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(local_device(device))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=_TIMEOUT)
    return Ranks(dist.get_rank(), dist.get_world_size(), local)
