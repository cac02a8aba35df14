"""Networks as flat parameter vectors, with a batched forward over ensemble members.

Every model is a :class:`ModelSpec`: a plain ``nn.Module`` (the reference, used by backprop and
by the equivalence tests), the layout of its flat parameter vector (the ``nn.Module``'s
``parameters()`` order), the paper's initialisation, and ``forward_chunk(W, ctx)`` which
evaluates a chunk of members ``W`` (Jc x P) on one batch in a few large kernels. The default
``forward_chunk`` vmaps ``torch.func.functional_call``; models with a faster formulation
override it (``PaperCNN``: conv1 as one GEMM shared by all members, grouped conv2).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

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


def _name(value: Any) -> str:
    return str(getattr(value, "value", value))


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
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """n independent draws (n, P) of the paper's initialisation: weights ~ N(0, sigma^2),
        biases 0 (``init.scheme=normal``), or Glorot-normal weights (``init.scheme=glorot``)."""
        scheme = _name(init_cfg.scheme)
        out = torch.empty(n, self.num_params, device=device, dtype=dtype)
        offset = 0
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            block = out[:, offset: offset + size]
            if name.endswith("bias"):
                block.zero_()
            else:
                if scheme == "normal":
                    std = float(init_cfg.sigma)
                else:  # glorot normal: fan_in / fan_out of a linear or conv weight
                    fan_out, fan_in = shape[0], math.prod(shape[1:])
                    rf = math.prod(shape[2:]) if len(shape) > 2 else 1
                    std = math.sqrt(2.0 / (fan_in + fan_out * rf))
                block.copy_(torch.randn(n, size, generator=generator, device=device, dtype=dtype) * std)
            offset += size
        return out

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


class PaperCNN(nn.Module):
    """The paper's CNN (reference.md): conv(1->10, 5x5) act pool2, conv(10->20, 5x5) act
    [pool2 if ``pool_conv2``], fc(-> 10); no biases; raw logits out."""

    def __init__(self, activation: str = "logistic", pool_conv2: bool = False):
        super().__init__()
        self.pool_conv2 = pool_conv2
        self.conv1 = nn.Conv2d(1, 10, 5, bias=False)
        self.act1 = ACTIVATION_MODULES[activation]()
        self.conv2 = nn.Conv2d(10, 20, 5, bias=False)
        self.act2 = ACTIVATION_MODULES[activation]()
        self.fc = nn.Linear(20 * (4 * 4 if pool_conv2 else 8 * 8), 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(self.act1(self.conv1(x)), 2)   # layer 1 = act1 output (before pooling)
        h = self.act2(self.conv2(h))                    # layer 2 = act2 output
        if self.pool_conv2:
            h = F.max_pool2d(h, 2)
        return self.fc(h.flatten(1))                    # layer 3 = logits (softmax for backprop)


class PaperCNNSpec(ModelSpec):
    """``model=paper_cnn``: 18,050 parameters (8,450 with ``pool_conv2``).

    Fast path per chunk of Jc members, exact for every monotone activation:
    conv1 is linear in the weights and all members see the same images, so for each of the
    four positions of a 2x2 pooling window it is one GEMM (B*144 x 25) @ (25 x Jc*10) in
    channels-last layout, and max-pooling is the running maximum of the four; the activation
    is applied after pooling (act(max) = max(act) for non-decreasing act: four times fewer
    evaluations); conv2 is a grouped convolution (groups = Jc) on channels-last input; fc is
    one bmm.
    """

    name = "paper_cnn"

    def __init__(self, activation: str = "logistic", pool_conv2: bool = False):
        self.activation = _name(activation)
        self.pool_conv2 = bool(pool_conv2)
        self.act = ACTIVATIONS[self.activation]
        self.act_ = ACTIVATIONS_INPLACE[self.activation]
        super().__init__()
        self.n1 = 10 * 25
        self.n2 = 20 * 10 * 25
        self.flat = 20 * (16 if self.pool_conv2 else 64)

    def module(self) -> nn.Module:
        return PaperCNN(self.activation, self.pool_conv2)

    def forward_flops(self) -> float:
        conv1 = 24 * 24 * 10 * 25
        conv2 = 8 * 8 * 20 * 250
        return 2.0 * (conv1 + conv2 + self.flat * 10)

    def activation_bytes(self, batch: int) -> int:
        # conv1 output (pre-pool) + pooled + conv2 output, float32, per member
        return 4 * batch * (24 * 24 * 10 + 12 * 12 * 10 + 8 * 8 * 20 * 2)

    def prepare(self, x: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        B = x.shape[0]
        # im2col once per batch, split by the four positions of each 2x2 pooling window:
        # quadrant (dy, dx) holds the 5x5 patches at output pixels (2i+dy, 2j+dx), rows (b, i, j)
        p = F.unfold(x, 5).transpose(1, 2).reshape(B, 12, 2, 12, 2, 25)
        quads = [p[:, :, dy, :, dx, :].reshape(B * 144, 25).contiguous() for dy in (0, 1) for dx in (0, 1)]
        return quads, B

    def _buffers(self, rows: int, cols: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two reused (rows, cols) work buffers: fresh multi-MB tensors per chunk page-fault."""
        key = (rows, cols, like.dtype, like.device)
        if getattr(self, "_buf_key", None) != key:
            self._buf = (like.new_empty(rows, cols), like.new_empty(rows, cols))
            self._buf_key = key
        return self._buf

    def forward_chunk(self, W: torch.Tensor, ctx: tuple[list[torch.Tensor], int]) -> torch.Tensor:
        quads, B = ctx
        Jc = W.shape[0]
        w1t = W[:, : self.n1].reshape(Jc * 10, 25).t()
        w2 = W[:, self.n1: self.n1 + self.n2].reshape(Jc * 20, 10, 5, 5)
        w3 = W[:, self.n1 + self.n2:].reshape(Jc, 10, self.flat)
        if torch.is_autocast_enabled() or torch.is_grad_enabled():   # no out= buffers here
            h = torch.stack([q @ w1t for q in quads]).amax(0)
        else:
            # conv1 + 2x2 max-pool: conv1 at each pooling position is one GEMM shared by all
            # members, (B*144 x 25) @ (25 x Jc*10); the pool is the running maximum
            h, tmp = self._buffers(B * 144, Jc * 10, W)
            torch.mm(quads[0], w1t, out=h)
            for q in quads[1:]:
                torch.mm(q, w1t, out=tmp)
                torch.maximum(h, tmp, out=h)
        h = self.act_(h).view(B, 12, 12, Jc * 10).permute(0, 3, 1, 2)  # NCHW view, channels-last strides
        o = F.conv2d(h, w2, groups=Jc)                                  # (B, Jc*20, 8, 8)
        if self.pool_conv2:
            o = F.max_pool2d(o, 2)
        o = self.act_(o).contiguous().view(B, Jc, self.flat)            # per member in (c, h, w) order
        return torch.bmm(o.transpose(0, 1), w3.transpose(1, 2))        # (Jc, B, 10)


def _dense(name: str) -> Callable[..., ModelSpec]:
    """Builder of a dense model (dense.py; widths from ``model.hidden``), imported lazily."""
    def build(mcfg) -> ModelSpec:
        from .dense import DenseSpec

        return DenseSpec(name, mcfg.hidden, mcfg.activation)

    return build


MODELS: dict[str, Callable[..., ModelSpec]] = {
    "paper_cnn": lambda mcfg: PaperCNNSpec(mcfg.activation, mcfg.pool_conv2),
    "mlp": _dense("mlp"),    # the 2019 thesis: 784-128-10
    "dnn1": _dense("dnn1"),  # Kovachki & Stuart DNN 1-4 (widths in configs/model/dnn*.yaml)
    "dnn2": _dense("dnn2"),
    "dnn3": _dense("dnn3"),
    "dnn4": _dense("dnn4"),
}


def build_model(mcfg) -> ModelSpec:
    """The ModelSpec for ``cfg.model``."""
    name = _name(mcfg.name)
    if name not in MODELS:
        from .errors import ConfigError

        raise ConfigError("model", name, f"one of {sorted(MODELS)}")
    return MODELS[name](mcfg)
