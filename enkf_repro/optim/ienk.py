"""The 2019 master thesis's simplified iterative EnKF (``optimizer=ienk_simple``).

After the thesis (docs/paper.md; its text itself was not available): one network theta
(Glorot-normal weights, zero biases for ``model=mlp``). For every training sample (x, y), in
order, and for every layer l (a weight and its bias), K fresh perturbations dW_k of that layer
alone are drawn with the layer's Glorot std sqrt(2 / (fan_in + fan_out)) (the same std for the
bias: our choice, so that biases learn too). With p_0 the softmax output of the unperturbed
network and p_k that of the network with layer l perturbed by dW_k,

    c_k = < p_k - p_0 , -y / (p_0 + delta) >,           delta = 0.005                      (1)
    W_l <- W_l - lr * sum_k dW_k c_k,                    lr = 0.001, no 1/K, no adaptive step  (2)

All layers' perturbations of one sample are evaluated at the same theta in one batched forward
of 1 + K * L networks (L layers), then every layer is updated. (2) is a Monte-Carlo estimate of
K sigma_l^2 times the gradient of -log-likelihood-like loss <y, log(p + delta)> in W_l.

``optimizer.mode=batch`` (an option, not the thesis): one update per mini-batch with the c_k of
(1) summed over its samples (with the same lr, roughly the first-order effect of B per-sample
steps).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

import torch

from ..config.schema import name_of
from ..errors import DivergenceError
from ..models.base import ModelSpec, glorot_std
from .base import SingleNetworkMethod, register_method


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


def ienk_coefficients(p_pert: torch.Tensor, p0: torch.Tensor, Y: torch.Tensor, delta: float = 0.005) -> torch.Tensor:
    """c_k of (1), summed over the samples: p_pert (M, B, C), p0 (B, C), Y (B, C) -> (M,)."""
    w = -Y.to(p0.dtype) / (p0 + delta)
    return ((p_pert - p0.unsqueeze(0)) * w.unsqueeze(0)).sum((1, 2))


def perturbed_members(theta: torch.Tensor, noise: torch.Tensor, blocks) -> torch.Tensor:
    """(1 + K L, P): theta, then theta + noise_k restricted to layer l, for l = 1..L, k = 1..K.

    noise: (K, P), each parameter already scaled by its layer's std."""
    K, P = noise.shape
    L = len(blocks)
    M = theta.unsqueeze(0).repeat(1 + K * L, 1)
    for l, (a, b, _) in enumerate(blocks):
        M[1 + l * K: 1 + (l + 1) * K, a:b] += noise[:, a:b]
    return M


def ienk_update_(theta: torch.Tensor, noise: torch.Tensor, c: torch.Tensor, blocks, lr: float) -> torch.Tensor:
    """In place (2): theta[l] -= lr * sum_k noise_k[l] c_{l,k}; c (L * K,) in perturbed_members' order."""
    K = noise.shape[0]
    for l, (a, b, _) in enumerate(blocks):
        theta[a:b] -= lr * (c[l * K: (l + 1) * K].to(noise.dtype) @ noise[:, a:b])
    return theta


class IEnKMode(str, Enum):
    sample = "sample"  # the thesis: one update per training sample, in order
    batch = "batch"    # one update per mini-batch (coefficients summed over its samples)


@dataclass
class IEnKSimpleConfig:
    """``optimizer=ienk_simple`` (configs/optimizer/ienk_simple.yaml)."""

    name: str = "ienk_simple"
    ensemble_size: int = 10          # K perturbations per layer
    lr: float = 0.001
    delta: float = 0.005
    mode: IEnKMode = IEnKMode.sample


class IEnKSimple(SingleNetworkMethod):
    """``optimizer=ienk_simple``: (1)-(2) per training sample (``mode=sample``, the thesis) or
    per mini-batch (``mode=batch``). ``ensemble_size`` is K, the perturbations per layer."""

    def __init__(self, cfg, model: ModelSpec, forward, generator: torch.Generator, device: torch.device):
        opt = cfg.optimizer
        self.forward, self.generator = forward, generator
        self.K, self.lr, self.delta = int(opt.ensemble_size), float(opt.lr), float(opt.delta)
        self.per_sample = name_of(opt.mode) == "sample"
        self.blocks = layer_blocks(model)
        self.theta = model.init(1, cfg.init, generator, device)[0]
        self.std = torch.empty_like(self.theta)
        for a, b, s in self.blocks:
            self.std[a:b] = s

    def _update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(1)-(2) on the samples x (one, or a mini-batch); returns the summed cross-entropy of the
        unperturbed network before the update (a tensor: no device sync per sample)."""
        noise = torch.randn(self.K, self.theta.shape[0], generator=self.generator, device=self.theta.device,
                            dtype=self.theta.dtype).mul_(self.std)
        p = torch.softmax(self.forward(perturbed_members(self.theta, noise, self.blocks), x), -1)
        c = ienk_coefficients(p[1:], p[0], y, self.delta)
        ienk_update_(self.theta, noise, c, self.blocks, self.lr)
        return -(y * torch.log(p[0] + 1e-12)).sum()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        if self.per_sample:
            loss = sum(self._update(x[s: s + 1], y[s: s + 1]) for s in range(x.shape[0]))
        else:
            loss = self._update(x, y)
        if not bool(torch.isfinite(self.theta).all()):     # checked once per mini-batch
            raise DivergenceError("ienk_simple: non-finite parameters (diverged)")
        return {"train_loss": float(loss) / x.shape[0]}


register_method("ienk_simple", IEnKSimpleConfig, IEnKSimple)
