"""Predictions of a whole ensemble: the predictive mean and spread, each member's error, and for
classification the ensemble's negative log-likelihood and calibration error. Pure functions of a
batched forward ``forward(U, x) -> (J, B, C)`` and the members U (J, P).

Classification: the predictive distribution is the average of the members' class probabilities,
p(c | x) = (1/J) sum_j softmax(G(u_j, x))_c (a Bayesian model average over the ensemble); its
NLL is -mean_i log p(y_i | x_i) and its expected calibration error (ECE, Guo et al. 2017) is
sum_b (n_b / N) |accuracy_b - confidence_b| over 15 equal-width bins of the top-class probability,
in % like the test error. Regression: the predictive mean and std of the members' outputs, the
RMSE of the mean, each member's RMSE, and the Gaussian NLL of the predictive N(mean, std^2 + the
noise variances when given).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

ELEMENTS = 1 << 22          # outputs (J x images x C) evaluated at a time: bounded memory whatever J is


def calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error in % of class probabilities (N, C) against labels (N,): the
    top-class confidence binned into ``bins`` equal-width bins of (0, 1]."""
    conf, pred = probs.max(-1)
    correct = (pred == labels).to(torch.float64)
    conf = conf.to(torch.float64)
    which = torch.clamp((conf * bins).ceil().long() - 1, 0, bins - 1)
    n = torch.zeros(bins, dtype=torch.float64, device=probs.device).index_add_(0, which, torch.ones_like(conf))
    acc = torch.zeros_like(n).index_add_(0, which, correct)
    cf = torch.zeros_like(n).index_add_(0, which, conf)
    return 100.0 * float((acc - cf).abs().sum()) / max(probs.shape[0], 1)


def _slices(n: int, J: int, width: int = 16):
    step = max(1, min(n, ELEMENTS // max(J * width, 1)))
    return [slice(s, min(n, s + step)) for s in range(0, n, step)]


@torch.no_grad()
def ensemble_class_scores(forward: Callable, U: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """``ensemble_nll`` and ``ensemble_ece`` (%) of the averaged class probabilities of the members
    U (J, P) on the images x (N, ...) with labels y (N,), a slice of images at a time."""
    probs = torch.cat([torch.softmax(forward(U, x[s]).to(torch.float64), -1).mean(0) for s in _slices(len(x), len(U))])
    nll = -torch.log(probs.gather(1, y.view(-1, 1)).clamp_min(1e-300)).mean()
    return {"ensemble_nll": float(nll), "ensemble_ece": calibration_error(probs, y)}


@torch.no_grad()
def network_regression_scores(forward_one: Callable, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                              batch_size: int = 2000) -> tuple[float, float]:
    """(RMSE, mean squared error per output) of one network theta (P,) on inputs x (N, ...) and
    real-valued targets y (N, D): the evaluation of ``task=regression`` (``test_error``, ``test_loss``)."""
    sq = 0.0
    for s in range(0, x.shape[0], batch_size):
        out = forward_one(theta, x[s: s + batch_size]).to(torch.float64)
        sq += float(((out - y[s: s + batch_size].to(torch.float64)) ** 2).sum())
    mse = sq / max(y.numel(), 1)
    return math.sqrt(mse), mse


@dataclass
class Prediction:
    """The ensemble's outputs on N inputs and what follows from them (module docstring).

    ``outputs``: the members' outputs (J, N, D): logits for classification, the observables for
    regression. ``mean`` / ``std``: the predictive mean and spread over the members (N, D), of the
    class probabilities for classification. With ``targets``: ``error`` (of the predictive mean:
    % misclassified, or the RMSE), ``member_error`` (J,) (each member's), ``nll`` and, for
    classification, ``ece`` (%). ``labels``: the predicted classes (N,) (classification)."""

    outputs: torch.Tensor
    task: str = "classification"
    targets: torch.Tensor | None = field(default=None, repr=False)
    noise_variance: torch.Tensor | None = field(default=None, repr=False)

    @property
    def probs(self) -> torch.Tensor:
        """The members' class probabilities (J, N, C) (classification)."""
        return torch.softmax(self.outputs.to(torch.float64), -1)

    @property
    def values(self) -> torch.Tensor:
        return self.probs if self.task == "classification" else self.outputs.to(torch.float64)

    @property
    def mean(self) -> torch.Tensor:
        return self.values.mean(0)

    @property
    def std(self) -> torch.Tensor:
        v = self.values
        return v.std(0) if v.shape[0] > 1 else torch.zeros_like(v[0])

    @property
    def labels(self) -> torch.Tensor:
        return self.mean.argmax(-1)

    def _need_targets(self) -> torch.Tensor:
        if self.targets is None:
            raise ValueError("no targets: call predict(x, y) to get errors")
        return self.targets

    @property
    def error(self) -> float:
        y = self._need_targets()
        if self.task == "classification":
            return 100.0 * float((self.labels != y).to(torch.float64).mean())
        return math.sqrt(float(((self.mean - y.to(torch.float64)) ** 2).mean()))

    @property
    def member_error(self) -> torch.Tensor:
        y = self._need_targets()
        if self.task == "classification":
            return 100.0 * (self.outputs.argmax(-1) != y).to(torch.float64).mean(1)
        return ((self.outputs.to(torch.float64) - y.to(torch.float64)) ** 2).mean((1, 2)).sqrt()

    @property
    def nll(self) -> float:
        y = self._need_targets()
        if self.task == "classification":
            return float(-torch.log(self.mean.gather(1, y.view(-1, 1)).clamp_min(1e-300)).mean())
        var = self.std ** 2
        if self.noise_variance is not None:
            var = var + self.noise_variance.to(var)
        r2 = (self.mean - y.to(torch.float64)) ** 2
        return float((0.5 * (torch.log(2 * math.pi * var) + r2 / var)).sum(-1).mean())

    @property
    def ece(self) -> float:
        if self.task != "classification":
            raise ValueError("the calibration error is for classification")
        return calibration_error(self.mean, self._need_targets())


@torch.no_grad()
def predict(forward: Callable, U: torch.Tensor, x: torch.Tensor, targets: torch.Tensor | None = None,
            task: str = "classification", noise_variance: torch.Tensor | None = None) -> Prediction:
    """The :class:`Prediction` of the members U (J, P) on the inputs x (N, ...) (a slice of inputs
    at a time through ``forward``); ``targets``: labels (N,) or values (N, D)."""
    outputs = torch.cat([forward(U, x[s]) for s in _slices(len(x), len(U))], 1)
    return Prediction(outputs, task, targets, noise_variance)
