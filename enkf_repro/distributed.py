"""One EnKF ensemble over several processes (``torchrun ... distributed=true``).

Launch (one process per GPU, or per CPU socket; the same across nodes with ``--nnodes``)::

    torchrun --nproc_per_node=N -m enkf_repro run figure=8 distributed=true

or let a submitit job's tasks be the ranks (SLURM: ``hydra/launcher=slurm
hydra.launcher.tasks_per_node=N``; one machine: ``hydra/launcher=submitit_local``).
Under torchrun every rank runs the figure's runs in the same order, each run over all ranks.

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
``Comm.sent`` counts them. With ring algorithms each rank sends (and receives) about
4 * [(N-1) m d + 2 (N-1)/N (P + 1 + d P)] bytes when J > d, or 4 * [(N-1) m d + 2 (N-1)/N (P + 1)
+ (N-1) m P] when J <= d. At the paper's sizes (J = 5000, P = 18,050, B = 64, C = 10, N = 2) that
is 6.4 MB + 46 MB per iteration, against about 0.5 TFLOP of work per iteration.

Evaluations (every ``train.eval_every`` iterations) all-reduce the ensemble mean (P values) and,
for the spread, the column sums of squares (P). Non-finite members are found from the gathered
outputs, so every rank agrees on them; the redraw exchanges the good members' sums (P) and an
n_bad x P matrix, using normal draws that every rank makes identically from its generator.

Checkpoints. At ``checkpoint_every`` (and on SIGINT/SIGTERM, agreed by all ranks) the rows are
gathered to rank 0, which writes the usual single ``checkpoint.pt`` holding the whole ensemble:
the same file a single process writes. A rerun with any number of ranks (1 included, with or
without ``distributed=true``) resumes from it: rank 0 reads it and broadcasts it. Only rank 0
touches the run folder (lock, config.yaml, metrics.csv, checkpoint.pt, done.json), so for
several nodes only rank 0's node needs ``out_dir``; every node needs the dataset.

Not supported with ``distributed=true``: methods other than ``optimizer=enkf``, and Algorithm 1
(``optimizer.adaptive.enabled``), which resizes the ensemble; both are refused at start-up.
"""

from __future__ import annotations

import atexit
import math
import os
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from .enkf import BLOCK_ELEMENTS, kalman_factors
from .errors import ConfigError, DivergenceError, EnkfReproError, Interrupted
from .train import EnKF

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
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.all_reduce(t).item() > 0)

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

    def barrier(self):
        pass


# -- the update on this rank's rows ------------------------------------------------------------
def apply_low_rank_rows_(U_k: torch.Tensor, W: torch.Tensor, Z: torch.Tensor, counts: Sequence[int],
                         rank: int, comm: Comm, block: int | None = None) -> torch.Tensor:
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
                 bad_counts: Sequence[int], rank: int, generator: torch.Generator, comm: Comm) -> torch.Tensor:
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


def mean_rows(U_k: torch.Tensor, J: int, comm: Comm) -> torch.Tensor:
    """Mean over all J members of the ensemble whose rows U_k this rank holds (P,)."""
    return comm.all_reduce(U_k.sum(0)) / J


# -- the method --------------------------------------------------------------------------------
_COMM: Comm | None = None


def current_comm() -> Comm:
    return _COMM if _COMM is not None else LocalComm()


def distributed_method(name: str) -> Callable[..., Any]:
    """Constructor (cfg, model, forward, generator, device) of ``name``'s distributed form."""
    if name not in DISTRIBUTED_METHODS:
        raise ConfigError("optimizer", name, f"one of {', '.join(DISTRIBUTED_METHODS)} with distributed=true")
    return DistributedEnKF


