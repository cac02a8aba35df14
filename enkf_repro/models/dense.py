"""Dense (fully connected) networks: the thesis MLP and the DNN 1-4 of Kovachki & Stuart's table.

``model=mlp`` is the 2019 thesis's network, 784 -> 128 (ReLU) -> 10 (softmax; the model returns
logits and the softmax is applied by the loss / the method). ``model=dnn1..dnn4`` are four dense
networks of increasing depth standing in for Kovachki & Stuart's DNN 1-4, whose exact widths
are unconfirmed; the widths live in ``configs/model/<name>.yaml`` as
``model.hidden`` (overridable) and are, by default:

    dnn1: 784 -> 10                       (no hidden layer: multinomial logistic regression)
    dnn2: 784 -> 128 -> 10                (one hidden layer, the thesis MLP's shape)
    dnn3: 784 -> 128 -> 128 -> 10
    dnn4: 784 -> 128 -> 128 -> 128 -> 10

Batched forward of a chunk of Jc members: every member sees the same images, so the first
layer of all members is one batched GEMM call with the images broadcast (stride 0) against the
members' weights read in place from the ensemble matrix: the (B x 784) @ (784 x Jc*H1) product
without first copying the Jc x H1 x 784 weight block into one matrix (measured on 2 CPU cores:
12 ms instead of 23 ms at Jc = 64, B = 64, H1 = 128; on a GPU the copy would cost as much memory
traffic as the GEMM itself). The later layers are one batched matrix product (bmm) each. No
Python loop over members.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn

from ..config.schema import name_of
from .base import ACTIVATION_MODULES, ACTIVATIONS, ModelSpec

INPUT = 28 * 28
CLASSES = 10


class DenseNet(nn.Module):
    """The plain ``nn.Module``: flatten, then Linear + activation per hidden layer, then Linear
    to the logits. Parameter order (the flat vector's layout): w1, b1, w2, b2, ..."""

    def __init__(self, hidden: Sequence[int] = (), activation: str = "relu"):
        super().__init__()
        widths = [INPUT, *[int(h) for h in hidden]]
        layers: dict[str, nn.Module] = {"flatten": nn.Flatten()}
        for k, (fin, fout) in enumerate(zip(widths[:-1], widths[1:]), 1):
            # named fcK / actK so that backprop instrumentation (act1..actK hooks) finds them
            layers[f"fc{k}"] = nn.Linear(fin, fout)
            layers[f"act{k}"] = ACTIVATION_MODULES[activation]()
        layers[f"fc{len(widths)}"] = nn.Linear(widths[-1], CLASSES)
        self.net = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DenseSpec(ModelSpec):
    """``model=mlp|dnn1..dnn4``: a :class:`DenseNet` as a function of its flat parameters."""

    def __init__(self, name: str, hidden: Sequence[int] = (), activation: str = "relu"):
        self.name = name
        self.hidden = [int(h) for h in hidden]
        self.activation = name_of(activation)
        self.act = ACTIVATIONS[self.activation]
        widths = [INPUT, *self.hidden, CLASSES]
        self.dims = list(zip(widths[:-1], widths[1:]))   # (fan_in, fan_out) per layer
        super().__init__()

    def module(self) -> nn.Module:
        return DenseNet(self.hidden, self.activation)

    def forward_flops(self) -> float:
        return 2.0 * sum(fin * fout for fin, fout in self.dims)

    def activation_bytes(self, batch: int) -> int:
        return 4 * batch * 2 * sum(fout for _, fout in self.dims) + 4096

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)

    def forward_chunk(self, W: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Logits (Jc, B, 10) of the members W (Jc, P) on the flattened images ctx (B, 784)."""
        x = ctx
        Jc = W.shape[0]
        last = len(self.dims) - 1
        offset = 0
        h = x
        for i, (fin, fout) in enumerate(self.dims):
            w = W[:, offset: offset + fout * fin].reshape(Jc, fout, fin)
            offset += fout * fin
            b = W[:, offset: offset + fout]
            offset += fout
            if i == 0:
                # shared input: one batched GEMM call, x broadcast (stride 0) against every
                # member's weights read in place: (B, fin) @ (Jc, fin, fout) -> (Jc, B, fout)
                h = torch.matmul(x, w.transpose(1, 2)).add_(b.unsqueeze(1))
            else:
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))   # (Jc, B, fout)
            if i < last:
                h = self.act(h)
        return h
