"""One EnKF ensemble over several processes (``distributed=true``): the numerics.

Partition. The J members are split into N contiguous row blocks in rank order (``partition``:
sizes differ by at most one, the first J mod N ranks hold one more). Rank k holds its block U_k
(J_k x P) and evaluates it on its own device; every rank reads the same mini-batches.

Initialisation. Every rank draws the whole ensemble exactly as one process does (the same
generator, seed and order, ``ModelSpec.init``), keeps its rows and frees the rest: the ensemble is
the single-process one by construction, at the cost of one transient J x P buffer per rank at
start-up. Every rank's generator therefore stays in the same state as the single process's, which
is what lets non-finite members be redrawn identically (below).

What is exchanged per EnKF iteration (d = B * C, m = ceil(J / N), 4-byte floats):

1. ``all_gather`` of the outputs G_k (J_k x B x C, padded to m rows): every rank then holds the
   whole J x d output matrix and runs the unchanged pure ``enkf.kalman_factors`` on it, so W and Z
   (J x d) are the single process's, bit for bit. (Its O(J d^2) cost is replicated on every rank:
   a few per cent of the O(J d P) update at the paper's sizes.)
2. ``all_reduce`` of the column sums of U_k (P values): the ensemble mean used to centre U.
3. The low-rank correction U <- U + W Z^T (U - mean U), restricted to this rank's rows, needs one
   contribution from every rank; the smaller of two forms is exchanged, per column block:
   - J > d: ``all_reduce`` of the d x P matrix Z^T (U - mean U) = sum_k Z_k^T (U_k - mean U)
     (J times the EnKF cross-covariance C_uG for batch mode), then U_k += W_k (Z^T (U - mean U));
   - J <= d: ``reduce_scatter`` of the J x P increment sum_k (W Z_k^T)(U_k - mean U): each rank
     receives only its J_k rows (the single-process code forms the J x J matrix W Z^T there too).
4. ``all_reduce`` of one stop flag (SIGINT / SIGTERM on any rank stops all at the same iteration).

Per rank and iteration that is  ceil(J/N)*B*C + P + min(J, B*C)*P + 1  values handed to the
collectives (``min(...)`` term: d*P with all_reduce, or N*m*P with reduce_scatter when J <= d);
``sent`` of the communicator counts them. With ring algorithms each rank sends (and receives) about
4 * [(N-1) m d + 2 (N-1)/N (P + 1 + d P)] bytes when J > d, or 4 * [(N-1) m d + 2 (N-1)/N (P + 1)
+ (N-1) m P] when J <= d. At the paper's sizes (J = 5000, P = 18,050, B = 64, C = 10, N = 2) that
is 6.4 MB + 46 MB per iteration, against about 0.5 TFLOP of work per iteration.

Evaluations (every ``train.eval_every`` iterations) all-reduce the ensemble mean (P values) and,
for the spread, the column sums of squares (P). Non-finite members are found from the gathered
outputs, so every rank agrees on them; the redraw exchanges the good members' sums (P) and an
n_bad x P matrix, using normal draws that every rank makes identically from its generator.

The process group, the run folder of rank 0 and the checkpoints are ``runs/distributed.py``'s.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol, Sequence

import torch

from ..errors import ConfigError, DivergenceError
from .base import MethodContext
from .enkf import EnKF, EnKFConfig, kalman_factors
from .failure import nonfinite_rows
from .linalg import BLOCK_ELEMENTS

# Methods that can run over several processes.
DISTRIBUTED_METHODS = ("enkf",)


# -- the partition of the members --------------------------------------------------------------
def partition(J: int, world: int) -> list[int]:
    """Members per rank: J split into ``world`` contiguous row blocks in rank order, sizes
    differing by at most one (the first J mod world ranks hold one more)."""
    if world < 1 or J < world:
        raise ValueError(f"cannot split {J} members over {world} ranks (need J >= ranks >= 1)")
    q, r = divmod(J, world)
    return [q + (1 if k < r else 0) for k in range(world)]


def row_range(counts: Sequence[int], rank: int) -> tuple[int, int]:
    """[lo, hi) of rank ``rank``'s rows in the whole ensemble."""
    lo = sum(counts[:rank])
    return lo, lo + counts[rank]


# -- collectives ---------------------------------------------------------------------------------
class Collectives(Protocol):
    """What the numerics below need from the processes' communicator (``runs/comm.py``: ``Comm``
    over torch.distributed, ``LocalComm`` for one process). ``sent`` counts, per operation, the
    elements this rank handed in (the numbers in the module docstring)."""

    rank: int
    world: int
    device: torch.device
    sent: Counter

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor: ...
    def all_gather_rows(self, x: torch.Tensor, counts: Sequence[int]) -> torch.Tensor: ...
    def reduce_scatter_rows(self, x: torch.Tensor, counts: Sequence[int]) -> torch.Tensor: ...
    def gather_rows(self, x: torch.Tensor, counts: Sequence[int], dst: int = 0) -> torch.Tensor | None: ...
    def broadcast_(self, t: torch.Tensor, src: int = 0) -> torch.Tensor: ...
    def broadcast_object(self, obj: Any, src: int = 0) -> Any: ...


