"""Networks as flat parameter vectors, with a batched forward over ensemble members.

Every model is a :class:`ModelSpec`: a plain ``nn.Module`` (the reference, used by backprop and
by the equivalence tests), the layout of its flat parameter vector (the ``nn.Module``'s
``parameters()`` order), the paper's initialisation, the evaluator, and ``forward_chunk(W, ctx)``
which evaluates a chunk of members ``W`` (Jc x P) on one batch in a few large kernels. The
default ``forward_chunk`` vmaps ``torch.func.functional_call``; models with a faster formulation
override it (``paper_cnn.py``: conv1 as one GEMM shared by all members; ``dense.py``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config.schema import name_of

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "logistic": torch.sigmoid,
    "relu": torch.relu,
    "tanh": torch.tanh,
}
ACTIVATIONS_INPLACE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "logistic": torch.sigmoid_,
    "relu": torch.relu_,
    "tanh": torch.tanh_,
}
ACTIVATION_MODULES = {"logistic": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


def glorot_std(shape) -> float:
    """Glorot-normal std of a linear (out, in) or conv (out, in, kh, kw) weight:
    sqrt(2 / (fan_in + fan_out)) with fan_in = in * kh * kw, fan_out = out * kh * kw."""
    fan_out, fan_in = shape[0], math.prod(shape[1:])
    rf = math.prod(shape[2:]) if len(shape) > 2 else 1
    return math.sqrt(2.0 / (fan_in + fan_out * rf))


class ModelSpec:
    """A network viewed as a function of a flat parameter vector theta (P,)."""

    name: str = "model"
    num_classes: int = 10

    def __init__(self) -> None:
        self.reference = self.module()
        self.shapes: "OrderedDict[str, torch.Size]" = OrderedDict(
            (n, p.shape) for n, p in self.reference.named_parameters())
        self.num_params = sum(math.prod(s) for s in self.shapes.values())

    # -- to be provided by subclasses ------------------------------------------------------
    def module(self) -> nn.Module:
        raise NotImplementedError

    def forward_flops(self) -> float:
        """Multiply-adds x 2 of one forward pass on one image (for the cost model)."""
        raise NotImplementedError

    # -- parameter layout ------------------------------------------------------------------
    def unflatten(self, theta: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Views of a flat vector (P,) or a chunk (Jc, P) as named parameters."""
        out, offset = OrderedDict(), 0
        lead = theta.shape[:-1]
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            out[name] = theta[..., offset: offset + n].reshape(*lead, *shape)
            offset += n
        return out

    def flatten(self, module: nn.Module) -> torch.Tensor:
        return torch.nn.utils.parameters_to_vector(module.parameters()).detach()

    def init(self, n: int, init_cfg, generator: torch.Generator, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, ensemble: bool = False) -> torch.Tensor:
        """n independent draws (n, P) of the initialisation: weights ~ N(0, sigma^2)
        (``init.scheme=normal``) or Glorot-normal (``init.scheme=glorot``); biases 0, or, with
        ``ensemble=True`` (the prior of the ensemble methods), N(0, s^2) with s from
        ``init.bias_sigma`` (:meth:`prior_stds`). Tensors with std 0 draw no random numbers."""
        out = torch.empty(n, self.num_params, device=device, dtype=dtype)
        offset = 0
        for shape, std in zip(self.shapes.values(), self.prior_stds(init_cfg, ensemble)):
            size = math.prod(shape)
            block = out[:, offset: offset + size]
            if std == 0.0:
                block.zero_()
            else:
                block.copy_(torch.randn(n, size, generator=generator, device=device, dtype=dtype) * std)
            offset += size
        return out

    def prior_stds(self, init_cfg, ensemble: bool = False) -> list[float]:
        """The init prior's std of each parameter tensor (in ``shapes`` order): weights
        N(0, sigma^2) (``init.scheme=normal``) or Glorot-normal (``glorot``). Biases: 0, or with
        ``ensemble=True`` ``init.bias_sigma`` (null: the std of the same layer's weight, e.g.
        ``net.fc1.bias`` takes that of ``net.fc1.weight``; a bias without a weight in its own
        layer takes that of the weight before it)."""
        scheme = name_of(init_cfg.scheme)
        bias_sigma = init_cfg.get("bias_sigma", None) if ensemble else 0.0
        weight_std: dict[str, float] = {}
        for name, shape in self.shapes.items():
            if not name.endswith("bias"):
                weight_std[name.rsplit(".", 1)[0]] = (float(init_cfg.sigma) if scheme == "normal"
                                                      else glorot_std(shape))
        out: list[float] = []
        last_weight = 0.0
        for name in self.shapes:
            prefix = name.rsplit(".", 1)[0]
            if not name.endswith("bias"):
                last_weight = weight_std[prefix]
                out.append(last_weight)
            elif bias_sigma is None:
                out.append(weight_std.get(prefix, last_weight))
            else:
                out.append(float(bias_sigma))
        return out

    def prior_std(self, init_cfg, device=None, dtype=torch.float32, ensemble: bool = False) -> torch.Tensor:
        """Per-parameter std (P,) of the init prior that :meth:`init` draws from (same ``ensemble``)."""
        return torch.cat([torch.full((math.prod(shape),), std, device=device, dtype=dtype)
                          for shape, std in zip(self.shapes.values(), self.prior_stds(init_cfg, ensemble))])

    # -- evaluation ------------------------------------------------------------------------
    def prepare(self, x: torch.Tensor) -> Any:
        """Per-batch work shared by all chunks of members (e.g. im2col of the images)."""
        return x

    def forward_chunk(self, W: torch.Tensor, ctx: Any) -> torch.Tensor:
        """Outputs (Jc, B, C) of the members W (Jc, P) on the batch prepared in ``ctx``."""
        from torch.func import functional_call, vmap

        x = ctx

        def one(theta):
            return functional_call(self.reference, self.unflatten(theta), (x,))

        return vmap(one)(W)

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of one network theta (P,) - the ensemble mean at evaluation time."""
        return self.forward_chunk(theta.unsqueeze(0), self.prepare(x))[0]

    def activation_bytes(self, batch: int) -> int:
        """Rough peak bytes of intermediates per member for ``batch`` images (chunk sizing)."""
        return 4 * batch * 4 * self.num_params // 10 + 4096

    @torch.no_grad()
    def evaluate(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 batch_size: int = 2000) -> tuple[float, float]:
        """(error in %, mean cross-entropy) of the network theta (P,) on images x and labels y
        (the test set, on theta's device), in slices of ``batch_size`` images."""
        wrong, loss = 0, 0.0
        for s in range(0, x.shape[0], batch_size):
            logits = self.forward(theta.float(), x[s: s + batch_size])
            wrong += int((logits.argmax(1) != y[s: s + batch_size]).sum())
            loss += float(F.cross_entropy(logits.float(), y[s: s + batch_size], reduction="sum"))
        return 100.0 * wrong / x.shape[0], loss / x.shape[0]
