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
CUDA_BUDGET_BYTES = 2 << 30    # upper bound on the intermediates of a chunk on CUDA


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


def fused_available(model: ModelSpec) -> bool:
    """Whether ``model`` has fused kernels that can run here (Triton importable; CUDA or the
    interpreter)."""
    return hasattr(model, "fused_forward") and model.fused_available()


def resolve_kernel(kernel: str, model: ModelSpec, device: torch.device) -> str:
    """``ensemble.kernel`` -> "triton" or "torch" (auto: the fused kernels on CUDA where they exist)."""
    kernel = name_of(kernel)
    if kernel == "torch":
        return "torch"
    if kernel == "triton":
        if not fused_available(model):
            raise ConfigError("ensemble.kernel", "triton", f"auto or torch: no fused kernels for model "
                              f"{model.name} on {device.type} here (they need Triton and CUDA)")
        return "triton"
    return "triton" if device.type == "cuda" and fused_available(model) else "torch"


# Chunk sizes timed on CUDA, per (device, model, batch, precision, kernel): members per call.
_PROBED: dict[tuple, int] = {}
PROBE_SIZES = (64, 128, 256, 512, 1024, 2048, 4096)


def probe_chunk(run_chunk, candidates, timer=None) -> int:
    """The candidate chunk size with the least time per member: ``run_chunk(n)`` evaluates n
    members once; each candidate is run once to warm up, then timed twice (best of two)."""
    import time

    def default_timer(n):
        run_chunk(n)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run_chunk(n)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    timer = timer or default_timer
    best, best_rate = candidates[0], float("inf")
    for n in candidates:
        t = min(timer(n), timer(n))
        if t / n < best_rate:
            best, best_rate = n, t / n
    return best


class EnsembleForward:
    """``G = forward(U, x)``: U (J, P), x (B, ...) -> outputs (J, B, C) in fp32 (fp64 when U is
    fp64, for reference computations). Members are evaluated a chunk at a time; with
    ``kernel="triton"`` (the default on CUDA for models with fused kernels) by the fused
    kernels, else by the model's PyTorch ``forward_chunk``."""

    def __init__(self, model: ModelSpec, chunk_size: int | None = None, precision: str = "fp32",
                 compile: bool = False, device: torch.device | str = "cpu", kernel: str = "torch"):
        self.model = model
        self.chunk_size = chunk_size
        self.precision = name_of(precision)
        self.device = torch.device(device)
        self.kernel = resolve_kernel(kernel, model, self.device)
        self._fn = model.forward_chunk
        if compile:
            self._fn = torch.compile(model.forward_chunk, dynamic=False)

    @classmethod
    def from_config(cls, model: ModelSpec, ecfg, device) -> "EnsembleForward":
        return cls(model, ecfg.chunk_size, ecfg.precision, ecfg.compile, device, ecfg.get("kernel", "auto"))

    def chunk_for(self, batch: int, J: int | None = None, U: torch.Tensor | None = None,
                  x: torch.Tensor | None = None) -> int:
        """Members per call: ``ensemble.chunk_size``, else 16 on CPU, else on CUDA the fastest of
        :data:`PROBE_SIZES` within the memory budget (timed once on the first batch, then cached)."""
        if self.chunk_size:
            return self.chunk_size
        if self.device.type != "cuda":
            return CPU_CHUNK
        cap = auto_chunk_size(self.model, batch, self.device)
        key = (str(self.device), self.model.name, batch, self.precision, self.kernel)
        if key not in _PROBED:
            if U is None or x is None:
                return cap
            sizes = [n for n in PROBE_SIZES if n <= min(cap, U.shape[0])] or [min(cap, U.shape[0])]
            _PROBED[key] = probe_chunk(lambda n: self._evaluate(U[:n], x, n), sizes)
        return _PROBED[key]

    @torch.no_grad()
    def __call__(self, U: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._evaluate(U, x, self.chunk_for(x.shape[0], U.shape[0], U, x))

    def _evaluate(self, U: torch.Tensor, x: torch.Tensor, cs: int) -> torch.Tensor:
        J = U.shape[0]
        if self.kernel == "triton" and U.dtype == torch.float32:
            return self.model.fused_forward(U, x, self.precision, cs)
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
