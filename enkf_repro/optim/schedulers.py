"""Step-size schedulers for ensemble Kalman inversion (EKI, ETKI), after the learning-rate
schedulers of EnsembleKalmanProcesses.jl (src/LearningRateSchedulers.jl).

A scheduler gives the step of the current iteration from quantities the update has anyway:

- ``misfits``: the members' data misfits Phi_j = 1/2 |Gamma^{-1/2} (y - G(u_j))|^2, shape (J,),
  see :func:`data_misfits` (for the ``mse`` loss of :mod:`enkf_repro.eki`, Gamma = I, this is
  exactly the per-member loss Psi that ``eki_step_`` returns);
- ``output_dim``: M, the data dimension d (B * C on a mini-batch);
- ``d_norm``: ||D||_F of the Kovachki-Stuart matrix D (J x J), as ``eki_step_`` reports it.

All schedulers have the same call, ``step(misfits=..., output_dim=..., d_norm=...)``, keyword
only; each uses what it lists in ``requires`` and ignores the rest, so a caller may pass
everything it has. The step is a dimensionless algorithm time: in ETKI / EnsembleKalmanProcesses
it is Delta t with Gamma -> Gamma / Delta t; in the Kovachki-Stuart scheme it is h in
u <- u - h D u. Every scheduler counts ``iteration`` (steps given) and ``time`` (their sum),
and has ``finished`` (True when it gives no further step: only the data-misfit controller with
``on_terminate="stop"`` after reaching its terminal time). ``state_dict()`` returns plain Python
values (JSON-serialisable) for checkpoints; ``load_state_dict`` restores the progress onto a
scheduler built with the run's configuration.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

import torch

from ._noise import noise_variance


def data_misfits(G: torch.Tensor, y: torch.Tensor, gamma: float | torch.Tensor) -> torch.Tensor:
    """Phi_j = 1/2 |Gamma^{-1/2} (y - G_j)|^2 for every member, float64, shape (J,).

    Args:
        G: outputs (J, d) or (J, B, C).
        y: data (d,) or (B, C), same number of entries as one member's output.
        gamma: Gamma = gamma * I (a number) or diag(gamma) (d variances, any shape).
    Cost O(J d); this is the input of :class:`DataMisfitController`.
    """
    J = G.shape[0]
    G64 = G.detach().reshape(J, -1).to(torch.float64)
    d = G64.shape[1]
    y64 = y.detach().reshape(-1).to(device=G64.device, dtype=torch.float64)
    if y64.numel() != d:
        raise ValueError(f"y has {y64.numel()} entries; the outputs have d = {d} per member")
    R = G64 - y64
    return 0.5 * (R * R / noise_variance(gamma, d, torch.float64, G64.device)).sum(1)


class StepScheduler:
    """Base class: iteration and time bookkeeping, state_dict / load_state_dict."""

    name = ""
    requires: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.iteration = 0      # steps given so far
        self.time = 0.0         # sum of the steps given so far (algorithm time t_n)

    @property
    def finished(self) -> bool:
        """True when the scheduler gives no further step (the run should stop)."""
        return False

    def step(self, *, misfits=None, output_dim: int | None = None, d_norm: float | None = None) -> float:
        """The step for the current iteration; advances ``iteration`` and ``time``."""
        h = self._step(misfits=misfits, output_dim=output_dim, d_norm=d_norm)
        self.iteration += 1
        self.time += h
        return h

    def _step(self, *, misfits, output_dim, d_norm) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Progress as plain Python values: {"name", "iteration", "time", ...}."""
        return {"name": self.name, "iteration": int(self.iteration), "time": float(self.time)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the progress saved by :meth:`state_dict` (configuration stays this object's)."""
        if state.get("name") != self.name:
            raise ValueError(f"state of scheduler {state.get('name')!r} cannot be loaded into {self.name!r}")
        self.iteration = int(state["iteration"])
        self.time = float(state["time"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(iteration={self.iteration}, time={self.time:g})"


def _need(value, what: str, who: str):
    if value is None:
        raise ValueError(f"{who}.step needs {what}")
    return value


class FixedStep(StepScheduler):
    """The constant step h (EnsembleKalmanProcesses.jl, ``DefaultScheduler``)."""

    name = "fixed"
    requires = ()

    def __init__(self, h: float = 1.0):
        super().__init__()
        self.h = float(h)
        if not (math.isfinite(self.h) and self.h > 0):
            raise ValueError(f"FixedStep: h={h!r} must be finite and > 0")

    def _step(self, *, misfits, output_dim, d_norm) -> float:
        return self.h


class KovachkiStuartStep(StepScheduler):
    """h_n = h0 / (||D(u_n)||_F + eps): the adaptive step of Kovachki & Stuart (2019), "Ensemble
    Kalman inversion: a derivative-free technique for machine learning tasks", exactly as
    :func:`enkf_repro.optim.eki.eki_step_` computes it (defaults h0 = 2, eps = 0.5 as there).
    EnsembleKalmanProcesses.jl's ``EKSStableScheduler`` is the same rule (numerator /
    (norm(D) + nugget), D with Gamma^{-1}). Needs ``d_norm`` = ||D||_F (the Frobenius norm of the
    J x J matrix D_jk = (1/J) <G_k - mean G, grad_j>, :func:`enkf_repro.optim.eki.eki_frobenius`)."""

    name = "kovachki_stuart"
    requires = ("d_norm",)

    def __init__(self, h0: float = 2.0, eps: float = 0.5):
        super().__init__()
        self.h0, self.eps = float(h0), float(eps)
        if not (math.isfinite(self.h0) and self.h0 > 0 and math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"KovachkiStuartStep: h0={h0!r} and eps={eps!r} must be finite and > 0")

    def _step(self, *, misfits, output_dim, d_norm) -> float:
        d_norm = float(_need(d_norm, "d_norm (||D||_F)", type(self).__name__))
        if not (math.isfinite(d_norm) and d_norm >= 0):
            raise ValueError(f"KovachkiStuartStep: ||D||_F = {d_norm!r} must be finite and >= 0")
        return self.h0 / (d_norm + self.eps)


ON_TERMINATE = ("stop", "continue", "continue_fixed")


class DataMisfitController(StepScheduler):
    """The data-misfit controller of Iglesias & Yang (2021), "Adaptive regularisation for
    ensemble Kalman inversion", Inverse Problems (doi:10.1088/1361-6420/abd29b), as EnsembleKalmanProcesses.jl
    implements it (src/LearningRateSchedulers.jl, ``calculate_timestep!`` for
    ``DataMisfitController``):

        Phi_j = 1/2 |Gamma^{-1/2} (y - G(u_j))|^2,   j = 1..J          (data misfits, (J,))
        q_n   = max( M / (2 mean(Phi)),  sqrt( M / (2 var(Phi)) ) )
        dt_n  = min( q_n, T - t_n ),     t_n = dt_1 + ... + dt_{n-1}

    with M the data dimension and var the unbiased sample variance (1/(J-1), Julia's ``var``,
    which EnsembleKalmanProcesses uses). The cap makes the accumulated time reach T exactly (the
    last step is T - t_n and ``time`` is then set to T, so ``time == terminate_at`` holds exactly).
    For a linear forward map and a square-root update (ETKI) the ensemble at T = 1 has the
    posterior mean and covariance of the initial ensemble's Gaussian (tempering: the steps
    Gamma / dt_n compose to Gamma), whatever the individual steps are. Where the
    EnsembleKalmanProcesses docstring writes J in the first term, its code (and the paper's
    derivation, E[Phi] = M/2 at the truth) uses M: we follow the code.

    Members with a non-finite misfit are left out (EnsembleKalmanProcesses passes only the
    successful members); at least two finite misfits are needed. When all misfits are equal
    (or zero) q_n is infinite; before T the cap keeps the step finite.

    On reaching T (``on_terminate``, as in EnsembleKalmanProcesses):

    - ``"stop"`` (default): ``finished`` becomes True and :meth:`step` raises RuntimeError;
      the caller checks ``finished`` before the next forward pass (EnsembleKalmanProcesses
      notices one call later, returning ``true`` from ``update_ensemble!`` without updating).
    - ``"continue_fixed"``: every later step repeats the last one given, i.e. the capped final
      step T - t_n (which may be small).
    - ``"continue"``: later steps are q_n without the cap (raises ValueError if q_n is infinite).

    ``terminate_at`` may be ``math.inf`` (never terminates). EnsembleKalmanProcesses replaces
    terminate_at <= 0 by 1 silently; here it is a ValueError.
    """

    name = "data_misfit"
    requires = ("misfits", "output_dim")

    def __init__(self, terminate_at: float = 1.0, on_terminate: str = "stop"):
        super().__init__()
        self.terminate_at = float(terminate_at)
        if not self.terminate_at > 0:
            raise ValueError(f"DataMisfitController: terminate_at={terminate_at!r} must be > 0 (may be inf)")
        if on_terminate not in ON_TERMINATE:
            raise ValueError(f"DataMisfitController: on_terminate={on_terminate!r}; expected one of "
                             + ", ".join(repr(o) for o in ON_TERMINATE))
        self.on_terminate = on_terminate
        self.reached = False            # t_n has reached terminate_at
        self.last_step: float | None = None

    @property
    def finished(self) -> bool:
        return self.reached and self.on_terminate == "stop"

    def raw_step(self, misfits, output_dim: int) -> float:
        """q_n = max(M / (2 mean Phi), sqrt(M / (2 var Phi))) before the cap; no state change."""
        phi = torch.as_tensor(misfits).detach().to(torch.float64).reshape(-1)
        phi = phi[torch.isfinite(phi)]
        if phi.numel() < 2:
            raise ValueError(f"DataMisfitController: needs at least 2 finite member misfits, got {phi.numel()}")
        M = int(output_dim)
        if M < 1:
            raise ValueError(f"DataMisfitController: output_dim={output_dim!r} must be >= 1")
        mean, var = float(phi.mean()), float(phi.var(correction=1))
        a = M / (2.0 * mean) if mean > 0 else math.inf
        b = math.sqrt(M / (2.0 * var)) if var > 0 else math.inf
        return max(a, b)

    def step(self, *, misfits=None, output_dim: int | None = None, d_norm: float | None = None) -> float:
        if self.reached:
            if self.on_terminate == "stop":
                raise RuntimeError(f"DataMisfitController: terminal time {self.terminate_at:g} reached after "
                                   f"{self.iteration} steps; check `finished` before stepping")
            if self.on_terminate == "continue_fixed":
                return self._advance(self.last_step)
        who = type(self).__name__
        q = self.raw_step(_need(misfits, "misfits (J,)", who), _need(output_dim, "output_dim (M)", who))
        if self.reached:                                   # "continue": no cap after T
            if not math.isfinite(q):
                raise ValueError("DataMisfitController: infinite step after the terminal time "
                                 "(member misfits all equal or zero)")
            return self._advance(q)
        remaining = self.terminate_at - self.time
        if q >= remaining:
            self.reached = True
            h = remaining
            self.iteration += 1
            self.time = self.terminate_at                  # == T exactly
            self.last_step = h
            return h
        return self._advance(q)

    def restart_clock(self) -> None:
        """Start the algorithm time over at 0 (a new inverse problem: the next mini-batch under
        ``misfit_clock=batch``); the step count goes on."""
        self.time = 0.0
        self.reached = False
        self.last_step = None

    def _advance(self, h: float) -> float:
        self.iteration += 1
        self.time += h
        self.last_step = h
        return h

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "reached": bool(self.reached),
                "last_step": None if self.last_step is None else float(self.last_step)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.reached = bool(state["reached"])
        self.last_step = None if state["last_step"] is None else float(state["last_step"])


SCHEDULERS: dict[str, type[StepScheduler]] = {
    FixedStep.name: FixedStep,
    KovachkiStuartStep.name: KovachkiStuartStep,
    DataMisfitController.name: DataMisfitController,
}


def make_scheduler(name: str, **kwargs) -> StepScheduler:
    """A scheduler by name: ``"fixed"`` (h), ``"kovachki_stuart"`` (h0, eps) or ``"data_misfit"``
    (terminate_at, on_terminate); keyword arguments go to its constructor."""
    try:
        cls = SCHEDULERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown step scheduler {name!r}; expected one of "
                         + ", ".join(repr(n) for n in SCHEDULERS)) from None
    return cls(**kwargs)


# -- the config keys of the methods that take a scheduler (EKI, ETKI) ----------------------------
class SchedulerName(str, Enum):
    kovachki_stuart = "kovachki_stuart"  # h0 / (||D||_F + eps)
    fixed = "fixed"                      # the constant dt
    data_misfit = "data_misfit"          # Iglesias & Yang's data-misfit controller to terminate_at


# stop: the run ends (EnsembleKalmanProcesses' default); continue: uncapped controller steps after
# T; continue_fixed: the last (capped) step, repeated. (Functional form: "continue" is a keyword.)
OnTerminate = Enum("OnTerminate", {o: o for o in ON_TERMINATE}, type=str)


class MisfitClock(str, Enum):
    run = "run"      # one algorithm time over the whole run (EnsembleKalmanProcesses)
    batch = "batch"  # the time starts over at every mini-batch: each step is min(q_n, T), never finishes


def scheduler_from_config(opt) -> StepScheduler:
    """The step scheduler of a typed method config with the fields ``scheduler`` (a
    :class:`SchedulerName`), ``h0``, ``eps``, ``dt``, ``terminate_at`` and ``on_terminate`` (EKI, ETKI)."""
    if opt.scheduler == SchedulerName.kovachki_stuart:
        return KovachkiStuartStep(opt.h0, opt.eps)
    if opt.scheduler == SchedulerName.fixed:
        return FixedStep(opt.dt)
    return DataMisfitController(opt.terminate_at, opt.on_terminate.value)


class Scheduled:
    """What a method driven by a step scheduler (``self.scheduler``; ``self.batch_clock`` when the
    data-misfit controller's clock restarts every batch) tells the training loop: whether it is
    finished, and why."""

    @property
    def finished(self) -> bool:
        """The data-misfit controller reached T with on_terminate=stop (never with the per-batch clock)."""
        return self.scheduler.finished and not self.batch_clock

    @property
    def finish_reason(self) -> str:
        if not self.finished:
            return ""
        return (f"the data-misfit controller reached its terminal time T = {self.scheduler.terminate_at:g} "
                f"after {self.scheduler.iteration} steps (optimizer.on_terminate=stop)")
