"""The "never look back" ensemble Kalman method (``optimizer=haber``): Haber, Lucka & Ruthotto,
"Never look back - A modified EnKF method and its application to the training of neural
networks without back propagation" (arXiv 1805.08034). The exact formulas are unconfirmed
against the paper's full text.

No persistent ensemble: each iteration draws K fresh perturbations omega_k ~ N(0, sigma^2 I)
around the current iterate theta (P,), evaluates the network at theta and at theta + omega_k,
and takes a Gauss-Newton step for 0.5 |F(theta) - y|^2 restricted to the random subspace
spanned by the omega_k (a K x K solve):

    Q = [F(theta + omega_k) - F(theta)]_k                      (d x K, outputs relative to theta)
    theta <- theta - alpha * Omega (Q^T Q + gamma I)^-1 Q^T (F(theta) - y)               (1)

with d = B * C and F the network outputs on the mini-batch (softmax probabilities by default,
``optimizer.output=logits`` for the raw logits). For a linear F (a strongly convex quadratic
objective), alpha = 1 and gamma -> 0, each step minimises the objective exactly over
theta + span(Omega), so the iterates converge to the minimiser. For mini-batch training a larger
gamma damps the step (Levenberg-Marquardt-like; for gamma >> ||Q||^2 the step tends to gradient
descent with rate alpha K sigma^2 / gamma in expectation, as E[Omega Omega^T] = K sigma^2 I): the
default gamma = 1 with sigma = 0.01 was the best of {0.01, 0.1, 1, 10} in a 60-batch MNIST check
(DNN 2, K = 64).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from ..config.schema import Cost, MethodConfig, RunSize
from ..errors import DivergenceError
from .base import (
    MethodContext,
    SingleNetworkMethod,
    check_ensemble_size,
    ensemble_cost,
    register_method,
)
from .linalg import cholesky_jittered


def haber_step(theta: torch.Tensor, omega: torch.Tensor, F0: torch.Tensor, Fpert: torch.Tensor,
               Y: torch.Tensor, alpha: float = 1.0, gamma: float = 1e-3) -> torch.Tensor:
    """One step (1); returns the new theta (P,) in theta's dtype.

    Args:
        theta: current iterate (P,).
        omega: the K perturbations as rows (K, P) (the columns of the paper's Omega).
        F0: outputs at theta, (B, C) (or any (..., ) shape matching Y).
        Fpert: outputs at theta + omega_k, (K, B, C).
        Y: targets, same shape as F0.
        alpha: step size; gamma: Tikhonov regularisation of the K x K system (> 0).
    """
    K = omega.shape[0]
    Q = (Fpert.to(torch.float64) - F0.to(torch.float64)).reshape(K, -1)        # Q^T, (K, d)
    r = (F0.to(torch.float64) - Y.to(torch.float64)).reshape(-1)              # (d,)
    M = Q @ Q.T + gamma * torch.eye(K, dtype=Q.dtype, device=Q.device)
    a = torch.cholesky_solve((Q @ r).unsqueeze(1), cholesky_jittered(M)).squeeze(1)
    return theta - alpha * (a.to(omega.dtype) @ omega)


class HaberOutput(str, Enum):
    logits = "logits"
    softmax = "softmax"


@dataclass
class HaberConfig(MethodConfig):
    """``optimizer=haber`` (configs/optimizer/haber.yaml)."""

    name: str = "haber"
    ensemble_size: int = 100         # K fresh perturbations per step
    sigma: float = 0.01              # perturbation std, Omega ~ N(0, sigma^2 I)
    alpha: float = 1.0               # step size
    gamma: float = 1.0               # regularisation (damping) of the K x K Gauss-Newton system
    output: HaberOutput = HaberOutput.softmax

    positive = ("sigma", "alpha", "gamma")
    regression = {"output": HaberOutput.logits}   # real-valued targets: the raw outputs

    def check(self, cfg) -> None:
        check_ensemble_size(self)

    def cost(self, run: RunSize) -> Cost:
        """K perturbed networks forward and the update per mini-batch, counted like an ensemble
        of K (``base.ensemble_cost``)."""
        return ensemble_cost(self.ensemble_size, run)


class Haber(SingleNetworkMethod):
    """``optimizer=haber``: one network theta drawn from the standard init (zero biases; not the
    ensemble prior of ``init.bias_sigma``), updated by (1) with ``ensemble_size`` = K fresh
    perturbations per step (one batched forward of K + 1 networks)."""

    def __init__(self, opt: HaberConfig, ctx: MethodContext):
        self.config = opt
        self.forward, self.generator = ctx.forward, ctx.generator
        self.K = opt.ensemble_size
        self.sigma, self.alpha, self.gamma = opt.sigma, opt.alpha, opt.gamma
        self.softmax = opt.output == HaberOutput.softmax
        self.theta = ctx.model.init(1, ctx.init, ctx.generator, ctx.device)[0]
        self.omega: torch.Tensor | None = None   # the perturbations of the last ask()

    def ask(self) -> torch.Tensor:
        """(K + 1, P): theta, then theta + omega_k with K fresh perturbations omega_k ~ N(0, sigma^2 I)."""
        P = self.theta.shape[0]
        self.omega = torch.randn(self.K, P, generator=self.generator, device=self.theta.device,
                                 dtype=self.theta.dtype) * self.sigma
        return torch.cat([self.theta.unsqueeze(0), self.theta + self.omega])

    def tell(self, F: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """(1) from the raw outputs F (K + 1, B, C) of the last :meth:`ask`'s networks (softmax
        applied here for ``output=softmax``)."""
        if self.softmax:
            F = torch.softmax(F, -1)
        if not bool(torch.isfinite(F).all()):
            raise DivergenceError("haber: non-finite network outputs")
        self.theta = haber_step(self.theta, self.omega, F[0], F[1:], y, self.alpha, self.gamma)
        return {"train_misfit": 0.5 * float(((F[0] - y) ** 2).sum()) / F.shape[1]}


register_method("haber", HaberConfig, Haber)
