"""The ensemble engine: outputs G(u_j) of all J members on one batch.

Members are evaluated a chunk at a time (``ensemble.chunk_size`` members per batched call), so
peak memory is the ensemble matrix plus one chunk's intermediates, whatever J is. The forward
may run in fp32, tf32 or bf16 (``ensemble.precision``); outputs are always returned in fp32.
"""

from __future__ import annotations

import contextlib

import torch

from ..config.schema import name_of
from ..errors import ConfigError
from .base import ModelSpec

CPU_CHUNK = 16                 # members per call on CPU: a chunk's intermediates stay in cache
CUDA_BUDGET_BYTES = 2 << 30    # intermediates per chunk on CUDA


def resolve_device(device) -> torch.device:
    name = name_of(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda", "auto or cpu: no CUDA device is visible to torch here")
    return torch.device(name)


def auto_chunk_size(model: ModelSpec, batch: int, device: torch.device) -> int:
    if device.type == "cuda":
        return max(1, CUDA_BUDGET_BYTES // max(1, model.activation_bytes(batch)))
    return CPU_CHUNK


@contextlib.contextmanager
def precision_scope(precision: str, device: torch.device):
    """fp32: exact fp32 matmuls and convolutions; tf32: TensorFloat-32 allowed on CUDA;
    bf16: autocast to bfloat16."""
    precision = name_of(precision)
    if device.type != "cuda":
        if precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yield
        else:
            yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        if precision == "bf16":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class EnsembleForward:
    """``G = forward(U, x)``: U (J, P), x (B, ...) -> outputs (J, B, C) in fp32 (fp64 when U is
    fp64, for reference computations)."""

    def __init__(self, model: ModelSpec, chunk_size: int | None = None, precision: str = "fp32",
                 compile: bool = False, device: torch.device | str = "cpu"):
        self.model = model
        self.chunk_size = chunk_size
        self.precision = name_of(precision)
        self.device = torch.device(device)
        self._fn = model.forward_chunk
        if compile:
            self._fn = torch.compile(model.forward_chunk, dynamic=False)

    @classmethod
    def from_config(cls, model: ModelSpec, ecfg, device) -> "EnsembleForward":
        return cls(model, ecfg.chunk_size, ecfg.precision, ecfg.compile, device)

    def chunk_for(self, batch: int) -> int:
        return self.chunk_size or auto_chunk_size(self.model, batch, self.device)

    @torch.no_grad()
    def __call__(self, U: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        J = U.shape[0]
        B = x.shape[0]
        cs = self.chunk_for(B)
        dtype = torch.float64 if U.dtype == torch.float64 else torch.float32
        W = U.to(dtype)
        with precision_scope(self.precision, self.device):
            ctx = self.model.prepare(x.to(dtype))
            first = self._fn(W[: min(cs, J)], ctx)
            out = torch.empty((J,) + first.shape[1:], dtype=dtype, device=U.device)
            out[: first.shape[0]] = first
            for s in range(cs, J, cs):
                out[s: s + cs] = self._fn(W[s: s + cs], ctx)
        return out
