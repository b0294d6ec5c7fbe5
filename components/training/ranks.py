"""Inside the training loop: this process's place among the training processes (components.training.recipe).

The launcher and the rank entry point (components.training.distributed) sit above components.training.recipe; the loop
needs only this, so it lives below both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (one process: rank 0 of 1, every call a no-op)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"  # where collective tensors live: cuda for NCCL, cpu for gloo

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's share of a micro-batch: every world-th item (length-sorted batches stay balanced)."""
        return items[self.rank::self.world]

    def sum(self, *values: float) -> list[float]:
        """The sums over ranks of a few numbers (float64)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def sum_grads(self, params: list[torch.Tensor]) -> None:
        """Sum every trainable gradient over ranks in one flat all-reduce (a missing grad counts as zero)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        torch.distributed.all_reduce(flat)
        at = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[at:at + n].view_as(p).to(p.dtype)
            at += n

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def current() -> Ranks:
    """The process group set up by `accelerate launch` (PartialState), or one process."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    return Ranks(dist.get_rank(), dist.get_world_size(), device)
