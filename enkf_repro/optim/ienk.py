"""The 2019 master thesis's simplified iterative EnKF (``optimizer=ienk_simple``).

After the thesis's published code (diepi/Ensemble-Kalman-for-Neural-Network: codes/main.py and
``DenseLayer`` in codes/Layers.py; docs/paper.md): one network theta (Glorot-normal weights, zero
biases: ``model=mlp``, the standard init, not the ensemble prior of ``init.bias_sigma``). For every
training sample (x, y), in order, K fresh perturbations of EVERY layer are drawn at once: layer l
(its weight W_l and its bias b_l) gets dW_{l,k}, db_{l,k} ~ N(0, s_l^2) with the layer's Glorot
std s_l = sqrt(2 / (fan_in + fan_out)) for the weight AND the bias, and network k (k = 1..K)
runs with every layer perturbed, W_l + dW_{l,k} and b_l + db_{l,k} for all l. With p_0 the
softmax output of the unperturbed network and p_k that of network k (K + 1 forward passes per
sample),

    c_k = < p_k - p_0 , -y / (p_0 + delta) >,            delta = 0.005                     (1)
    W_l <- W_l - lr * sum_k dW_{l,k} c_k,  b_l <- b_l - lr * sum_k db_{l,k} c_k   for all l    (2)

one coefficient vector c (K,) for all layers, lr = 0.001 for every layer, no 1/K, no adaptive
step, c from the one sample (not summed over the batch: one update per sample; the batch of 500
only groups the logging there). (2) is a Monte-Carlo estimate of K s_l^2 times the gradient of
the loss -<y, log(p + delta)> in layer l (cross terms between layers average out).

``optimizer.perturb``: ``joint`` (default, the thesis) as above; ``per_layer`` perturbs one
layer at a time, K perturbations per layer with the other layers unperturbed, 1 + K * L networks
per sample (L layers) all evaluated at the same theta, and each layer updated with its own c.

``optimizer.mode=batch`` (an option, not the thesis): one update per mini-batch with the c_k of
(1) summed over its samples (with the same lr, roughly the first-order effect of B per-sample
steps).

``optimizer.output=logits`` (for real-valued targets, ``task=regression``): p are the raw outputs
and the gradient in (1) is that of the Gaussian misfit 1/2 |p_0 - y|^2, c_k = <p_k - p_0, p_0 - y>
(with a noise covariance, on the whitened outputs: optim/observation.py).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

import torch

from ..config.schema import Cost, MethodConfig, RunSize
from ..config.validate import check
from ..errors import DivergenceError
from ..models.base import ModelSpec, glorot_std
from .base import (
    MethodContext,
    SingleNetworkMethod,
    check_ensemble_size,
    ensemble_cost,
    register_method,
)


def layer_blocks(model: ModelSpec) -> list[tuple[int, int, float]]:
    """(start, stop, std) of each layer's contiguous block of the flat parameter vector: the
    parameters sharing a module prefix ("net.fc1.weight", "net.fc1.bias"), std from the weight."""
    groups: "OrderedDict[str, list[tuple[int, int, tuple]]]" = OrderedDict()
    offset = 0
    for name, shape in model.shapes.items():
        n = math.prod(shape)
        groups.setdefault(name.rsplit(".", 1)[0], []).append((offset, offset + n, tuple(shape), name))
        offset += n
    out = []
    for prefix, parts in groups.items():
        for (_, stop, _, _), (start, _, _, _) in zip(parts[:-1], parts[1:]):
            if stop != start:
                raise ValueError(f"layer {prefix}: parameters are not contiguous in the flat vector")
        weights = [p for p in parts if not p[3].endswith("bias")] or parts
        out.append((parts[0][0], parts[-1][1], glorot_std(weights[0][2])))
    return out


def ienk_coefficients(p_pert: torch.Tensor, p0: torch.Tensor, Y: torch.Tensor, delta: float = 0.005,
                      gaussian: bool = False) -> torch.Tensor:
    """c_k of (1), summed over the samples: p_pert (M, B, C), p0 (B, C), Y (B, C) -> (M,).
    ``gaussian``: the gradient p_0 - y of 1/2 |p_0 - y|^2 in place of -y / (p_0 + delta)."""
    w = p0 - Y.to(p0.dtype) if gaussian else -Y.to(p0.dtype) / (p0 + delta)
    return ((p_pert - p0.unsqueeze(0)) * w.unsqueeze(0)).sum((1, 2))


def joint_members(theta: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(1 + K, P): theta, then theta + noise_k (every layer perturbed at once), k = 1..K.

    noise: (K, P), each parameter already scaled by its layer's std."""
    return torch.cat([theta.unsqueeze(0), theta.unsqueeze(0) + noise])


def ienk_joint_update_(theta: torch.Tensor, noise: torch.Tensor, c: torch.Tensor, lr: float) -> torch.Tensor:
    """In place (2), joint: theta -= lr * sum_k noise_k c_k, c (K,) (every layer, one c)."""
    theta -= lr * (c.to(noise.dtype) @ noise)
    return theta


def perturbed_members(theta: torch.Tensor, noise: torch.Tensor, blocks) -> torch.Tensor:
    """``per_layer``: (1 + K L, P): theta, then theta + noise_k restricted to layer l, for
    l = 1..L, k = 1..K.

    noise: (K, P), each parameter already scaled by its layer's std."""
    K, P = noise.shape
    L = len(blocks)
    M = theta.unsqueeze(0).repeat(1 + K * L, 1)
    for l, (a, b, _) in enumerate(blocks):
        M[1 + l * K: 1 + (l + 1) * K, a:b] += noise[:, a:b]
    return M


