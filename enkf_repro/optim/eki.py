"""Ensemble Kalman Inversion for training (``optimizer=eki``): Kovachki & Stuart (2019),
"Ensemble Kalman inversion: a derivative-free technique for machine learning tasks".

Notation: ensemble U (J x P), outputs G (J x B x C) of the members on a
mini-batch, targets Y (B x C) one-hot, d = B * C, and the loss Psi(z, y) of a member is the SUM
over the batch of the per-sample loss (our reading: then ||D|| is O(1) or larger for B = 64 and
the adaptive step is really normalised, h_n ||D||_F = h0 ||D|| / (||D|| + eps) < h0; with a
batch MEAN, ||D|| << eps = 0.5 and h_n would be the constant h0 / eps). The discrete scheme
(K&S, the EKI iteration with adaptive step):

    D_jk = (1/J) < G(u_k) - mean G , grad_z Psi(G(u_j), y) >        (J x J, summed over b, c)
    u_{n+1} = u_n - h_n D(u_n) u_n,      h_n = h0 / (||D(u_n)||_F + eps)                  (1)

with grad_z Psi = G - y for ``loss=mse`` (G = logits, Gamma = I) and
grad_z Psi = -y / (G + delta) for ``loss=cross_entropy`` (G = softmax outputs, delta = 0.005,
h0 = 2, eps = 0.5 as in one public implementation). Every row of D sums to zero over k, so
D U = D (U - mean U): the update is the low-rank correction U <- U + W Z^T (U - mean U) with
W = -h A / J (A = grad_z Psi, J x d) and Z = centred G (J x d), applied by
:func:`enkf_repro.optim.linalg.apply_low_rank_` with a J x J matrix or two GEMMs, never a P x P one.

Momentum (MEKI, K&S's Nesterov variant):  v_n = u_n + lambda_n (u_n - u_{n-1}),
lambda_n = n / (n + 3) (or a constant), and u_{n+1} = v_n - h(v_n) D(v_n) v_n.

Randomised "(R)" (``randomize=true``), xi_j drawn from the prior (the ``init`` distribution of
the ensemble, biases included: ``init.bias_sigma``), two schedules (``random_schedule``):

* ``decay`` (default, our schedule): after EVERY step the members are redrawn around the mean,
  u_j = mean(u) + gamma(n) (xi_j - mean_j xi) after the n-th step, gamma(n) = gamma0 /
  sqrt(1 + n / tau) (gamma0 = 1, tau = 100), the noise centred over j so the mean is kept exactly.
* ``public`` (the schedule of a public Keras implementation of Kovachki & Stuart's EKI(R),
  moritzlauff/thesis_programming, python/functions/enkf_functions.py, ``enkf_classifier``):
  after every step each member gets independent prior noise with std h_t^(1/4) times the prior
  std (variance sqrt(h_t) times the prior variance), u_j <- u_j + h_t^(1/4) xi_j, not centred
  (as there); and at the end of every epoch (``on_epoch_end``, called by the training loop after
  the epoch's last step, before that iteration's evaluation) the members are redrawn around the
  mean with the full prior spread, u_j = mean(u) + (xi_j - mean_j xi), i.e. gamma = 1 (there the
  noise is not centred; we centre it so the evaluated mean network is kept exactly). h_t is that
  code's step scalar: its D has no 1/J, so h_t = h0 / (||J D||_F + eps) = h0 / (J ||D||_F + eps)
  in our notation (logged as ``random_noise_scale`` = h_t^(1/4)); our own step h_n in its place
  would make the noise about J^(1/4) times larger. The EKI step itself stays (1) with K&S's 1/J.
  That code's prior is Glorot-normal for weights and biases alike (a bias takes its layer's
  weight std), which is ``init.scheme=glorot`` with ``init.bias_sigma=null``.

Step schedulers (``optimizer.scheduler``, schedulers.py, after EnsembleKalmanProcesses.jl):

* ``kovachki_stuart`` (default): h_n = h0 / (||D||_F + eps) in (1), exactly as above.
* ``fixed``: h_n = ``dt``.
* ``data_misfit``: Iglesias & Yang's data-misfit controller, dt_n = min(q_n, T - t_n) with
  q_n = max(M / (2 mean Phi), sqrt(M / (2 var Phi))) from the members' data misfits
  Phi_j = |y - G_j|^2 / (2 gamma) on the current mini-batch (M = B C; G the outputs the loss
  sees: the logits for ``mse``, where Phi = Psi / gamma, the softmax outputs for
  ``cross_entropy``, a Gaussian stand-in for the cross-entropy). For a fixed batch and a linear
  model, steps in Kalman form with Gamma / dt_n compose to one update with Gamma / t_n, so at
  t = T = 1 the ensemble has the posterior of its initial Gaussian (tempering). With mini-batches
  each step sees another batch: t_n = 1 then means the batch likelihoods have been applied with
  exponents summing to one, i.e. about the information of ONE mini-batch, not of the data set
  (that would be t = the number of batches, each batch at dt = 1). Hence the choices:
  ``misfit_clock=run`` (EnsembleKalmanProcesses: one time over the run) with
  ``on_terminate=stop`` (its default: the run ends cleanly when t reaches ``terminate_at``, the
  loop evaluates once more and the run's summary says why), ``continue`` (uncapped q_n after T) or
  ``continue_fixed`` (the last, capped step repeated); or ``misfit_clock=batch``: each mini-batch
  is its own inverse problem, the time starts over at every batch, so every step is
  min(q_n, T) and the run never stops early (each batch assimilated at most once, T = 1: the
  sequential-Bayes reading of one pass).

``optimizer.update_form`` picks the form of the step: ``euler`` is (1) with h_n (any loss; explicit,
so a step much above 2 / ||C_GG|| diverges), ``kalman`` is the discrete EKI of
EnsembleKalmanProcesses (Kovachki & Stuart's iteration before the continuum limit) without
observation noise, u_j <- u_j + C_uG (C_GG + Gamma / h_n)^-1 (y - G_j) with Gamma = gamma I on
the same outputs (stable for any h; equal to the EnKF's ``update_mode=batch`` with gamma / h, and
to (1) to first order in h). ``auto`` (default) is euler with ``kovachki_stuart`` and kalman with
``fixed`` and ``data_misfit``, whose steps are algorithm times in EnsembleKalmanProcesses' sense.
The ``public`` (R) noise keeps its own h_t (above) whatever the scheduler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

import torch

from ..config.schema import Cost, MethodConfig, RunSize
from ..config.validate import check
from ..errors import DivergenceError
from .base import (
    FP32,
    EnsembleMethod,
    MethodContext,
    MethodMemory,
    check_ensemble_size,
    ensemble_buffers,
    ensemble_cost,
    register_method,
)
from .enkf import kalman_factors
from .failure import NonfinitePolicy
from .inflation import InflationConfig, check_inflation
from .linalg import apply_low_rank_
from .schedulers import MisfitClock, OnTerminate, Scheduled, SchedulerName, data_misfits, scheduler_from_config


# -- pure functions ----------------------------------------------------------------------------
def eki_loss_grad(G: torch.Tensor, Y: torch.Tensor, loss: str = "mse",
                  delta: float = 0.005) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member loss Psi (J,) and its gradient grad_z Psi (J, B, C) with respect to the outputs.

    Args:
        G: outputs (J, B, C): logits for ``mse``, softmax probabilities for ``cross_entropy``.
        Y: one-hot targets (B, C).
    Psi is the sum over the B samples: mse 0.5 |G - y|^2, cross_entropy -<y, log(G + delta)>
    (K&S's cross-entropy variant, delta keeps the gradient -y / (G + delta) finite).
    """
    Y = Y.to(G.dtype).unsqueeze(0)
    if loss == "mse":
        R = G - Y
        return 0.5 * (R * R).sum((1, 2)), R
    if loss == "cross_entropy":
        return -(Y * torch.log(G + delta)).sum((1, 2)), -Y / (G + delta)
    raise ValueError(f"loss={loss!r}: expected 'mse' or 'cross_entropy'")


