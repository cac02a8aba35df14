"""The paper's CNN (``model=paper_cnn``) and its batched ensemble forward."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config.schema import name_of
from .base import ACTIVATION_MODULES, ACTIVATIONS, ACTIVATIONS_INPLACE, ModelSpec


class PaperCNN(nn.Module):
    """The paper's CNN (docs/paper.md): conv(1->10, 5x5) act pool2, conv(10->20, 5x5) act
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
        self.activation = name_of(activation)
        self.pool_conv2 = bool(pool_conv2)
        self.act = ACTIVATIONS[self.activation]
        self.act_ = ACTIVATIONS_INPLACE[self.activation]
        super().__init__()
        self.n1 = 10 * 25
        self.n2 = 20 * 10 * 25
        self.flat = 20 * (16 if self.pool_conv2 else 64)

    def module(self) -> nn.Module:
        return PaperCNN(self.activation, self.pool_conv2)

    # -- the fused Triton kernels (kernels/paper_cnn_triton.py), the default on CUDA ------------
    def fused_available(self) -> bool:
        from .kernels import paper_cnn_triton

        return paper_cnn_triton.available()

    def fused_forward(self, U: torch.Tensor, x: torch.Tensor, precision: str, chunk: int) -> torch.Tensor:
        """Logits (J, B, 10) of the fp32 members U by the fused kernels, ``chunk`` members per call."""
        from .kernels import paper_cnn_triton

        return paper_cnn_triton.forward(U, x, self.activation, self.pool_conv2, precision, chunk)

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
        grad = torch.is_grad_enabled()
        act = self.act if grad else self.act_   # autograd keeps amax's and conv2d's outputs: no in-place
        if torch.is_autocast_enabled() or grad:   # no out= buffers here
            h = torch.stack([q @ w1t for q in quads]).amax(0)
        else:
            # conv1 + 2x2 max-pool: conv1 at each pooling position is one GEMM shared by all
            # members, (B*144 x 25) @ (25 x Jc*10); the pool is the running maximum
            h, tmp = self._buffers(B * 144, Jc * 10, W)
            torch.mm(quads[0], w1t, out=h)
            for q in quads[1:]:
                torch.mm(q, w1t, out=tmp)
                torch.maximum(h, tmp, out=h)
        h = act(h).view(B, 12, 12, Jc * 10).permute(0, 3, 1, 2)       # NCHW view, channels-last strides
        o = F.conv2d(h, w2, groups=Jc)                                  # (B, Jc*20, 8, 8)
        if self.pool_conv2:
            o = F.max_pool2d(o, 2)
        o = act(o).contiguous().view(B, Jc, self.flat)                # per member in (c, h, w) order
        return torch.bmm(o.transpose(0, 1), w3.transpose(1, 2))        # (Jc, B, 10)
