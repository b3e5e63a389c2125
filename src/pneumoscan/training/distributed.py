"""Data-parallel training under PyTorch's own launcher (torchrun), and the same code on one process.

`torchrun --standalone --nproc_per_node N -m pneumoscan train ...` starts N copies that find each
other through the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...); on a
cluster the same command with `--nnodes` and a c10d rendezvous spans machines. Each process holds the
whole model (DistributedDataParallel averages gradients: gloo on a CPU, nccl on GPUs), trains on its
share of every global batch, and scores its share of the validation split; the shares are gathered so
every rank takes the same early-stopping decision. Only rank 0 prints, writes checkpoints and
packages the bundle. Without torchrun's variables this is a one-process no-op.

`batch_size` stays the global batch: rank r takes positions r, r+N, r+2N... of each batch, so a run
on N processes sees the same images per optimizer step as a run on one.
"""

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from pneumoscan.errors import PneumoscanError
from pneumoscan.launch import launched_rank, launched_world_size  # noqa: F401  (re-exported: where they lived)


@dataclass
class Distributed:
    """This process's place in a data-parallel run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this object started the process group, so it ends it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: torch.device, timeout: timedelta | None = None) -> "Distributed":
        """Join the process group torchrun describes (gloo on CPU, nccl on CUDA), or stay single-process.
        `timeout`: how long a collective waits for the slowest rank (torch's default when None; scoring an
        archive in shards gives it hours, since ranks may finish their shares far apart)."""
        world_size = launched_world_size()
        if world_size <= 1:
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise PneumoscanError(f"torchrun started more processes per node than this machine has GPUs "
                                      f"({torch.cuda.device_count()}): use --nproc_per_node "
                                      f"{torch.cuda.device_count()}")
            torch.cuda.set_device(local_rank)
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                    **({} if timeout is None else {"timeout": timeout}))
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, owns_group=owns)

    def device(self, device: torch.device) -> torch.device:
        """The GPU of this process's local rank, or the CPU."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.enabled else device

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's positions of a global batch (all of it on one process)."""
        return batch[self.rank :: self.world_size] if self.enabled else batch

    def sum(self, *values: float) -> list[float]:
        """Element-wise sum of numbers over ranks (float64, so counts stay exact)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (a stop request seen by one process stops them all)."""
        return bool(self.sum(float(flag))[0] > 0) if self.enabled else flag

    def gather_scores(self, local: np.ndarray, total: int) -> np.ndarray:
        """Reassemble per-rank scores of `positions rank::world_size` into the full array, on every rank."""
        if not self.enabled:
            return local
        parts: list[np.ndarray | None] = [None] * self.world_size
        dist.all_gather_object(parts, local)
        full = np.empty(total, dtype=local.dtype)
        for rank, part in enumerate(parts):
            full[rank :: self.world_size] = part
        return full

    def gather_objects(self, value: object) -> list[object]:
        if not self.enabled:
            return [value]
        parts: list[object] = [None] * self.world_size
        dist.all_gather_object(parts, value)
        return parts

    def broadcast_object(self, value: object) -> object:
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Leave the group cleanly: a barrier first, so no rank tears down gloo while another still talks
        (without it gloo's rank 0 can abort in destroy_process_group)."""
        if self.enabled and self.owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def abandon(self) -> None:
        """Leave after an error without a barrier (the other ranks may be stuck in a collective; torchrun ends
        them once this process exits non-zero)."""
        if self.enabled and self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    @property
    def _collective_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