def eki_matrix(G: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """D (J x J) of (1): D_jk = (1/J) <G_k - mean G, grad_j>. For tests and small J; the
    trainer never forms it when J > d."""
    J = G.shape[0]
    Z = (G - G.mean(0, keepdim=True)).reshape(J, -1)
    return grad.reshape(J, -1) @ Z.T / J


def eki_frobenius(A: torch.Tensor, Z: torch.Tensor) -> float:
    """||A Z^T||_F / J for A, Z (J x d), in the smaller of the two dimensions."""
    J, d = A.shape
    if J <= d:
        return float(torch.linalg.matrix_norm(A @ Z.T)) / J
    sq = ((A.T @ A) * (Z.T @ Z)).sum().clamp_min(0)     # trace(A^T A Z^T Z) = ||A Z^T||_F^2
    return math.sqrt(float(sq)) / J


def eki_factors(G: torch.Tensor, Y: torch.Tensor, loss: str = "mse",
                delta: float = 0.005) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(Psi (J,), A = grad_z Psi (J, d), Z = centred G (J, d), ||D||_F), all float64: the pieces
    of (1). Raises DivergenceError when ||D||_F is not finite."""
    if Y.shape != G.shape[1:]:
        raise ValueError(f"targets {tuple(Y.shape)} must match outputs' (B, C) {tuple(G.shape[1:])}")
    J = G.shape[0]
    G64 = G.to(torch.float64)
    psi, grad = eki_loss_grad(G64, Y.to(torch.float64), loss, delta)
    A = grad.reshape(J, -1)
    Z = (G64 - G64.mean(0, keepdim=True)).reshape(J, -1)
    d_norm = eki_frobenius(A, Z)
    if not math.isfinite(d_norm):
        raise DivergenceError("EKI step: D(u) is not finite (diverged ensemble)")
    return psi, A, Z, d_norm


def eki_euler_update_(U: torch.Tensor, A: torch.Tensor, Z: torch.Tensor, h: float) -> torch.Tensor:
    """In place: u_{n+1} = u_n - h D(u_n) u_n of (1) on U (J, P) with the factors A = grad_z Psi and
    Z = centred G (J x d each, :func:`eki_factors`): U <- U + W Z^T (U - mean U) with
    W = -h A / J (every row of D sums to zero, so centring U is free). Returns U."""
    return apply_low_rank_(U, A * (-h / U.shape[0]), Z)


def eki_step_(U: torch.Tensor, G: torch.Tensor, Y: torch.Tensor, h0: float = 2.0, eps: float = 0.5,
              loss: str = "mse", delta: float = 0.005) -> tuple[torch.Tensor, dict[str, Any]]:
    """In place: one EKI step (1) on U (J, P); returns (U, info) with info = {"h": h_n,
    "d_norm": ||D||_F, "loss": Psi per member (J,)}. The factors are computed in float64."""
    if G.shape[0] != U.shape[0]:
        raise ValueError(f"outputs has {G.shape[0]} members, ensemble {U.shape[0]}")
    psi, A, Z, d_norm = eki_factors(G, Y, loss, delta)
    h = h0 / (d_norm + eps)
    eki_euler_update_(U, A, Z, h)
    return U, {"h": h, "d_norm": d_norm, "loss": psi}


def eki_kalman_step_(U: torch.Tensor, G: torch.Tensor, Y: torch.Tensor, gamma: float, h: float) -> torch.Tensor:
    """In place: the discrete EKI step in Kalman form with step h (EnsembleKalmanProcesses'
    ``Inversion`` without observation noise, Kovachki & Stuart's EKI before the continuum limit):
    u_j <- u_j + C_uG (C_GG + Gamma / h)^{-1} (y - G(u_j)), Gamma = gamma I, covariances 1/J.
    Equal to the EnKF's joint update (``update_mode=batch``) with gamma / h; h = 0 leaves U."""
    if h > 0:
        W, Z = kalman_factors(G, Y, gamma / h, "batch")
        apply_low_rank_(U, W, Z)
    return U


def eki_step(U: torch.Tensor, G: torch.Tensor, Y: torch.Tensor, h0: float = 2.0, eps: float = 0.5,
             loss: str = "mse", delta: float = 0.005) -> torch.Tensor:
    """One EKI step (1); returns the new ensemble (J, P), ``U`` untouched. See :func:`eki_step_`."""
    return eki_step_(U.clone(), G, Y, h0, eps, loss, delta)[0]


def nesterov_coefficient(n: int, coef: float | None = None) -> float:
    """lambda_n of MEKI: n / (n + 3) (Nesterov, K&S) or the constant ``coef``."""
    return n / (n + 3.0) if coef is None else float(coef)


def randomize_(U: torch.Tensor, noise: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """In place: u_j <- mean(u) + scale * (xi_j - mean(xi)), the (R) redraw, for U, noise (J, P)
    and scale a number or per-parameter (P,) (gamma(n) times the prior std). Centring the noise
    keeps the ensemble mean (the evaluated network) exactly. ``noise`` is used as work space."""
    mean = U.mean(0, keepdim=True)
    noise.sub_(noise.mean(0, keepdim=True))
    if isinstance(scale, torch.Tensor):
        return torch.addcmul(mean, noise, scale, out=U)
    return torch.add(mean, noise, alpha=float(scale), out=U)


def public_noise_scale(h0: float, eps: float, d_norm: float, J: int) -> float:
    """h_t^(1/4) of the ``public`` (R) schedule: h_t = h0 / (J ||D||_F + eps), the step scalar of
    the public implementation, whose D (J x J) lacks the 1/J of (1)."""
    return (h0 / (J * d_norm + eps)) ** 0.25


class SpreadSchedule:
    """gamma(n) = gamma0 / sqrt(1 + n / tau): the decreasing spread of the (R) redraws."""

    def __init__(self, gamma0: float = 1.0, tau: float = 100.0):
        self.gamma0, self.tau = float(gamma0), float(tau)

    def __call__(self, n: int) -> float:
        return self.gamma0 / math.sqrt(1.0 + n / self.tau)


class RecentBatches:
    """The most recent distinct training batches, up to ``n`` samples: the set on which members
    are ranked to pick the best member (no extra data access, no peeking at the test set)."""

    def __init__(self, n: int):
        self.n = int(n)
        self.xs: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.n <= 0 or (self.xs and self.xs[-1].shape == x.shape and torch.equal(self.xs[-1], x)):
            return
        self.xs.append(x.detach().clone())
        self.ys.append(y.detach().clone())
        while len(self.xs) > 1 and sum(t.shape[0] for t in self.xs[1:]) >= self.n:
            self.xs.pop(0)
            self.ys.pop(0)

    def get(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.xs:
            return None
        return torch.cat(self.xs)[-self.n:], torch.cat(self.ys)[-self.n:]

    def state_dict(self) -> dict:
        return {"xs": self.xs, "ys": self.ys}

    def load_state_dict(self, state: dict, device) -> None:
        self.xs = [t.to(device) for t in state["xs"]]
        self.ys = [t.to(device) for t in state["ys"]]


def best_member(forward, U: torch.Tensor, x: torch.Tensor, y: torch.Tensor, loss: str = "cross_entropy",
                delta: float = 0.005) -> int:
    """Index of the member of U with the lowest loss Psi on (x, y): K&S's "best particle",
    ranked on training data."""
    G = forward(U, x)
    if loss == "cross_entropy":
        G = torch.softmax(G, -1)
    psi, _ = eki_loss_grad(G.to(torch.float64), y.to(torch.float64), loss, delta)
    psi = torch.where(torch.isfinite(psi), psi, torch.full_like(psi, float("inf")))
    return int(psi.argmin())


# -- the method ----------------------------------------------------------------------------------
class EKILoss(str, Enum):
    mse = "mse"                      # Psi = |G - y|^2 / 2 on the logits (summed over the batch)
    cross_entropy = "cross_entropy"  # Psi = -<y, log(G + delta)> on the softmax outputs


class RandomSchedule(str, Enum):
    decay = "decay"    # redraw around the mean after every step, spread gamma(n) (ours)
    public = "public"  # h_t^(1/4)-scaled prior noise every step, full prior redraw at epoch ends


class Momentum(str, Enum):
    none = "none"
    nesterov = "nesterov"            # MEKI: v_n = u_n + lambda_n (u_n - u_{n-1})


class EKIUpdate(str, Enum):
    auto = "auto"      # euler with the kovachki_stuart scheduler, kalman with fixed / data_misfit
    euler = "euler"    # (1): u <- u - h D(u) u, any loss (Kovachki & Stuart's discretisation)
    kalman = "kalman"  # u_j <- u_j + C_uG (C_GG + Gamma / h)^-1 (y - G_j) (EnsembleKalmanProcesses' EKI)


def resolve_update(update: EKIUpdate, scheduler: SchedulerName) -> EKIUpdate:
    """``optimizer.update_form`` with ``auto`` resolved: euler for kovachki_stuart, else kalman."""
    if update != EKIUpdate.auto:
        return update
    return EKIUpdate.euler if scheduler == SchedulerName.kovachki_stuart else EKIUpdate.kalman


@dataclass
class EKIConfig(MethodConfig):
    """``optimizer=eki``: U <- U - h_n D(U) U, h_n = h0 / (||D||_F + eps) (configs/optimizer/eki.yaml)."""

    name: str = "eki"
    ensemble_size: int = 2000        # J
    h0: float = 2.0
    eps: float = 0.5
    loss: EKILoss = EKILoss.cross_entropy
    delta: float = 0.005             # cross_entropy: grad = -y / (G + delta)
    momentum: Momentum = Momentum.none
    momentum_coef: Optional[float] = None  # null: Nesterov's n / (n + 3); a number: constant lambda
    randomize: bool = False          # (R): randomise the members with prior noise (random_schedule)
    random_schedule: RandomSchedule = RandomSchedule.decay
    random_gamma0: float = 1.0       # decay: gamma(n) = gamma0 / sqrt(1 + n / tau)
    random_tau: float = 100.0
    best_of: int = 512               # training samples (most recent batches) ranking the best member
    nonfinite: NonfinitePolicy = NonfinitePolicy.redraw
    # The step h_n (module docstring, "Step schedulers"): kovachki_stuart h0 / (||D||_F + eps) (the
    # default: Kovachki & Stuart), fixed (dt), data_misfit (Iglesias & Yang's controller to T =
    # terminate_at, then on_terminate; misfit_clock run: one time over the run, batch: per batch)
    scheduler: SchedulerName = SchedulerName.kovachki_stuart
    update_form: EKIUpdate = EKIUpdate.auto
    gamma: float = 1.0               # Gamma = gamma I of update=kalman and of the data misfit
    dt: float = 1.0                  # scheduler=fixed
    terminate_at: float = 1.0        # scheduler=data_misfit: T (.inf: never)
    on_terminate: OnTerminate = OnTerminate.stop
    misfit_clock: MisfitClock = MisfitClock.run
    inflation: InflationConfig = field(default_factory=InflationConfig)

    # added after runs were made, at the values that reproduce them (Kovachki & Stuart's EKI, no inflation)
    neutral = {"inflation": InflationConfig(), "scheduler": SchedulerName.kovachki_stuart,
               "update_form": EKIUpdate.auto, "gamma": 1.0, "dt": 1.0, "terminate_at": 1.0,
               "on_terminate": OnTerminate.stop, "misfit_clock": MisfitClock.run}
    positive = ("h0", "eps", "random_gamma0", "random_tau", "gamma", "dt", "terminate_at")
    noise_key = "gamma"                        # 1 when a noise covariance is given (optim/observation.py)
    regression = {"loss": EKILoss.mse}         # real-valued targets: Psi = |G - y|^2 / 2 on the raw outputs

    def check(self, cfg) -> None:
        check_ensemble_size(self)
        check(self.delta >= 0, "optimizer.delta", self.delta, "a number >= 0")
        check(self.best_of >= 0, "optimizer.best_of", self.best_of, "an integer >= 0 (0: no best member)")
        if self.momentum_coef is not None:
            check(0 <= self.momentum_coef < 1, "optimizer.momentum_coef", self.momentum_coef,
                  "a number in [0, 1), or null for Nesterov's n / (n + 3)")
        check_inflation(self.inflation)

    def cost(self, run: RunSize) -> Cost:
        """J networks forward and the update per mini-batch (``base.ensemble_cost``)."""
        return ensemble_cost(self.ensemble_size, run)


class EKI(Scheduled, EnsembleMethod):
    """``optimizer=eki``: (1) with optional Nesterov momentum (MEKI) and randomisation (R).

    Evaluated networks: the ensemble mean (metric ``test_error``) and the best member, the one
    with the lowest training loss on the most recent ``best_of`` training samples at evaluation
    time (``test_error_best``). Without randomisation every member stays in the affine span of
    the initial ensemble. Members with non-finite outputs follow ``optimizer.nonfinite``.
    """

    config: EKIConfig

    def __init__(self, opt: EKIConfig, ctx: MethodContext):
        super().__init__(opt, ctx)
        self.h0, self.eps, self.delta = opt.h0, opt.eps, opt.delta
        self.loss = opt.loss.value
        self.momentum = opt.momentum == Momentum.nesterov
        self.coef = opt.momentum_coef
        self.randomize = opt.randomize
        self.public = self.randomize and opt.random_schedule == RandomSchedule.public
        self.spread = SpreadSchedule(opt.random_gamma0, opt.random_tau)
        self.prior_std = ctx.model.prior_std(ctx.init, ctx.device, ensemble=True) if self.randomize else None
        self.prev: torch.Tensor | None = None   # u_{n-1} (members, or the mean under (R))
        self.n = 0
        self.recent = RecentBatches(opt.best_of)
        self.last: dict[str, float] = {}
        self.scheduler = scheduler_from_config(opt)
        self.form = resolve_update(opt.update_form, opt.scheduler).value
        self.gamma = opt.gamma
        self.batch_clock = opt.misfit_clock == MisfitClock.batch

    def _update(self, U: torch.Tensor, G: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """One step on the rows U with outputs G: the scheduler's step h, then (1) (euler) or the
        Kalman form (kalman), in place; sets ``self.dt = h``."""
        psi, A, Z, d_norm = eki_factors(G, y, self.loss, self.delta)
        misfits = None
        if self.scheduler.name == "data_misfit":
            if self.batch_clock:
                self.scheduler.restart_clock()
            misfits = data_misfits(G, y, self.gamma)
        h = self.scheduler.step(misfits=misfits, output_dim=A.shape[1], d_norm=d_norm)
        self.dt = h
        if self.form == "euler":
            eki_euler_update_(U, A, Z, h)
        else:
            eki_kalman_step_(U, G, y, self.gamma, h)
        return {"h": h, "d_norm": d_norm, "loss": psi}

    @classmethod
    def memory(cls, opt: EKIConfig, run: RunSize) -> MethodMemory:
        """The ensemble and the update (``base.ensemble_buffers``), u_{n-1} for momentum, the (R)
        prior noise (J x P each), and the forward of the J members on the ``best_of`` ranking samples."""
        J, P = int(opt.ensemble_size), run.params
        out = ensemble_buffers(opt, run)
        if opt.momentum == Momentum.nesterov and not opt.randomize:
            out["previous ensemble (momentum)"] = FP32 * J * P
        if opt.randomize:
            out["prior noise (R)"] = FP32 * J * P
        batches = (run.batch_size, int(opt.best_of)) if opt.best_of else (run.batch_size,)
        return MethodMemory(J, batches, out)

    def outputs(self, V: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        G = self.forward(V, x)
        return torch.softmax(G, -1) if self.loss == "cross_entropy" else G

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.recent.add(x, y)            # the samples the best member is ranked on
        return super().step(x, y)

    def ask(self) -> torch.Tensor:
        """The members the step is taken from: u_n, or with momentum v_n = u_n + lambda_n (u_n - u_{n-1})."""
        lam = nesterov_coefficient(self.n, self.coef) if self.momentum else 0.0
        if self.momentum and self.randomize:
            # fresh noise every step: only the mean's displacement carries momentum
            mean = self.U.mean(0)
            if self.prev is not None and lam > 0:
                self.U.add_(lam * (mean - self.prev))
            self.prev = mean
        elif self.momentum:
            if self.prev is None:
                self.prev = self.U.clone()
            # v_n = u_n + lam (u_n - u_{n-1}), built in u_{n-1}'s buffer
            V = self.prev.mul_(-lam).add_(self.U, alpha=1.0 + lam)
            self.prev = self.U
            self.U = V
        return self.U

    def tell(self, G: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """(1) on the members of the last :meth:`ask` from their raw outputs G (J, B, C) (softmax
        applied here for ``loss=cross_entropy``), then the (R) noise."""
        if self.loss == "cross_entropy":
            G = torch.softmax(G, -1)
        with self.update_scope():
            info, nbad = self.apply_update(self.U, G, lambda Vg, Gg: self._update(Vg, Gg, y))
        self.last = {"step_size": info["h"], "d_norm": info["d_norm"]}
        if self.scheduler.name == "data_misfit":
            self.last["algorithm_time"] = self.scheduler.time
        if self.public:
            scale = public_noise_scale(self.h0, self.eps, info["d_norm"], self.U.shape[0])
            self.U.addcmul_(self._prior_noise(), self.prior_std, value=scale)   # u_j += h_t^(1/4) xi_j
            self.last["random_noise_scale"] = scale
        elif self.randomize:
            randomize_(self.U, self._prior_noise(), self.spread(self.n + 1) * self.prior_std)
        self.n += 1
        out = {"train_loss": float(info["loss"].mean()) / G.shape[1]}   # per sample, mean over members
        return {**out, "nonfinite_step": nbad} if nbad else out

    def set_ensemble(self, U: torch.Tensor) -> None:
        super().set_ensemble(U)
        self.prev = None                 # momentum starts over from the given members

    def _prior_noise(self) -> torch.Tensor:
        """Standard normal (J, P) from the run's generator (times ``prior_std``: xi_j ~ the prior)."""
        return torch.randn(self.U.shape, generator=self.generator, device=self.U.device, dtype=self.U.dtype)

    def on_epoch_end(self) -> None:
        """``public`` (R) schedule: redraw u_j = mean(u) + xi_j (centred) with the full prior spread."""
        if self.public:
            randomize_(self.U, self._prior_noise(), self.prior_std)

    def eval_params(self) -> dict[str, torch.Tensor]:
        out = {"": self.U.mean(0)}
        sel = self.recent.get()
        if sel is not None:
            out["best"] = self.U[best_member(self.forward, self.U, *sel, self.loss, self.delta)]
        return out

    def diagnostics(self) -> dict[str, float]:
        d = {**super().diagnostics(), **self.last}
        if self.momentum:
            d["momentum_lambda"] = nesterov_coefficient(self.n, self.coef)
        if self.randomize and not self.public:
            d["random_gamma"] = self.spread(self.n)
        return d

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "prev": self.prev, "n": self.n, "recent": self.recent.state_dict(),
                "last": self.last, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        dev = self.U.device
        self.prev = None if state["prev"] is None else state["prev"].to(dev)
        self.n = int(state["n"])
        self.recent.load_state_dict(state["recent"], dev)
        self.last = dict(state["last"])
        if "scheduler" in state:   # checkpoints written before the schedulers were wired in have none
            self.scheduler.load_state_dict(state["scheduler"])


register_method("eki", EKIConfig, EKI)