# -- the update on this rank's rows ------------------------------------------------------------
def apply_low_rank_rows_(U_k: torch.Tensor, W: torch.Tensor, Z: torch.Tensor, counts: Sequence[int],
                         rank: int, comm: Collectives, block: int | None = None) -> torch.Tensor:
    """In place on this rank's rows: U <- U + W Z^T (U - mean(U)), as ``enkf.apply_low_rank_``.

    Args:
        U_k: this rank's rows (counts[rank], P) of the ensemble U (J, P), J = sum(counts).
        W, Z: (J, d) factors of the whole ensemble, the same on every rank (``kalman_factors``).
        counts: rows held by each rank, in rank order (contiguous blocks).
    Exchanged: the column sums of U (P, all_reduce); then per block of b columns either the
    d x b matrix Z^T (U - mean U) (all_reduce, when J > d) or the J x b increment
    (W Z_k^T)(U_k - mean U) (reduce_scatter: each rank receives its rows, when J <= d).
    With one rank (``LocalComm``) this is ``apply_low_rank_`` up to float rounding of the mean.
    """
    J = sum(counts)
    lo, hi = row_range(counts, rank)
    P = U_k.shape[1]
    d = W.shape[1]
    if block is None:
        block = max(256, BLOCK_ELEMENTS // max(J, d, 1))
    W = W.to(U_k.dtype)
    Z = Z.to(U_k.dtype)
    mean = comm.all_reduce(U_k.sum(0)) / J                     # mean of the whole ensemble, (P,)
    small = J <= d
    if small:
        Tk = W @ Z[lo:hi].T                                     # columns of W Z^T for my rows, (J, J_k)
    else:
        Wk, Zk = W[lo:hi], Z[lo:hi]
    for s in range(0, P, block):
        Ub = U_k[:, s: s + block]
        Uc = Ub - mean[s: s + block]
        if small:
            Ub.add_(comm.reduce_scatter_rows(Tk @ Uc, counts))  # rows of W Z^T (U - mean U)
        else:
            Ub.addmm_(Wk, comm.all_reduce(Zk.T @ Uc))           # W_k [Z^T (U - mean U)]
    return U_k


def redraw_rows_(U_k: torch.Tensor, bad_k: torch.Tensor, good_counts: Sequence[int],
                 bad_counts: Sequence[int], rank: int, generator: torch.Generator, comm: Collectives) -> torch.Tensor:
    """In place: this rank's rows ``bad_k`` redrawn as ``enkf.redraw_members`` does on the whole
    ensemble, u = mean + sum_k z_k (u_k - mean) / sqrt(J_good - 1) over the good members.

    ``good_counts`` / ``bad_counts``: good and bad members held by each rank. The normal draws
    z (n_bad x J_good) are made in full on every rank from generators in the same state, so they
    are the single process's; each rank applies its columns. Exchanged: the good members' column
    sums (P) and the n_bad x P matrix of partial sums (all_reduce).
    """
    Jg, nb = sum(good_counts), sum(bad_counts)
    if Jg < 2:
        raise DivergenceError(f"only {Jg} of {Jg + nb} ensemble members are finite; cannot redraw")
    Ug = U_k[~bad_k]
    mean = comm.all_reduce(Ug.sum(0)) / Jg
    z = torch.randn(nb, Jg, generator=generator, device=U_k.device, dtype=U_k.dtype)
    g0, _ = row_range(good_counts, rank)
    b0, b1 = row_range(bad_counts, rank)
    S = comm.all_reduce(z[:, g0: g0 + Ug.shape[0]] @ (Ug - mean))
    U_k[bad_k] = mean + S[b0:b1] / (Jg - 1) ** 0.5
    return U_k


def mean_rows(U_k: torch.Tensor, J: int, comm: Collectives) -> torch.Tensor:
    """Mean over all J members of the ensemble whose rows U_k this rank holds (P,)."""
    return comm.all_reduce(U_k.sum(0)) / J


# -- the method --------------------------------------------------------------------------------
class DistributedEnKF(EnKF):
    """``optimizer=enkf`` with ``distributed=true``: this rank's rows of the ensemble (module
    docstring); every rank ends each iteration with the single process's rows, up to float
    reduction order. ``step``, ``eval_params``, ``diagnostics``, ``state_dict`` and
    ``load_state_dict`` are collective: every rank calls them at the same iteration."""

    def __init__(self, opt: EnKFConfig, ctx: MethodContext, comm: Collectives):
        super().__init__(opt, ctx)   # the whole ensemble, as one process draws it
        self.comm = comm
        self._keep_rows(self.U)

    def _keep_rows(self, U_full: torch.Tensor) -> None:
        self.J = U_full.shape[0]
        if self.J < self.comm.world:
            raise ConfigError("optimizer.ensemble_size", self.J, f"at least the number of ranks {self.comm.world}")
        self.counts = partition(self.J, self.comm.world)
        lo, hi = row_range(self.counts, self.comm.rank)
        self.U = U_full[lo:hi].clone()

    @property
    def ensemble_size(self) -> int:
        return self.J

    def set_ensemble(self, U: torch.Tensor) -> None:
        """Start from the whole ensemble U (J, P), the same on every rank: each keeps its rows."""
        super().set_ensemble(U)
        self._keep_rows(self.U)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        comm, rank = self.comm, self.comm.rank
        G_k = self.forward(self.U, x)                                  # my members' outputs (J_k, B, C)
        bad_u = nonfinite_rows(self.U)
        if bool(bad_u.any()):
            G_k[bad_u] = float("nan")                                  # so every rank sees them as bad
        G = comm.all_gather_rows(G_k, self.counts)                     # (J, B, C) on every rank
        bad = ~torch.isfinite(G).flatten(1).all(1)
        nbad = int(bad.sum())
        if nbad == 0:
            misfit = 0.5 * float(((G - y) ** 2).sum((1, 2)).mean()) / x.shape[0]
            W, Z = kalman_factors(G, y, self.gamma, self.mode)         # the single process's W, Z
            with self.update_scope():
                apply_low_rank_rows_(self.U, W, Z, self.counts, rank, comm)
            return {"train_misfit": misfit}
        if self.failures.policy == "fail":
            raise DivergenceError(f"{nbad} of {self.J} members have non-finite outputs "
                                  f"(optimizer.nonfinite=fail)")
        good = ~bad
        if int(good.sum()) < 2:
            raise DivergenceError(f"{nbad} of {self.J} members have non-finite outputs; the ensemble diverged")
        blocks = [row_range(self.counts, k) for k in range(comm.world)]
        good_counts = [int(good[lo:hi].sum()) for lo, hi in blocks]
        bad_counts = [c - g for c, g in zip(self.counts, good_counts)]
        lo, hi = blocks[rank]
        bad_k = bad[lo:hi]
        W, Z = kalman_factors(G[good], y, self.gamma, self.mode)
        Ug = self.U[~bad_k]
        with self.update_scope():
            apply_low_rank_rows_(Ug, W, Z, good_counts, rank, comm)
        self.U[~bad_k] = Ug
        if self.failures.policy == "redraw":
            redraw_rows_(self.U, bad_k, good_counts, bad_counts, rank, self.generator, comm)
        self.failures.total += nbad
        misfit = 0.5 * float(((G[good] - y) ** 2).sum((1, 2)).mean()) / x.shape[0]
        return {"train_misfit": misfit, "nonfinite_step": nbad}

    def eval_params(self) -> dict[str, torch.Tensor]:
        return {"": mean_rows(self.U, self.J, self.comm)}

    def diagnostics(self) -> dict[str, float]:
        mean = mean_rows(self.U, self.J, self.comm)
        ss = self.comm.all_reduce(((self.U - mean) ** 2).sum(0))
        spread = float((ss / (self.J - 1)).sqrt().mean())               # = U.std(0).mean() of one process
        return {"ensemble_spread": spread, "nonfinite_members": self.failures.total, "ensemble_size": self.J}

    def full_ensemble(self) -> torch.Tensor | None:
        """The whole ensemble (J, P) on rank 0, None elsewhere (collective)."""
        return self.comm.gather_rows(self.U, self.counts, dst=0)

    def state_dict(self) -> dict[str, Any]:
        """Rank 0: the single-process state (whole ensemble); other ranks: U = None."""
        return {"U": self.full_ensemble(), "nonfinite_total": self.failures.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rank 0 holds the whole ensemble of a checkpoint (written with any number of ranks) and
        broadcasts it; each rank keeps its rows."""
        comm = self.comm
        U = state["U"]
        shape = comm.broadcast_object(tuple(U.shape) if comm.rank == 0 else None)
        full = (U.to(self.U.device, self.U.dtype) if comm.rank == 0
                else torch.empty(shape, device=self.U.device, dtype=self.U.dtype))
        comm.broadcast_(full, 0)
        self._keep_rows(full)
        self.failures.total = int(state["nonfinite_total"])


