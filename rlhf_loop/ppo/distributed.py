"""Data-parallel PPO across processes, for ``accelerate launch`` or ``torchrun``.

Both launchers set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; with them each process rolls
out its share of each batch's prompts (the batch stays the configured size), gradients are
averaged before every optimiser step (so all replicas stay identical), and only rank 0 touches
the database and the disk. Without them (the worker, a single GPU, a laptop) every call here is
a no-op.

Gradients are averaged by hand rather than through DistributedDataParallel so the policy's
forward stays the plain peft model call in every setting.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, setting: str) -> str:
        """One GPU per process when launched on GPUs; the setting otherwise."""
        if self.size > 1 and torch.cuda.is_available() and setting in {"auto", "cuda"}:
            return f"cuda:{self.local_rank}"
        return setting

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's contiguous part of ``items``: the parts cover them once and differ in
        size by one at most, earlier ranks taking the remainder (16 over 3: 6, 5, 5), so a batch
        configured for the round is that size on any number of processes."""
        base, extra = divmod(len(items), self.size)
        start = self.rank * base + min(self.rank, extra)
        return list(items[start : start + base + (self.rank < extra)])

    def most(self, value: int) -> int:
        """The largest ``value`` among the processes."""
        if self.size == 1:
            return value
        box = torch.tensor([value], dtype=torch.long, device=self._comm)
        dist.all_reduce(box, op=dist.ReduceOp.MAX)
        return int(box.item())

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Each parameter's gradient, averaged over the processes. One without a gradient here
        (this process ran out of minibatches) counts as zero, so every process reduces the same
        tensors and steps with the same average."""
        if self.size == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def gather(self, values: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Every process's 1-D ``values`` concatenated in rank order (lengths may differ), and
        where this process's own start."""
        if self.size == 1:
            return values, 0
        sizes = [torch.zeros(1, dtype=torch.long, device=values.device) for _ in range(self.size)]
        dist.all_gather(sizes, torch.tensor([len(values)], device=values.device))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=values.dtype, device=values.device)
        padded[: len(values)] = values
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        counts = [int(s.item()) for s in sizes]
        mine = sum(counts[: self.rank])
        return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)]), mine

    def mean(self, stats: dict[str, float]) -> dict[str, float]:
        if self.size == 1:
            return stats
        names = sorted(stats)
        values = torch.tensor([stats[n] for n in names], dtype=torch.float64, device=self._comm)
        dist.all_reduce(values)
        return {n: v / self.size for n, v in zip(names, values.tolist(), strict=True)}

    def broadcast(self, value: object) -> object:
        """Rank 0's ``value`` on every process."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @property
    def _comm(self) -> torch.device:
        """NCCL reduces GPU tensors only; gloo CPU ones."""
        if dist.get_backend() == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def join_world() -> World:
    """This process's place among the launched ones, joining the process group once."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(dist.get_rank(), size, int(os.environ.get("LOCAL_RANK", "0")))
