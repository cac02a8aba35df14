"""Ensemble transform Kalman inversion (ETKI): the square-root ensemble update done in ensemble
space, as EnsembleKalmanProcesses.jl implements it (src/EnsembleTransformKalmanInversion.jl,
``etki_update``), after the ensemble transform Kalman filter of Bishop, Etherton & Majumdar
(2001, Mon. Wea. Rev. 129, 420, doi:10.1175/1520-0493(2001)129<0420:ASWTET>2.0.CO;2) as used
for inversion by Huang et al. (2022, Inverse Problems, doi:10.1088/1361-6420/ac99fa), the two
references EnsembleKalmanProcesses.jl gives for its ``TransformInversion``.

Notation: ensemble U (J, P) with members as rows, outputs G (J, d), data y (d,), noise
Gamma = diag(gamma) (a number or d variances), step dt (Gamma -> Gamma / dt, EKP's
``inv_noise_scaling``), n = J - ddof the covariance normalisation. With

    X = (U - mean U) / sqrt(n)                        (J, P)
    Y = (G - mean G) / sqrt(n)                        (J, d)
    Omega = (I_J + dt Y Gamma^{-1} Y^T)^{-1}          (J, J)
    w = Omega Y dt Gamma^{-1} (y - mean G)            (J,)

the update (EKP's ``mean(u) + X * (w + sqrt(m - 1) * sqrt(Omega))`` in its column convention) is

    U_new = mean U + (1 w^T / sqrt(n) + Omega^{1/2}) (U - mean U)                          (1)

with the symmetric square root Omega^{1/2}. Since Y^T 1 = 0, Omega 1 = 1 = Omega^{1/2} 1, so the
new mean is mean U + w^T X = mean U + C_uG (C_GG + Gamma/dt)^{-1} (y - mean G) (the Kalman mean)
and the new covariance X^T Omega X = C_uu - C_uG (C_GG + Gamma/dt)^{-1} C_Gu (the Kalman
covariance), C the ensemble covariances normalised 1/n. For a linear G these are exact, so
steps dt_1, dt_2, ... compose into one Kalman update with Gamma / (dt_1 + dt_2 + ...).

Differences from EKP, each a choice:

- ``ddof=0`` (default) normalises by 1/J like the rest of this package (the ETKI mean step then
  equals the mean of the batch EnKF update of :mod:`enkf_repro.enkf`); ``ddof=1`` is EKP's
  1/(J-1). The two differ by a factor J/(J-1) in the effective prior covariance.
- No ``impose_prior`` (EKP's augmentation of y and G by the prior) and no ``sqrt(eps)``
  diagonal regularisation of I + Y^T Gamma^{-1} Y: its eigenvalues are >= 1 by construction.
- Omega^{1/2} and Omega are obtained from one symmetric eigendecomposition of the Gram matrix in
  the smaller of the two dimensions (the J x J matrix M M^T when d >= J, the d x d M^T M when
  d < J, M = sqrt(dt) Y Gamma^{-1/2}), cost O(J d min(J, d)) and linear in d; no d x d matrix
  is formed when d >= J. A Cholesky factor would give a non-symmetric square root, which does
  not keep 1 as an eigenvector and would move the mean.

The (J, P) work is the J x J transform (1) applied to U in column blocks
(:func:`enkf_repro.optim.linalg.apply_low_rank_`): U <- U + W (U - mean U) with W = (1) - I, no J x P
temporary beyond a block. The small factors are computed in float64.

The method (``optimizer=etki``, :class:`ETKI`): a persistent ensemble drawn from the init prior
(``EnsembleMethod``: non-finite policy, inflation, update precision as for the EnKF and EKI),
one step (1) per mini-batch with the data y = the one-hot labels (B x C, flattened) and
Gamma = gamma * I on the network outputs, ``outputs=logits`` (default: the paper EnKF's
observation, logits against one-hot labels, gamma = 0.01 as its default) or ``outputs=softmax``
(the class probabilities against the one-hot labels: bounded outputs, a Gaussian stand-in for a
categorical likelihood; gamma then sets how closely the probabilities are fitted). The step dt
comes from ``optimizer.scheduler``: ``fixed`` (default, dt = 1: EnsembleKalmanProcesses'
default; the mean step is then the EnKF's ``update_mode=batch`` mean), ``data_misfit``
(Iglesias & Yang's controller on the batch's misfits Phi_j = |y - G_j|^2 / (2 gamma), M = B C,
with ``terminate_at``, ``on_terminate`` and ``misfit_clock`` as for EKI: enkf_repro/optim/eki.py
says what T = 1 means with mini-batches) or ``kovachki_stuart`` (h0 / (||D||_F + eps), D of the
Gaussian misfit's gradient Gamma^-1 (G - y)). Evaluated: the ensemble mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from ..config.schema import Cost, MethodConfig, RunSize
from ..config.validate import check
from ..errors import DivergenceError
from ._noise import noise_variance
from .base import (
    FP64,
    EnsembleMethod,
    MethodContext,
    MethodMemory,
    check_ensemble_size,
    ensemble_buffers,
    ensemble_cost,
    register_method,
)
from .eki import eki_frobenius
from .failure import NonfinitePolicy
from .inflation import InflationConfig, check_inflation
from .linalg import apply_low_rank_
from .schedulers import MisfitClock, OnTerminate, Scheduled, SchedulerName, data_misfits, scheduler_from_config


def _sqrt_minus_one(s: torch.Tensor) -> torch.Tensor:
    """(1 + s)^{-1/2} - 1 without cancellation for small s >= 0."""
    r = torch.sqrt(1.0 + s)
    return -s / (r * (1.0 + r))


def etki_correction(G: torch.Tensor, y: torch.Tensor, gamma: float | torch.Tensor, dt: float = 1.0,
                    ddof: int = 0) -> torch.Tensor:
    """W (J, J), float64, such that the ETKI update (1) is U_new = U + W (U - mean U).

    Args:
        G: outputs G(u_j), (J, d) or (J, B, C) (flattened row-major to d = B * C).
        y: data, (d,) or (B, C).
        gamma: observation-noise variance: a number (Gamma = gamma * I) or d variances (any
            shape with d entries, the diagonal of Gamma in the flattened output order).
        dt: step (algorithm time), >= 0: Gamma is replaced by Gamma / dt. dt = 0 gives W = 0.
        ddof: covariance normalisation 1/(J - ddof): 0 (this package) or 1 (EKP).
    Returns:
        W = 1 w^T / sqrt(n) + (Omega^{1/2} - I), a (J, J) float64 tensor on G's device.
    Raises:
        DivergenceError: non-finite outputs.
        ValueError: bad shapes, gamma, dt or ddof.
    """
    J = G.shape[0]
    if ddof not in (0, 1):
        raise ValueError(f"ddof={ddof!r}: expected 0 (1/J) or 1 (1/(J-1))")
    if J - ddof < 1 or J < 2:
        raise ValueError(f"ETKI needs at least 2 members, got {J}")
    dt = float(dt)
    if not (math.isfinite(dt) and dt >= 0):
        raise ValueError(f"dt={dt!r} must be finite and >= 0")
    G64 = G.detach().reshape(J, -1).to(torch.float64)
    d = G64.shape[1]
    y64 = y.detach().reshape(-1).to(device=G64.device, dtype=torch.float64)
    if y64.numel() != d:
        raise ValueError(f"y has {y64.numel()} entries; the outputs have d = {d} per member")
    if not bool(torch.isfinite(G64).all()):
        raise DivergenceError("ETKI update: non-finite outputs (diverged ensemble)")
    scale = torch.sqrt(dt / noise_variance(gamma, d, torch.float64, G64.device))   # sqrt(dt) Gamma^{-1/2}, (d,)
    g_mean = G64.mean(0)
    M = (G64 - g_mean) * (scale / math.sqrt(J - ddof))       # sqrt(dt) Y Gamma^{-1/2}, (J, d)
    r = (y64 - g_mean) * scale                                # sqrt(dt) Gamma^{-1/2} (y - mean G), (d,)
    if d >= J:
        # Omega = V diag(1 / (1 + s)) V^T with M M^T = V diag(s) V^T
        s, V = torch.linalg.eigh(M @ M.T)
        s = s.clamp_min(0)
        sqrt_part = (V * _sqrt_minus_one(s)) @ V.T            # Omega^{1/2} - I
        w = V @ ((V.T @ (M @ r)) / (1.0 + s))                 # Omega M r
    else:
        # M^T M = Q diag(s) Q^T (d x d); Omega^{1/2} - I = M Q diag(f(s) / s) Q^T M^T with
        # f(s) = (1 + s)^{-1/2} - 1 (f(s) / s is smooth at 0), and Omega M = M (I + M^T M)^{-1}
        s, Q = torch.linalg.eigh(M.T @ M)
        s = s.clamp_min(0)
        K = M @ Q                                              # (J, d)
        r1 = torch.sqrt(1.0 + s)
        sqrt_part = (K * (-1.0 / (r1 * (1.0 + r1)))) @ K.T
        w = K @ ((Q.T @ r) / (1.0 + s))
    W = sqrt_part + w.unsqueeze(0) / math.sqrt(J - ddof)      # every row j gets w^T / sqrt(n)
    return W


def etki_update_(U: torch.Tensor, G: torch.Tensor, y: torch.Tensor, gamma: float | torch.Tensor,
                 dt: float = 1.0, ddof: int = 0, block: int | None = None) -> torch.Tensor:
    """In place: one ETKI step (1) on U (J, P), float32 or float64; returns U.

    The J x J matrix W of :func:`etki_correction` is applied in column blocks of about 2^24
    elements (``block`` columns if given). Every member stays in the affine span of the
    current ensemble. See :func:`etki_correction` for the arguments.
    """
    if G.shape[0] != U.shape[0]:
        raise ValueError(f"outputs have {G.shape[0]} members, the ensemble {U.shape[0]}")
    W = etki_correction(G, y, gamma, dt, ddof).to(U.device)
    return apply_low_rank_(U, W, None, block)


def etki_update(U: torch.Tensor, G: torch.Tensor, y: torch.Tensor, gamma: float | torch.Tensor,
                dt: float = 1.0, ddof: int = 0) -> torch.Tensor:
    """One ETKI step (1); returns the new ensemble (J, P) and leaves ``U`` untouched."""
    return etki_update_(U.clone(), G, y, gamma, dt, ddof)


# -- the method ----------------------------------------------------------------------------------
class ETKIOutputs(str, Enum):
    logits = "logits"    # G = the network's logits (the paper's EnKF observation)
    softmax = "softmax"  # G = softmax(logits), the class probabilities


@dataclass
class ETKIConfig(MethodConfig):
    """``optimizer=etki``: ensemble transform Kalman inversion (configs/optimizer/etki.yaml)."""

    name: str = "etki"
    ensemble_size: int = 1000        # J
    gamma: float = 0.01              # Gamma = gamma * I on the outputs
    outputs: ETKIOutputs = ETKIOutputs.logits
    scheduler: SchedulerName = SchedulerName.fixed
    dt: float = 1.0                  # scheduler=fixed
    h0: float = 2.0                  # scheduler=kovachki_stuart: h0 / (||D||_F + eps)
    eps: float = 0.5
    terminate_at: float = 1.0        # scheduler=data_misfit: T (.inf: never)
    on_terminate: OnTerminate = OnTerminate.stop
    misfit_clock: MisfitClock = MisfitClock.run
    ddof: int = 0                    # covariances 1/(J - ddof): 0 as the rest of the package, 1 as EKP
    nonfinite: NonfinitePolicy = NonfinitePolicy.redraw
    inflation: InflationConfig = field(default_factory=InflationConfig)

    positive = ("gamma", "dt", "h0", "eps", "terminate_at")
    noise_key = "gamma"                            # 1 when a noise covariance is given (optim/observation.py)
    regression = {"outputs": ETKIOutputs.logits}   # real-valued targets: the raw outputs

    def check(self, cfg) -> None:
        check_ensemble_size(self)
        check(self.ddof in (0, 1), "optimizer.ddof", self.ddof, "0 (1/J) or 1 (1/(J-1), EnsembleKalmanProcesses)")
        check_inflation(self.inflation)

    def cost(self, run: RunSize) -> Cost:
        """J networks forward and the update per mini-batch (``base.ensemble_cost``)."""
        return ensemble_cost(self.ensemble_size, run)


class ETKI(Scheduled, EnsembleMethod):
    """``optimizer=etki`` (module docstring): one ETKI step per mini-batch with the scheduler's dt."""

    config: ETKIConfig

    def __init__(self, opt: ETKIConfig, ctx: MethodContext):
        super().__init__(opt, ctx)
        self.gamma = opt.gamma
        self.softmax = opt.outputs == ETKIOutputs.softmax
        self.ddof = opt.ddof
        self.scheduler = scheduler_from_config(opt)
        self.batch_clock = opt.misfit_clock == MisfitClock.batch
        self.last: dict[str, float] = {}

    @classmethod
    def memory(cls, opt: ETKIConfig, run: RunSize) -> MethodMemory:
        """The ensemble and the update (``base.ensemble_buffers``) and the transform's J x J matrices."""
        J = int(opt.ensemble_size)
        return MethodMemory(J, (run.batch_size,), {**ensemble_buffers(opt, run),
                                                   "ensemble transform (J x J, fp64)": 6 * FP64 * J * J})

    def _update(self, U: torch.Tensor, G: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        J = G.shape[0]
        misfits = data_misfits(G, y, self.gamma)                    # (J,) float64
        d_norm = None
        if self.scheduler.name == "kovachki_stuart":
            G64 = G.to(torch.float64).reshape(J, -1)
            A = (G64 - y.to(torch.float64).reshape(1, -1)) / self.gamma
            d_norm = eki_frobenius(A, G64 - G64.mean(0, keepdim=True))
            if not math.isfinite(d_norm):
                raise DivergenceError("ETKI step: D(u) is not finite (diverged ensemble)")
        elif self.scheduler.name == "data_misfit" and self.batch_clock:
            self.scheduler.restart_clock()
        dt = self.scheduler.step(misfits=misfits, output_dim=G[0].numel(), d_norm=d_norm)
        self.dt = dt
        etki_update_(U, G, y, self.gamma, dt, self.ddof)
        out = {"dt": dt, "misfit": float(misfits.mean()) * self.gamma}
        if d_norm is not None:
            out["d_norm"] = d_norm
        return out

    def tell(self, G: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """One step (1) from the members' raw outputs G (J, B, C) (softmax applied here for
        ``outputs=softmax``) on the targets y (B, C)."""
        if self.softmax:
            G = torch.softmax(G, -1)
        with self.update_scope():
            info, nbad = self.apply_update(self.U, G, lambda Ug, Gg: self._update(Ug, Gg, y))
        self.last = {"step_size": info["dt"], **({"d_norm": info["d_norm"]} if "d_norm" in info else {})}
        if self.scheduler.name == "data_misfit":
            self.last["algorithm_time"] = self.scheduler.time
        out = {"train_misfit": info["misfit"] / G.shape[1]}   # 1/2 |y - G|^2 per sample, mean over members
        return {**out, "nonfinite_step": nbad} if nbad else out

    def diagnostics(self) -> dict[str, float]:
        return {**super().diagnostics(), **self.last}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "scheduler": self.scheduler.state_dict(), "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.last = dict(state["last"])


register_method("etki", ETKIConfig, ETKI)
