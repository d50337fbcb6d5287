"""Data parallelism for the DiffusionNFT loop on torch.distributed (one process per device).

Every rank holds the same adapters and optimizer (same seed, same updates). A step's prompt groups
are dealt round-robin to the ranks; each rank samples and scores its own groups; the rewards are
gathered so that advantages use the global batch std exactly as one process would; each rank
back-propagates its groups' share of the global loss and the LoRA gradients are summed across ranks
(one all-reduce after the accumulation, which is what DDP's `no_sync` + final sync does; DDP itself
does not fit a loop whose ranks run different numbers of backward passes per step and switch peft
adapters between them). Rank 0 alone writes checkpoints and reports steps; the others wait for it.
With one process every function here is the identity, so the single-GPU path has no collective.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training ranks, and the collectives it needs."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"  # where collectives run: CPU tensors for gloo, this rank's GPU for NCCL

    @property
    def main(self) -> bool:
        """The rank that logs, saves and reports."""
        return self.rank == 0

    def mine(self, items: Sequence[Any]) -> list[Any]:
        """This rank's share of a step's prompt groups (round-robin, so shares differ by at most one)."""
        return list(items[self.rank :: self.world])

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (any picklable object), in rank order."""
        if self.world == 1:
            return [value]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, value)
        return gathered

    def sum(self, value: float) -> float:
        """Sums a figure over all ranks, so logged step figures cover every rank's share."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor)

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the parameters' gradients over the ranks. A parameter no rank gave a gradient keeps
        None (as in one process: AdamW then leaves it alone); one that some rank did gets zeros
        elsewhere first."""
        if self.world == 1:
            return
        present = torch.tensor([float(p.grad is not None) for p in params], device=self.device)
        dist.all_reduce(present, op=dist.ReduceOp.MAX)
        with_grad = [p for p, flag in zip(params, present.tolist(), strict=True) if flag]
        for param in with_grad:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        flat = torch.cat([p.grad.detach().reshape(-1).to(self.device, torch.float64) for p in with_grad])
        dist.all_reduce(flat)
        offset = 0
        for param in with_grad:
            size = param.numel()
            param.grad.copy_(flat[offset : offset + size].view_as(param.grad).to(param.grad.dtype))
            offset += size

    def barrier(self) -> None:
        """Waits for every rank, e.g. before the main one reads what all wrote."""
        if self.world > 1:
            dist.barrier()


def current_ranks() -> Ranks:
    """The ranks of the initialised process group (torchrun sets it up through `start`), else one."""
    if dist.is_available() and dist.is_initialized():
        device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
        return Ranks(dist.get_rank(), dist.get_world_size(), device)
    return Ranks()


def start(device: str) -> Ranks:
    """Join the process group torchrun describes (WORLD_SIZE > 1): gloo on the CPU, NCCL on CUDA
    (each rank on its LOCAL_RANK's GPU). One process: nothing to join."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return current_ranks()


def stop() -> None:
    """Tears down the process group, when one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