class DistributedEnKF(EnKF):
    """``optimizer=enkf`` with ``distributed=true``: this rank's rows of the ensemble (module
    docstring); every rank ends each iteration with the single process's rows, up to float
    reduction order. ``step``, ``eval_params``, ``diagnostics``, ``state_dict`` and
    ``load_state_dict`` are collective: every rank calls them at the same iteration."""

    def __init__(self, cfg, model, forward, generator, device, comm: Comm | None = None):
        super().__init__(cfg, model, forward, generator, device)   # the whole ensemble, as one process draws it
        self.comm = comm if comm is not None else current_comm()
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

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        comm, rank = self.comm, self.comm.rank
        G_k = self.forward(self.U, x)                                  # my members' outputs (J_k, B, C)
        bad_u = ~torch.isfinite(self.U).all(1)
        if bool(bad_u.any()):
            G_k[bad_u] = float("nan")                                  # so every rank sees them as bad
        G = comm.all_gather_rows(G_k, self.counts)                     # (J, B, C) on every rank
        bad = ~torch.isfinite(G).flatten(1).all(1)
        nbad = int(bad.sum())
        if nbad == 0:
            misfit = 0.5 * float(((G - y) ** 2).sum((1, 2)).mean()) / x.shape[0]
            W, Z = kalman_factors(G, y, self.gamma, self.mode)         # the single process's W, Z
            apply_low_rank_rows_(self.U, W, Z, self.counts, rank, comm)
            return {"train_misfit": misfit}
        if self.policy == "fail":
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
        apply_low_rank_rows_(Ug, W, Z, good_counts, rank, comm)
        self.U[~bad_k] = Ug
        redraw_rows_(self.U, bad_k, good_counts, bad_counts, rank, self.generator, comm)
        self.nonfinite_total += nbad
        misfit = 0.5 * float(((G[good] - y) ** 2).sum((1, 2)).mean()) / x.shape[0]
        return {"train_misfit": misfit, "nonfinite_step": nbad}

    def eval_params(self) -> dict[str, torch.Tensor]:
        return {"": mean_rows(self.U, self.J, self.comm)}

    def diagnostics(self) -> dict[str, float]:
        mean = mean_rows(self.U, self.J, self.comm)
        ss = self.comm.all_reduce(((self.U - mean) ** 2).sum(0))
        spread = float((ss / (self.J - 1)).sqrt().mean())               # = U.std(0).mean() of one process
        return {"ensemble_spread": spread, "nonfinite_members": self.nonfinite_total, "ensemble_size": self.J}

    def full_ensemble(self) -> torch.Tensor | None:
        """The whole ensemble (J, P) on rank 0, None elsewhere (collective)."""
        return self.comm.gather_rows(self.U, self.counts, dst=0)

    def state_dict(self) -> dict[str, Any]:
        """Rank 0: the single-process state (whole ensemble); other ranks: U = None."""
        return {"U": self.full_ensemble(), "nonfinite_total": self.nonfinite_total}

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
        self.nonfinite_total = int(state["nonfinite_total"])


# -- process group ------------------------------------------------------------------------------
def _in_submitit_job() -> bool:
    return "SUBMITIT_EXECUTOR" in os.environ


