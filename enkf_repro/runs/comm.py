"""The processes of a run: the collectives the distributed EnKF uses (``optim/distributed_enkf.py``
describes what is exchanged), over torch.distributed (:class:`Comm`) or within one process
(:class:`LocalComm`, every collective the identity). ``runs/distributed.py`` sets up the group."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

import torch
import torch.distributed as dist

from ..optim.distributed_enkf import row_range


# -- collectives -------------------------------------------------------------------------------
class Comm:
    """The collectives the distributed EnKF uses, over the default torch.distributed group (NCCL
    for CUDA tensors, gloo for CPU ones). ``sent`` counts, per operation, the elements this rank
    handed in (its contribution, padding included) - the numbers in the module docstring."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.device = torch.device(device)
        self.sent: Counter = Counter()

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place; returns ``t``."""
        self.sent["all_reduce"] += t.numel()
        dist.all_reduce(t)
        return t

    def all_gather_rows(self, x: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
        """Concatenate every rank's rows x (counts[rank], ...) in rank order: (sum(counts), ...)."""
        m = max(counts)
        pad = x.new_zeros((m,) + tuple(x.shape[1:]))
        pad[: x.shape[0]] = x
        parts = [torch.empty_like(pad) for _ in range(self.world)]
        self.sent["all_gather"] += pad.numel()
        dist.all_gather(parts, pad)
        return torch.cat([p[:c] for p, c in zip(parts, counts)])

    def reduce_scatter_rows(self, x: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
        """x (sum(counts), n) on every rank; returns this rank's rows of the sum over ranks."""
        m = max(counts)
        chunks = []
        for k in range(self.world):
            lo, hi = row_range(counts, k)
            c = x.new_zeros((m,) + tuple(x.shape[1:]))
            c[: hi - lo] = x[lo:hi]
            chunks.append(c)
        out = torch.empty_like(chunks[0])
        self.sent["reduce_scatter"] += m * self.world * int(math.prod(x.shape[1:]))
        dist.reduce_scatter(out, chunks)
        return out[: counts[self.rank]]

    def gather_rows(self, x: torch.Tensor, counts: Sequence[int], dst: int = 0) -> torch.Tensor | None:
        """Every rank's rows, concatenated on rank ``dst`` (None elsewhere)."""
        m = max(counts)
        pad = x.new_zeros((m,) + tuple(x.shape[1:]))
        pad[: x.shape[0]] = x
        parts = [torch.empty_like(pad) for _ in range(self.world)] if self.rank == dst else None
        self.sent["gather"] += pad.numel()
        dist.gather(pad, parts, dst=dst)
        if self.rank != dst:
            return None
        return torch.cat([p[:c] for p, c in zip(parts, counts)])

    def broadcast_(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        self.sent["broadcast"] += t.numel() if self.rank == src else 0
        dist.broadcast(t, src)
        return t

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on some rank."""
        return self.max(1.0 if flag else 0.0) > 0

    def max(self, value: float) -> float:
        """The largest of the ranks' values, on every rank."""
        t = torch.tensor([float(value)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        self.sent["all_reduce"] += 1
        return float(t.item())

    def barrier(self) -> None:
        dist.barrier()


class LocalComm(Comm):
    """One process, no process group: every collective is the identity (rank 0 of 1)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.rank, self.world, self.device, self.sent = 0, 1, torch.device(device), Counter()

    def all_reduce(self, t):
        return t

    def all_gather_rows(self, x, counts):
        return x

    def reduce_scatter_rows(self, x, counts):
        return x

    def gather_rows(self, x, counts, dst=0):
        return x

    def broadcast_(self, t, src=0):
        return t

    def broadcast_object(self, obj, src=0):
        return obj

    def any(self, flag):
        return bool(flag)

    def max(self, value):
        return float(value)

    def barrier(self):
        pass