def ienk_update_(theta: torch.Tensor, noise: torch.Tensor, c: torch.Tensor, blocks, lr: float) -> torch.Tensor:
    """In place (2), ``per_layer``: theta[l] -= lr * sum_k noise_k[l] c_{l,k}; c (L * K,) in
    perturbed_members' order."""
    K = noise.shape[0]
    for l, (a, b, _) in enumerate(blocks):
        theta[a:b] -= lr * (c[l * K: (l + 1) * K].to(noise.dtype) @ noise[:, a:b])
    return theta


class Perturb(str, Enum):
    joint = "joint"          # the thesis: K networks, each with every layer perturbed (K + 1 per sample)
    per_layer = "per_layer"  # K perturbations of one layer at a time (1 + K L networks per sample)


class IEnKOutput(str, Enum):
    softmax = "softmax"  # the thesis: class probabilities, cross-entropy gradient -y / (p + delta)
    logits = "logits"    # the raw outputs, Gaussian misfit gradient p - y (real-valued targets)


class IEnKMode(str, Enum):
    sample = "sample"  # the thesis: one update per training sample, in order
    batch = "batch"    # one update per mini-batch (coefficients summed over its samples)


@dataclass
class IEnKSimpleConfig(MethodConfig):
    """``optimizer=ienk_simple`` (configs/optimizer/ienk_simple.yaml)."""

    name: str = "ienk_simple"
    ensemble_size: int = 10          # K perturbations (of all layers jointly, or of each layer)
    lr: float = 0.001
    delta: float = 0.005
    mode: IEnKMode = IEnKMode.sample
    perturb: Perturb = Perturb.joint
    output: IEnKOutput = IEnKOutput.softmax

    positive = ("lr",)
    neutral = {"output": IEnKOutput.softmax}      # added later; the thesis's softmax reproduces the earlier runs
    regression = {"output": IEnKOutput.logits}    # real-valued targets: the raw outputs, Gaussian misfit

    def check(self, cfg) -> None:
        check_ensemble_size(self)
        check(self.delta >= 0, "optimizer.delta", self.delta, "a number >= 0")

    def cost(self, run: RunSize) -> Cost:
        """K perturbed networks forward and the update, counted like an ensemble of K
        (``base.ensemble_cost``); ``mode=sample`` is bound by its fixed cost per training sample,
        so its steps are the samples."""
        cost = ensemble_cost(self.ensemble_size, run)
        if self.mode == IEnKMode.sample:
            return Cost(cost.flops, run.batches * run.batch_size, "sample")
        return cost


class IEnKSimple(SingleNetworkMethod):
    """``optimizer=ienk_simple``: (1)-(2) per training sample (``mode=sample``, the thesis) or
    per mini-batch (``mode=batch``), all layers perturbed jointly (``perturb=joint``, the thesis)
    or one at a time (``per_layer``). ``ensemble_size`` is K. theta starts from the standard
    init (zero biases), not from the ensemble prior."""

    def __init__(self, opt: IEnKSimpleConfig, ctx: MethodContext):
        self.config = opt
        self.forward, self.generator = ctx.forward, ctx.generator
        self.K, self.lr, self.delta = opt.ensemble_size, opt.lr, opt.delta
        self.per_sample = opt.mode == IEnKMode.sample
        self.joint = opt.perturb == Perturb.joint
        self.gaussian = opt.output == IEnKOutput.logits
        self.noise: torch.Tensor | None = None   # the perturbations of the last ask()
        self.blocks = layer_blocks(ctx.model)
        self.theta = ctx.model.init(1, ctx.init, ctx.generator, ctx.device)[0]
        self.std = torch.empty_like(self.theta)
        for a, b, s in self.blocks:
            self.std[a:b] = s

    def ask(self) -> torch.Tensor:
        """The perturbed networks of one update: (1 + K, P) (``joint``) or (1 + K L, P) (``per_layer``),
        theta first, with fresh perturbations (each layer's Glorot std)."""
        self.noise = torch.randn(self.K, self.theta.shape[0], generator=self.generator, device=self.theta.device,
                                 dtype=self.theta.dtype).mul_(self.std)
        if self.joint:
            return joint_members(self.theta, self.noise)
        return perturbed_members(self.theta, self.noise, self.blocks)

    def _tell(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(1)-(2) from the raw outputs of the last :meth:`ask`'s networks on the samples of y (one,
        or a mini-batch); returns the summed loss of the unperturbed network before the update (a
        tensor: no device sync per sample): the cross-entropy, or 1/2 |p_0 - y|^2 for ``output=logits``."""
        p = out if self.gaussian else torch.softmax(out, -1)
        c = ienk_coefficients(p[1:], p[0], y, self.delta, self.gaussian)
        if self.joint:
            ienk_joint_update_(self.theta, self.noise, c, self.lr)
        else:
            ienk_update_(self.theta, self.noise, c, self.blocks, self.lr)
        if self.gaussian:
            return 0.5 * ((p[0] - y) ** 2).sum()
        return -(y * torch.log(p[0] + 1e-12)).sum()

    def tell(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        loss = self._tell(out, y)
        if not bool(torch.isfinite(self.theta).all()):
            raise DivergenceError("ienk_simple: non-finite parameters (diverged)")
        return {"train_loss": float(loss) / y.shape[0]}

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        if self.per_sample:
            loss = sum(self._tell(self.forward(self.ask(), x[s: s + 1]), y[s: s + 1]) for s in range(x.shape[0]))
        else:
            loss = self._tell(self.forward(self.ask(), x), y)
        if not bool(torch.isfinite(self.theta).all()):     # checked once per mini-batch
            raise DivergenceError("ienk_simple: non-finite parameters (diverged)")
        return {"train_loss": float(loss) / x.shape[0]}


register_method("ienk_simple", IEnKSimpleConfig, IEnKSimple)
