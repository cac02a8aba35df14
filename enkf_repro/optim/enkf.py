"""The EnKF update of the paper, as pure functions on tensors.

Notation (docs/paper.md): ensemble U (J x P), model outputs G (J x B x C) of the members on a
mini-batch, one-hot targets Y (B x C), observation noise Gamma = gamma * I, d = B * C.
Covariances are normalised by 1/J. The update (Iglesias, Law & Stuart 2013, eq. for the
iterative ensemble Kalman method) is

    u_j <- u_j + C_uG (C_GG + Gamma)^-1 (y - G(u_j)).                                   (1)

``mode="batch"`` applies (1) once with the joint d-dimensional observation. ``mode="sequential"``
is the published code's scheme: the B samples are assimilated one at a time (a C-dimensional
observation with a C x C covariance each) while the outputs G of the single forward pass are
reused for all B steps. Because G is not recomputed, the B steps are the product

    U <- (I + a_B c_B^T) ... (I + a_1 c_1^T) U,   c_s = centred outputs of sample s (J x C),
    a_s = (y_s - G_s)(C_GG,s + Gamma)^-1 / J,                                           (2)

and that product equals I + W Z^T with W = [a_1 .. a_B] and Z = C (I - N)^-1, N the strictly
block-upper part of W^T C (blocks a_k^T c_s, k < s). Both modes therefore end in the same low-rank
correction U <- U + W Z^T (U - mean(U)), done with two large GEMMs (or a J x J matrix when J is
small) and never a P x P or P x d x J temporary. :func:`enkf_update_reference` is the literal
per-sample update of the published code (explicit P x C cross-covariances), kept beside the fast
one as the reference that the tests and the benchmark compare against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from ..config.schema import Cost, MethodConfig, RunSize
from ..config.validate import check
from .adaptive import AdaptiveConfig, AdaptiveSchedule, FixedSchedule, check_adaptive, resize_ensemble
from .base import (
    EnsembleMethod,
    MethodContext,
    MethodMemory,
    check_ensemble_size,
    ensemble_buffers,
    ensemble_cost,
    register_method,
)
from .failure import NonfinitePolicy
from .inflation import InflationConfig, check_inflation
from .linalg import apply_low_rank_, cholesky_jittered


def kalman_factors(outputs: torch.Tensor, targets: torch.Tensor, gamma: float,
                   mode: str = "sequential") -> tuple[torch.Tensor, torch.Tensor]:
    """W, Z (J x d each) such that the EnKF update is U <- U + W Z^T (U - mean(U)).

    Computed in float64 (these are O(J d^2) operations, small next to the O(J d P) GEMMs).
    """
    J, B, C = outputs.shape
    d = B * C
    G = outputs.to(torch.float64)
    Y = targets.to(torch.float64).reshape(1, B, C)
    Gc = G - G.mean(0, keepdim=True)       # centred outputs
    R = Y - G                              # innovations y - G(u_j)
    eye_c = torch.eye(C, dtype=G.dtype, device=G.device)
    if mode == "sequential":
        K = torch.einsum("jbc,jbe->bce", Gc, Gc) / J + gamma * eye_c       # C_GG,s + Gamma (B, C, C)
        L = cholesky_jittered(K)
        A = torch.cholesky_solve(R.permute(1, 2, 0), L).permute(2, 0, 1)   # (y_s - G_s) K_s^-1, (J, B, C)
        W = A.reshape(J, d) / J
        Z0 = Gc.reshape(J, d)
        block = torch.arange(d, device=G.device) // C
        N = (W.T @ Z0) * (block[:, None] < block[None, :])                  # blocks a_k^T c_s, k < s
        T = torch.eye(d, dtype=G.dtype, device=G.device) - N
        Z = torch.linalg.solve_triangular(T, Z0, upper=True, left=False, unitriangular=True)  # Z T = Z0
        return W, Z
    if mode != "batch":
        raise ValueError(f"mode={mode!r}: expected 'sequential' or 'batch'")
    Z = Gc.reshape(J, d)
    R2 = R.reshape(J, d)
    if d <= J:   # solve in data space: (C_GG + Gamma) is d x d
        K = Z.T @ Z / J + gamma * torch.eye(d, dtype=G.dtype, device=G.device)
        W = torch.cholesky_solve(R2.T, cholesky_jittered(K)).T / J
    else:        # Woodbury, ensemble space: (Z^T Z / J + g I)^-1 = (I - Z^T (J g I + Z Z^T)^-1 Z) / g
        S = Z @ Z.T + (J * gamma) * torch.eye(J, dtype=G.dtype, device=G.device)
        V = torch.cholesky_solve(Z @ R2.T, cholesky_jittered(S))           # (J, J)
        W = (R2 - V.T @ Z) / (gamma * J)
    return W, Z


def enkf_update(ensemble: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor, gamma: float,
                mode: str = "sequential") -> torch.Tensor:
    """One EnKF iteration (1) on a mini-batch; returns the new ensemble.

    Args:
        ensemble: U, (J, P), float32 or float64; not modified.
        outputs: G(u_j) on the batch, (J, B, C) (logits for the paper's network).
        targets: y, (B, C), one-hot labels.
        gamma: observation noise, Gamma = gamma * I, gamma > 0.
        mode: ``"sequential"`` (published code, per-sample assimilation (2)) or ``"batch"``.
    Returns:
        (J, P) tensor of ``ensemble``'s dtype.
    """
    return enkf_update_(ensemble.clone(), outputs, targets, gamma, mode)


def enkf_update_(ensemble: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor, gamma: float,
                 mode: str = "sequential") -> torch.Tensor:
    """In-place :func:`enkf_update` (the trainer's path: no second J x P buffer)."""
    if outputs.shape[0] != ensemble.shape[0]:
        raise ValueError(f"outputs has {outputs.shape[0]} members, ensemble {ensemble.shape[0]}")
    if targets.shape != outputs.shape[1:]:
        raise ValueError(f"targets {tuple(targets.shape)} must match outputs' (B, C) {tuple(outputs.shape[1:])}")
    W, Z = kalman_factors(outputs, targets, gamma, mode)
    return apply_low_rank_(ensemble, W, Z)


def enkf_update_reference(ensemble: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor, gamma: float,
                          mode: str = "sequential") -> torch.Tensor:
    """(1) written out literally, for tests and the benchmark (slow: O(B J P C) with explicit P x C
    cross-covariances). ``sequential``: the published code, per sample s the covariances of the
    fixed outputs of sample s and the current ensemble, u_j += C_uG (C_GG + Gamma)^-1 (y_s - g_js);
    ``batch``: the joint d-dimensional formula. Returns a new (J, P) tensor."""
    U = ensemble.clone()
    J, B, C = outputs.shape
    if mode == "batch":
        outputs, targets, B, C = outputs.reshape(J, 1, B * C), targets.reshape(1, B * C), 1, B * C
    elif mode != "sequential":
        raise ValueError(f"mode={mode!r}: expected 'sequential' or 'batch'")
    eye = torch.eye(C, dtype=U.dtype, device=U.device)
    for s in range(B):
        g = outputs[:, s].to(U.dtype)
        gc = g - g.mean(0)
        c_ug = (U - U.mean(0)).T @ gc / J                       # (P, C)
        k = torch.linalg.inv(gc.T @ gc / J + gamma * eye)       # (C_GG + Gamma)^-1
        U += (targets[s].to(U.dtype) - g) @ k.T @ c_ug.T
    return U


# -- the method --------------------------------------------------------------------------------
class UpdateMode(str, Enum):
    sequential = "sequential"  # the published code: the 64 samples of a batch one at a time
    batch = "batch"            # the textbook joint update with d = B * C


@dataclass
class EnKFConfig(MethodConfig):
    """``optimizer=enkf``: the paper's EnKF (configs/optimizer/enkf.yaml)."""

    name: str = "enkf"
    ensemble_size: int = 5000  # J
    gamma: float = 0.01        # observation noise: Gamma = gamma * I
    repetitions: int = 8       # r: EnKF iterations per mini-batch
    update_mode: UpdateMode = UpdateMode.sequential
    nonfinite: NonfinitePolicy = NonfinitePolicy.redraw
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    # also evaluate the LAST member's network (metric test_error_last): what the published plotting
    # code drew for Figure 1 (the ensemble mean, metric test_error, is always evaluated)
    eval_last_member: bool = False
    # covariance inflation after every update (off: the paper's EnKF); dt = 1 for the EnKF
    inflation: InflationConfig = field(default_factory=InflationConfig)

    neutral = {"inflation": InflationConfig()}   # added later; off reproduces the earlier runs
    positive = ("gamma",)
    noise_key = "gamma"         # the key of Gamma = gamma * I (1 when a noise covariance is given)

    def check(self, cfg) -> None:
        check_ensemble_size(self)
        check(self.repetitions >= 1, "optimizer.repetitions", self.repetitions, "an integer >= 1 (r)")
        if self.adaptive.enabled:
            check_adaptive(self.adaptive, cfg)
        check_inflation(self.inflation)

    def cost(self, run: RunSize) -> Cost:
        """J networks forward and the update, r times per mini-batch (``base.ensemble_cost``)."""
        return ensemble_cost(self.ensemble_size, run, self.repetitions)


class EnKF(EnsembleMethod):
    """``optimizer=enkf``: (1) on an ensemble drawn from the init prior, each mini-batch presented
    ``repetitions`` times; non-finite members follow ``optimizer.nonfinite`` (failure.py)."""

    config: EnKFConfig

    @classmethod
    def memory(cls, opt: EnKFConfig, run: RunSize) -> MethodMemory:
        """As every ensemble method (``base.ensemble_buffers``), at the largest J Algorithm 1 may
        grow the ensemble to (``adaptive.b_u``)."""
        J = max(int(opt.ensemble_size), int(opt.adaptive.b_u)) if opt.adaptive.enabled else int(opt.ensemble_size)
        return MethodMemory(J, (run.batch_size,), ensemble_buffers(opt, run, J))

    def __init__(self, opt: EnKFConfig, ctx: MethodContext):
        super().__init__(opt, ctx)
        self.gamma = opt.gamma
        self.mode = opt.update_mode.value
        self.repetitions = opt.repetitions
        self.eval_last = opt.eval_last_member

    def schedule(self, batches):
        """Algorithm 1 (adaptive.py) when ``optimizer.adaptive.enabled``, else a fixed schedule."""
        if self.config.adaptive.enabled:
            return AdaptiveSchedule(self.config.adaptive, batches, self.config.repetitions)
        return FixedSchedule()

    def eval_params(self) -> dict[str, torch.Tensor]:
        out = super().eval_params()
        if self.eval_last:
            out["last"] = self.U[-1]
        return out

    def tell(self, G: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """(1) from the members' outputs G (J, B, C) on the targets y (B, C)."""
        def update(U, G):
            enkf_update_(U, G, y, self.gamma, self.mode)
            return 0.5 * float(((G - y) ** 2).sum((1, 2)).mean()) / G.shape[1]

        with self.update_scope():
            misfit, nbad = self.apply_update(self.U, G, update)
        return {"train_misfit": misfit, **({"nonfinite_step": nbad} if nbad else {})}

    def resize(self, ensemble_size: int, shrink: str = "keep_mean") -> None:
        """Change J (Algorithm 1): drop or add members with the run's generator (adaptive.py)."""
        self.U = resize_ensemble(self.U, int(ensemble_size), self.generator, shrink)


register_method("enkf", EnKFConfig, EnKF)