def _export_submitit_env() -> None:
    """In a job started by submitit (``hydra/launcher=slurm`` or ``submitit_local``, with
    ``tasks_per_node`` or ``nodes`` > 1 giving the ranks) and not under torchrun: set RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from the job (submitit's helper)."""
    if "WORLD_SIZE" in os.environ or not _in_submitit_job():
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def launcher_world_size() -> int | None:
    """Number of processes of the launch (torchrun's WORLD_SIZE, or the tasks of a submitit job);
    None when the process was not started by such a launcher."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if _in_submitit_job():
        import submitit

        return int(submitit.JobEnvironment().num_tasks)
    return None


def setup(cfg) -> Comm:
    """Join the process group of the launch (once per process) and return its Comm. NCCL when
    the ensemble lives on CUDA (one GPU per local rank), gloo on CPU."""
    global _COMM
    if _COMM is not None:
        return _COMM
    from .ensemble import resolve_device

    _export_submitit_env()
    if launcher_world_size() is None:
        raise ConfigError("distributed", True, "a launch that sets RANK and WORLD_SIZE: `torchrun "
                          "--nproc_per_node=N -m enkf_repro run ... distributed=true`, a submitit job with "
                          "tasks_per_node=N (hydra/launcher=slurm), or distributed=false")
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        n = torch.cuda.device_count()
        if local >= n:
            raise ConfigError("device", "cuda", f"one GPU per process: local rank {local} but {n} GPUs visible")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_shutdown)
    _COMM = Comm(device)
    return _COMM


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def validate_distributed(cfg) -> None:
    """Settings that cannot run over several processes (called by ``config.validate``)."""
    opt = cfg.optimizer
    if opt.name not in DISTRIBUTED_METHODS:
        raise ConfigError("optimizer", opt.name, f"{' or '.join(DISTRIBUTED_METHODS)} with distributed=true "
                          f"(or distributed=false)")
    if "adaptive" in opt and opt.adaptive.enabled:
        raise ConfigError("optimizer.adaptive.enabled", True, "false with distributed=true (Algorithm 1 "
                          "resizes the ensemble, which is not supported across ranks)")
    world = launcher_world_size()
    if world is not None and opt.ensemble_size < world:
        raise ConfigError("optimizer.ensemble_size", opt.ensemble_size,
                          f"at least the number of processes ({world}) with distributed=true")


# -- the run folder: rank 0 writes, the others follow -------------------------------------------
class _CollectiveStop:
    """SIGINT/SIGTERM on any rank stops every rank at the same iteration, after a checkpoint."""

    comm: Comm
    stop_requested: bool

    def stop_if_requested(self, state_fn) -> None:
        if self.comm.any(self.stop_requested):
            self.stop_requested = True
            self.checkpoint(state_fn())
            raise Interrupted(self._stop_message())


def _leader_class():
    from .rundir import RunDir

    class LeaderRunDir(_CollectiveStop, RunDir):
        """Rank 0: the ordinary run folder (lock, CSV, checkpoint of the whole ensemble)."""

        def __init__(self, comm: Comm, *args, **kwargs):
            self.comm = comm
            super().__init__(*args, **kwargs)

        def _stop_message(self) -> str:
            return f"interrupted; checkpoint written to {self.ckpt_path}; rerun the same command to resume"

    return LeaderRunDir


class FollowerRunDir(_CollectiveStop):
    """Rank > 0: writes nothing; takes part in the collective checkpoint and stop."""

    def __init__(self, comm: Comm, path: Path, resume_state: dict | None, checkpoint_every: int):
        self.comm = comm
        self.path = Path(path)
        self.resume_state = resume_state
        self.checkpoint_every = int(checkpoint_every)
        self.stop_requested = False
        self._t0 = time.perf_counter()

    finished = False

    def signals(self):
        from .rundir import RunDir

        return RunDir.signals(self)

    def _stop_message(self) -> str:
        return f"interrupted (rank {self.comm.rank}); rank 0 wrote the checkpoint"

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def log(self, rows) -> None:
        pass

    def checkpoint(self, state) -> None:
        pass

    def due(self, step: int) -> bool:
        return step % self.checkpoint_every == 0

    def finish(self, summary) -> None:
        pass

    def close(self) -> None:
        pass


def _without_ensemble(state: dict | None) -> dict | None:
    """A resume state for the other ranks: everything but the ensemble (broadcast separately)."""
    if state is None:
        return None
    out = dict(state)
    out["method"] = {**state["method"], "U": None}
    return out


def _raise_shared(err: tuple[str, str, int] | None) -> None:
    if err is None:
        return
    from .rundir import RunBusy

    name, msg, code = err
    exc = RunBusy(msg) if name == "RunBusy" else EnkfReproError(msg)
    exc.exit_code = code
    raise exc


def run_one(spec, restart: bool = False) -> dict[str, Any]:
    """``runner.run_one`` for ``distributed=true``: every rank trains its rows of the ensemble;
    rank 0 decides skip/resume, owns the run folder and broadcasts the resume state."""
    from .results import config_columns
    from .train import train_ensemble

    comm = setup(spec.cfg)
    leader = comm.rank == 0
    status = None
    if leader and (spec.dir / "done.json").exists() and not restart:
        status = {"status": "skipped", "dir": str(spec.dir)}
    status = comm.broadcast_object(status)
    if status is not None:
        return status
    rd, err = None, None
    if leader:
        try:
            rd = _leader_class()(comm, spec.dir, spec.cfg, config_columns(spec.cfg, spec.figure, spec.label),
                                 restart=restart, checkpoint_every=int(spec.cfg.checkpoint_every))
        except EnkfReproError as e:
            err = (type(e).__name__, str(e), e.exit_code)
    _raise_shared(comm.broadcast_object(err))
    resume = comm.broadcast_object(_without_ensemble(rd.resume_state) if leader else None)
    if not leader:
        rd = FollowerRunDir(comm, spec.dir, resume, int(spec.cfg.checkpoint_every))
        cfg = spec.cfg.copy()
        cfg.progress = False
        spec = replace(spec, cfg=cfg)
    try:
        t0 = time.perf_counter()
        try:
            summary = train_ensemble(spec, rd)
        except DivergenceError as e:
            rd.finish({"status": "diverged", "message": str(e)})
            return {"status": "diverged", "message": str(e), "dir": str(spec.dir)}
        summary["ranks"] = comm.world
        rd.finish({"status": "finished", **summary, "overrides": list(spec.overrides)})
        return {"status": "finished", "seconds": time.perf_counter() - t0, "dir": str(spec.dir)}
    finally:
        rd.close()
