"""Forward maps beyond a classifier's logits: a network followed by an observation operator, and a
parameter prior with no network at all (the user evaluates the forward map: ask / tell).

* :class:`ObservedSpec`: G(theta, x) = observe(network(theta, x)); ``observe`` maps the network's
  outputs (..., B, C) to the observables (..., B, D) the data are compared with (a sub-set of the
  outputs, a sum, a nonlinearity). It is called on a chunk of members' outputs (Jc, B, C) in one
  go, so it must act on the last axis (``lambda z: z[..., :1]``, ``torch.tanh``). The batched,
  chunked forward, the evaluation and the init prior are the network's.
* :class:`PriorSpec`: a Gaussian prior N(m, C) over P parameters (C diagonal or full): the
  ensemble methods draw their initial ensemble from it (``ensemble=True``; the single-network
  methods start from m), and it has no forward.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections import OrderedDict
from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import ConfigError
from .base import ModelSpec


def function_fingerprint(fn: Callable) -> str:
    """``<name>-<12 hex digits>``: a hash of a function's qualified name and source (or repr when it
    has none): the part of a run's identity that an observation operator is."""
    name = getattr(fn, "__qualname__", type(fn).__name__)
    try:
        text = inspect.getsource(fn)
    except (OSError, TypeError):
        text = repr(fn)
    return f"{name.replace('<', '').replace('>', '')}-{hashlib.sha1((name + text).encode()).hexdigest()[:12]}"


class ObservedModule(nn.Module):
    """``observe(net(x))`` as a module (the network a backprop method trains)."""

    def __init__(self, net: nn.Module, observe: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.net = net
        self.observe = observe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.observe(self.net(x).unsqueeze(0))[0]


class ObservedSpec(ModelSpec):
    """A network's ModelSpec followed by ``observe`` (module docstring)."""

    def __init__(self, base: ModelSpec, observe: Callable[[torch.Tensor], torch.Tensor]):
        if not callable(observe):
            raise ConfigError("observe", type(observe).__name__, "a function of the outputs (J, B, C) -> (J, B, D)")
        self.base, self.observe = base, observe
        self.name = base.name
        self.reference = base.reference
        self.shapes = base.shapes
        self.num_params = base.num_params
        self.num_classes = base.num_classes

    def module(self) -> nn.Module:
        return ObservedModule(self.base.module(), self.observe)

    def forward_flops(self) -> float:
        return self.base.forward_flops()

    def init(self, *args, **kwargs) -> torch.Tensor:
        return self.base.init(*args, **kwargs)

    def prior_stds(self, *args, **kwargs) -> list[float]:
        return self.base.prior_stds(*args, **kwargs)

    def prepare(self, x: torch.Tensor) -> Any:
        return self.base.prepare(x)

    def forward_chunk(self, W: torch.Tensor, ctx: Any) -> torch.Tensor:
        out = self.observe(self.base.forward_chunk(W, ctx))
        if not isinstance(out, torch.Tensor) or out.dim() != 3 or out.shape[0] != W.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError.line(f"observe: returned {got} for the outputs of {W.shape[0]} members; expected "
                                   f"({W.shape[0]}, B, D), acting on the last axis")
        return out

    def activation_bytes(self, batch: int) -> int:
        return self.base.activation_bytes(batch)


class PriorSpec(ModelSpec):
    """A Gaussian prior N(mean, C) over P parameters, C = diag(std^2) or a full P x P matrix (module
    docstring). Ensembles are drawn in the mean's floating dtype (float64 stays float64)."""

    name = "prior"

    def __init__(self, mean: Any, std: Any = None, covariance: Any = None):
        m = torch.as_tensor(mean).detach()
        if not m.is_floating_point():
            m = m.to(torch.float32)
        if m.dim() != 1 or m.numel() == 0:
            raise ConfigError("prior", f"mean of shape {tuple(m.shape)}", "a mean vector (P,)")
        P = m.numel()
        self.mean, self.dtype = m, m.dtype
        self.shapes = OrderedDict([("u", torch.Size([P]))])
        self.num_params = P
        self.reference = None
        self.L = None
        if covariance is not None:
            C = torch.as_tensor(covariance, dtype=torch.float64)
            if C.shape != (P, P):
                raise ConfigError("prior", f"covariance of shape {tuple(C.shape)}", f"a {P} x {P} matrix")
            L, info = torch.linalg.cholesky_ex(C)
            if int(info) > 0:
                raise ConfigError.line("prior: the covariance matrix is not positive definite")
            self.L = L
            self.std = C.diagonal().sqrt().to(self.dtype)
        else:
            s = torch.as_tensor(1.0 if std is None else std, dtype=self.dtype)
            self.std = s.expand(P).clone() if s.numel() == 1 else s.reshape(-1)
            if self.std.numel() != P or not bool((self.std > 0).all()):
                raise ConfigError("prior", "std", f"one positive std or {P} of them")

    def module(self) -> nn.Module:
        raise ConfigError.line("a parameter prior has no network: evaluate the forward map yourself (ask / tell)")

    def forward_flops(self) -> float:
        return 0.0

    def init(self, n: int, init_cfg=None, generator: torch.Generator | None = None, device="cpu",
             dtype: torch.dtype | None = None, ensemble: bool = False) -> torch.Tensor:
        """n draws (n, P) from the prior (``ensemble=True``), else n copies of its mean."""
        mean = self.mean.to(device=device, dtype=self.dtype)
        if not ensemble:
            return mean.expand(n, -1).clone()
        z = torch.randn(n, self.num_params, generator=generator, device=device, dtype=self.dtype)
        if self.L is None:
            return mean + z * self.std.to(device)
        return mean + z @ self.L.to(device=device, dtype=self.dtype).T

    def prior_stds(self, init_cfg=None, ensemble: bool = False) -> list[float]:
        return self.std.tolist()

    def prior_std(self, init_cfg=None, device=None, dtype=torch.float32, ensemble: bool = False) -> torch.Tensor:
        return self.std.to(device=device, dtype=self.dtype)

    def forward_chunk(self, W: torch.Tensor, ctx: Any) -> torch.Tensor:
        raise ConfigError.line("a parameter prior has no forward: evaluate the forward map on ask() yourself "
                               "and hand the outputs to tell()")

    def activation_bytes(self, batch: int) -> int:
        return 8 * math.prod(self.shapes["u"])
