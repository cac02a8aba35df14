"""The paper's CNN for a chunk of ensemble members in two fused Triton kernels.

Network (per member, shared batch x of B images 1x28x28, no biases)::

    h      = act(maxpool2x2(conv1(x)))      conv1 5x5 valid 1->10:  28 -> 24, pool -> 12
    o      = act(conv2(h))                  conv2 5x5 valid 10->20: 12 -> 8
    o      = maxpool2x2(o)                  only with pool_conv2:    8 -> 4
    logits = o.flatten(1) @ fc.weight.T     flatten order (c, h, w): F = 1280 (320 pooled)

act is logistic, relu or tanh. All three are non-decreasing, so act(max(.)) = max(act(.)): the
activation is applied after each max-pool, on four times fewer values.

Parameter layout of one member (a row of the ensemble matrix U, P = 250 + 5000 + 10 F values):
``conv1.weight (10,1,5,5) | conv2.weight (20,10,5,5) | fc.weight (10,F)``, each row-major,
P = 18,050 (8,450 with pool_conv2). Rows of ``W`` may be any row-slice view of U (row stride
``W.stride(0)``, unit column stride).

Kernel A: conv1 + 2x2 max-pool + activation, all members at once
------------------------------------------------------------------
All members see the same images, so conv1 of a chunk of Jc members is one implicit GEMM

    rows    m = b*144 + 12*i + k     (image b, pooled pixel (i, k) of the 12x12 grid), M = B*144
    columns n = member*10 + c        (conv1 output channel c of each member),         N = Jc*10
    depth   t = 5*u + v              (tap (u, v) of the 5x5 kernel), K = 25 padded to 32

computed four times, once per pixel (2i+dy, 2k+dx) of each 2x2 pooling window, into four
accumulators that share each weight tile (K in steps of BLOCK_K); the epilogue takes their
maximum (the pool) and applies the activation. The patches are gathered straight from x (no
im2col buffer: a patch is x at ``b*784 + (2i+dy+u)*28 + (2k+dx+v)``, and the four pooling
positions are the constant shifts 0, 1, 28, 29). Grid:
``(cdiv(M, BLOCK_M), cdiv(N, BLOCK_N))``; a BLOCK_N tile spans several members, so each patch
tile loaded serves BLOCK_N/10 members.

Output ``h``: per member channels-last, ``(Jc, B, 12, 12, 10)`` contiguous (no channel padding,
so no byte is wasted in memory), fp32, or bf16 when ``precision="bf16"``.

Kernel B: conv2 + activation [+ 2x2 max-pool] + fc, one member and IMGS images per program
-------------------------------------------------------------------------------------------
conv2 is an implicit GEMM per member. The reduction index runs over (kh, kw, c):

    kk = 50*kh + 10*kw + c,   K = 250 padded to 256 (2 % waste, against 28 % for 5 taps of 64)

because h is channels-last, the (kw, c) part of one kh is 50 consecutive values of h, so
``h[oh+kh, ow+kw, c] = h[oh, ow, 0] + (120*kh + (kk mod 50))``: the address of an im2col element
is a row term plus a column term and the loads need no index tables. Rows are the 64 output
pixels of each image, split into the four pixels (2i+dy, 2k+dx) of the 4x4 grid of 2x2 windows;
each quadrant has its own (IMGS*16 x 32) accumulator (20 output channels padded to 32), and a
K-block of BLOCK_K does four ``tl.dot``\\ s with one shared weight tile. With pool_conv2 the
epilogue takes the max of the four accumulators, then the activation; without it each quadrant
is activated on its own.

fc is fused: the (IMGS, 16 or 64 positions, 32 channels) activated output of conv2 never goes
to memory. For each of the 10 classes, the program multiplies it elementwise by the class's row
of fc.weight (gathered into the same (position, channel) order, zero on the padded channels)
and sums over positions and channels. fc is not a plain matrix product of the register tile
(it contracts positions and channels at once), so it runs on the CUDA cores; at 20,480 FMA per
image (5,120 pooled) against 524,288 tensor-core MACs of conv2, this is cheaper than writing
conv2's output (5,120 bytes per member-image in fp32) and reading it back for a bmm. Grid:
``Jc * cdiv(B, IMGS)`` programs, member-major, so consecutive programs share one member's
weights (72 kB) in L1/L2, and last member first: kernel A writes h roughly in member order, so
what it wrote last (most likely still in L2) is read first.

Cost per member-image (MAC = multiply-add; the network itself needs 476,800 MAC = 0.95 MFLOP):

    ============  ===========  =================  =========================================
    stage         network MAC  kernel MAC         bytes to memory (fp32; bf16 halves h)
    ============  ===========  =================  =========================================
    conv1+pool    144,000      184,320 (K 25->32) h write 5,760; x and conv1.weight: cached
    conv2         320,000      524,288 (tensor)   h read 5,760 (from L2 when the chunk's h
                                                  fits in it); conv2.weight 20,000 / B
    fc            12,800       20,480 (CUDA core) fc.weight 51,200 / B; logits 40
    ============  ===========  =================  =========================================

At J = 5000 and B = 64 (320,000 member-images) that is 0.45 TFLOP of tensor-core work and
3.7 GB of h traffic in fp32 (1.8 GB in bf16) if h goes through HBM; sizing the chunk so that
its h fits in L2 (:func:`recommended_chunk`) turns the read half into L2 hits.

Precision (``precision``): ``"fp32"`` IEEE fp32 products (``input_precision="ieee"``: on the
CUDA cores, so 0.45 TFLOP at J = 5000 takes at least ~7 ms at an H200's 67 TFLOP/s),
``"tf32"`` TensorFloat-32 tensor cores, ``"bf16"`` operands rounded to bfloat16 (h stored in
bf16), ``"tf32x3"`` each product as three tf32 products (about fp32 accuracy, on the tensor
cores: the candidate for fp32 runs if IEEE is too slow). Accumulation is always fp32 and
outputs are always fp32; the activations and fc run in fp32 in every mode.

Memory and chunking: a chunk of Jc members needs h (Jc*B*1440 values) besides its output, so
the caller evaluates the ensemble a chunk at a time (:func:`forward` does it, with
:func:`recommended_chunk` members per chunk unless told otherwise).

Kernels are built on first use, once per mode: compiled for the GPU, or for Triton's CPU
interpreter when ``TRITON_INTERPRET=1`` is set at that time (both can coexist in one process).
The interpreter's ``tl.dot`` mishandles bfloat16 operands and its fp32 -> bf16 cast truncates,
so in interpreter mode the bf16 path rounds the operands to bf16 (to nearest even, as the GPU
does) and multiplies them as fp32, which gives the same products (a product of two bf16 values
is exact in fp32) with fp32 accumulation. The interpreter computes tf32 and tf32x3 as fp32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace

import torch

ACTIVATIONS = ("logistic", "relu", "tanh")
PRECISIONS = ("fp32", "tf32", "bf16", "tf32x3")

N_CONV1 = 10 * 1 * 5 * 5        # conv1.weight values per member
N_CONV2 = 20 * 10 * 5 * 5       # conv2.weight values per member
H_PER_IMAGE = 12 * 12 * 10      # values of h per member-image (channels-last, unpadded)
X_PER_IMAGE = 28 * 28

# h of one chunk is kept under this many bytes: about the size of the L2 cache of recent
# data-centre GPUs (50 MB on H100/H200), so kernel B reads most of what kernel A just wrote
# from L2 (it reads the members in the reverse order of writing). Smaller chunks cost more
# launches; scripts/bench_kernels.py times several budgets.
H_CHUNK_BYTES = 48 << 20


def flat_features(pool_conv2: bool) -> int:
    """Inputs of fc: 20 channels of 8x8 (4x4 with pool_conv2)."""
    return 20 * (16 if pool_conv2 else 64)


def num_params(pool_conv2: bool) -> int:
    """P = 18,050 (8,450 with pool_conv2)."""
    return N_CONV1 + N_CONV2 + 10 * flat_features(pool_conv2)


# -- configurations ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Conv1Config:
    """Kernel A tile: BLOCK_M pooled pixels x BLOCK_N member-channels, the 32 (25 used) taps in
    steps of BLOCK_K."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int = 1

    @property
    def name(self) -> str:
        return f"m{self.block_m}n{self.block_n}k{self.block_k}w{self.num_warps}"


@dataclass(frozen=True)
class Conv2Config:
    """Kernel B tile: ``images`` images of one member (16 rows each per quadrant), K-blocks of
    ``block_k`` over the 256 (kh, kw, c) reduction index."""

    images: int
    block_k: int
    num_warps: int
    num_stages: int

    @property
    def name(self) -> str:
        return f"i{self.images}k{self.block_k}w{self.num_warps}s{self.num_stages}"


# Every configuration allowed here is run by tests/test_kernels.py (interpreter; on GPU with
# -m gpu). Add one only together with its test coverage.
CONV1_CONFIGS = (
    Conv1Config(block_m=64, block_n=64, block_k=32, num_warps=4),    # tensor cores
    Conv1Config(block_m=128, block_n=64, block_k=32, num_warps=8),   # tensor cores
    Conv1Config(block_m=32, block_n=64, block_k=16, num_warps=4),    # IEEE fp32 (CUDA cores)
    Conv1Config(block_m=64, block_n=64, block_k=16, num_warps=8),    # IEEE fp32 (CUDA cores)
)
CONV2_CONFIGS = (
    Conv2Config(images=1, block_k=64, num_warps=4, num_stages=2),
    Conv2Config(images=2, block_k=64, num_warps=4, num_stages=2),
    Conv2Config(images=4, block_k=64, num_warps=8, num_stages=2),
    Conv2Config(images=4, block_k=32, num_warps=4, num_stages=3),
)

_TUNED: dict[tuple, tuple[Conv1Config, Conv2Config]] = {}


def candidate_configs(precision: str) -> tuple[tuple[Conv1Config, ...], tuple[Conv2Config, ...]]:
    """The configurations :func:`tune` tries for a precision (all are allowed and tested with
    every precision). IEEE fp32 runs ``tl.dot`` on the CUDA cores, which holds a whole K-step of
    both operands in registers: kernel A's 32-tap steps spill there (compiled for sm_90), so
    fp32 gets the 16-tap ones and the tensor-core modes the 32-tap ones."""
    _prec_code(precision)
    k = 16 if precision == "fp32" else 32
    return tuple(c for c in CONV1_CONFIGS if c.block_k == k), CONV2_CONFIGS


def default_configs(batch: int, precision: str = "fp32",
                    pool_conv2: bool = False) -> tuple[Conv1Config, Conv2Config]:
    """The configurations used when none is given: those :func:`tune` found for this batch
    size, precision and pooling if it ran in this process, else a heuristic: the first of
    :func:`candidate_configs` for kernel A; for kernel B 4 images per program on the tensor
    cores, 2 with IEEE fp32 (with 4, a few registers spill on the CUDA cores), fewer for
    batches that small. None of these defaults spills registers when compiled for sm_90
    (tests/test_kernels.py checks it)."""
    tuned = _TUNED.get((batch, precision, bool(pool_conv2)))
    if tuned is not None:
        return tuned
    conv1 = candidate_configs(precision)[0][0]
    if batch >= 4 and precision != "fp32":
        conv2 = CONV2_CONFIGS[2]
    elif batch >= 2:
        conv2 = CONV2_CONFIGS[1]
    else:
        conv2 = CONV2_CONFIGS[0]
    return conv1, conv2


# -- availability and kernel construction ------------------------------------------------------

def interpreting() -> bool:
    """True when Triton's CPU interpreter is on (``TRITON_INTERPRET=1``)."""
    try:
        from triton import knobs
    except ImportError:  # pragma: no cover - triton without knobs (older releases)
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
    return bool(knobs.runtime.interpret)


def available() -> bool:
    """Triton is importable and the kernels have somewhere to run (CUDA, or the interpreter)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or interpreting()


_KERNELS: dict[bool, SimpleNamespace] = {}


def _kernels() -> SimpleNamespace:
    """The jitted kernels for the current mode (compiled or interpreted), built on first use:
    Triton decides at decoration time whether a function is interpreted."""
    mode = interpreting()
    if mode not in _KERNELS:
        _KERNELS[mode] = _build()
    return _KERNELS[mode]


def _build() -> SimpleNamespace:
    """Execute the kernel source file as a fresh module, so that its ``@triton.jit`` decorators
    see the current mode (the interpreter resolves a kernel's helpers through the module's
    globals, so the kernels must be module-level functions)."""
    import importlib.util
    import sys

    mode = "interpreted" if interpreting() else "compiled"
    name = f"{__name__.rsplit('.', 1)[0]}._paper_cnn_jit_{mode}"
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_paper_cnn_jit.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return SimpleNamespace(conv1=module.conv1_pool_act_kernel, conv2=module.conv2_act_fc_kernel,
                           emulate_bf16=mode == "interpreted")


# -- host side -----------------------------------------------------------------------------------

def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _act_code(activation: str) -> int:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return ACTIVATIONS.index(activation)


def _prec_code(precision: str) -> int:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return PRECISIONS.index(precision)


def h_dtype(precision: str) -> torch.dtype:
    """dtype of the intermediate h: bf16 in bf16 mode, else fp32."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _check_members(W: torch.Tensor, pool_conv2: bool) -> None:
    P = num_params(pool_conv2)
    if W.dim() != 2 or W.shape[1] != P:
        raise ValueError(f"W must be (members, {P}) for pool_conv2={pool_conv2}, got {tuple(W.shape)}")
    if W.dtype != torch.float32:
        raise TypeError(f"W must be float32, got {W.dtype}")
    if W.stride(1) != 1:
        raise ValueError("rows of W must be contiguous (unit column stride)")


def prepare(x: torch.Tensor) -> torch.Tensor:
    """The batch as the kernels read it: (B, 784) contiguous fp32 (shared by all chunks).
    Already prepared input is returned as is."""
    if x.dim() == 2 and x.shape[1] == X_PER_IMAGE and x.dtype == torch.float32 and x.is_contiguous():
        return x
    if x.shape[-3:] != (1, 28, 28):
        raise ValueError(f"x must be (B, 1, 28, 28), got {tuple(x.shape)}")
    return x.reshape(-1, X_PER_IMAGE).to(torch.float32).contiguous()


def conv1_pool_act(W: torch.Tensor, x: torch.Tensor, activation: str = "logistic",
                   precision: str = "fp32", config: Conv1Config | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Kernel A: h = act(maxpool2x2(conv1(x))) of the members W (Jc, P) as (Jc, B, 12, 12, 10),
    channels-last per member, in :func:`h_dtype` (P may be either size: only conv1 is read)."""
    xp = prepare(x)
    B, Jc = xp.shape[0], W.shape[0]
    if W.dim() != 2 or W.shape[1] < N_CONV1 or W.dtype != torch.float32:
        raise ValueError("W must be a float32 (members, P) matrix")
    cfg = config or default_configs(B, precision)[0]
    h = out if out is not None else torch.empty(Jc, B, 12, 12, 10, device=W.device,
                                                dtype=h_dtype(precision))
    if h.shape != (Jc, B, 12, 12, 10) or not h.is_contiguous() or h.dtype != h_dtype(precision):
        raise ValueError("out must be a contiguous (Jc, B, 12, 12, 10) tensor of h_dtype(precision)")
    if Jc == 0 or B == 0:
        return h
    M, N = B * 144, Jc * 10
    grid = (_cdiv(M, cfg.block_m), _cdiv(N, cfg.block_n))
    if grid[1] > 65535:
        raise ValueError(f"chunk of {Jc} members is too large for one launch; use smaller chunks")
    k = _kernels()
    k.conv1[grid](xp, W, h, M, N, W.stride(0), B * H_PER_IMAGE,
                  ACT=_act_code(activation), PREC=_prec_code(precision), EMULATE_BF16=k.emulate_bf16,
                  BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return h


def conv2_act_fc(W: torch.Tensor, h: torch.Tensor, activation: str = "logistic",
                 pool_conv2: bool = False, precision: str = "fp32",
                 config: Conv2Config | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Kernel B: logits (Jc, B, 10) fp32 = fc(act(conv2(h)) [pooled]) of the members W (Jc, P)
    on h (Jc, B, 12, 12, 10) channels-last from :func:`conv1_pool_act`."""
    _check_members(W, pool_conv2)
    Jc = W.shape[0]
    if h.dim() != 5 or h.shape[0] != Jc or h.shape[2:] != (12, 12, 10) or not h.is_contiguous():
        raise ValueError(f"h must be a contiguous ({Jc}, B, 12, 12, 10) tensor, got {tuple(h.shape)}")
    if h.dtype not in (h_dtype(precision), torch.float32):
        raise TypeError(f"h must be float32 or {h_dtype(precision)} for precision {precision!r}, "
                        f"got {h.dtype}")
    B = h.shape[1]
    cfg = config or default_configs(B, precision, pool_conv2)[1]
    logits = out if out is not None else torch.empty(Jc, B, 10, device=W.device, dtype=torch.float32)
    if logits.shape != (Jc, B, 10) or not logits.is_contiguous() or logits.dtype != torch.float32:
        raise ValueError("out must be a contiguous (Jc, B, 10) float32 tensor")
    if Jc == 0 or B == 0:
        return logits
    n_blocks = _cdiv(B, cfg.images)
    k = _kernels()
    k.conv2[(Jc * n_blocks,)](h, W, logits, Jc, B, W.stride(0), B * H_PER_IMAGE, n_blocks,
                              ACT=_act_code(activation), POOL=bool(pool_conv2),
                              PREC=_prec_code(precision), EMULATE_BF16=k.emulate_bf16,
                              IMGS=cfg.images, BLOCK_K=cfg.block_k,
                              num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return logits


def forward_chunk(W: torch.Tensor, x: torch.Tensor, activation: str = "logistic",
                  pool_conv2: bool = False, precision: str = "fp32",
                  conv1_config: Conv1Config | None = None, conv2_config: Conv2Config | None = None,
                  h: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (Jc, B, 10) fp32 of the members W (Jc, P) fp32 on the batch x (B, 1, 28, 28) or
    ``prepare(x)``. ``h`` and ``out`` are optional work/output buffers of the right shapes."""
    _check_members(W, pool_conv2)
    _act_code(activation)
    _prec_code(precision)
    xp = prepare(x)
    c1, c2 = default_configs(xp.shape[0], precision, pool_conv2)
    h = conv1_pool_act(W, xp, activation, precision, conv1_config or c1, out=h)
    return conv2_act_fc(W, h, activation, pool_conv2, precision, conv2_config or c2, out=out)


def recommended_chunk(batch: int, precision: str = "fp32", budget_bytes: int | None = None) -> int:
    """Members per call of :func:`forward_chunk`: as many as keep h under ``budget_bytes``
    (default :data:`H_CHUNK_BYTES`, about an L2 cache)."""
    budget = H_CHUNK_BYTES if budget_bytes is None else budget_bytes
    per_member = max(1, batch) * H_PER_IMAGE * torch.finfo(h_dtype(precision)).bits // 8
    return max(1, budget // per_member)


def forward(U: torch.Tensor, x: torch.Tensor, activation: str = "logistic", pool_conv2: bool = False,
            precision: str = "fp32", chunk: int | None = None,
            conv1_config: Conv1Config | None = None,
            conv2_config: Conv2Config | None = None) -> torch.Tensor:
    """Logits (J, B, 10) fp32 of all members U (J, P), a chunk of ``chunk`` members at a time
    (default :func:`recommended_chunk`); one h buffer is reused by all chunks."""
    _check_members(U, pool_conv2)
    xp = prepare(x)
    J, B = U.shape[0], xp.shape[0]
    cs = max(1, min(J, chunk or recommended_chunk(B, precision)))
    out = torch.empty(J, B, 10, device=U.device, dtype=torch.float32)
    h = torch.empty(cs, B, 12, 12, 10, device=U.device, dtype=h_dtype(precision))
    for s in range(0, J, cs):
        n = min(cs, J - s)
        forward_chunk(U[s: s + n], xp, activation, pool_conv2, precision, conv1_config, conv2_config,
                      h=h[:n], out=out[s: s + n])
    return out


def tune(U: torch.Tensor, x: torch.Tensor, activation: str = "logistic", pool_conv2: bool = False,
         precision: str = "fp32", chunk: int | None = None) -> dict:
    """Time the :func:`candidate_configs` of each kernel on CUDA for one chunk of U (the first
    ``chunk`` members), remember the fastest pair for this batch size, precision and pooling
    (:func:`default_configs` returns it from then on) and return the timings in ms."""
    if not U.is_cuda or interpreting():
        raise RuntimeError("tune needs CUDA tensors and compiled (not interpreted) kernels")
    from triton.testing import do_bench

    xp = prepare(x)
    B = xp.shape[0]
    W = U[: max(1, min(U.shape[0], chunk or recommended_chunk(B, precision)))]
    c1s, c2s = candidate_configs(precision)
    h = conv1_pool_act(W, xp, activation, precision, c1s[0])
    out = torch.empty(W.shape[0], B, 10, device=W.device)
    t1 = {c: do_bench(lambda c=c: conv1_pool_act(W, xp, activation, precision, c, out=h)) for c in c1s}
    t2 = {c: do_bench(lambda c=c: conv2_act_fc(W, h, activation, pool_conv2, precision, c, out=out))
          for c in c2s}
    best = (min(t1, key=t1.get), min(t2, key=t2.get))
    _TUNED[(B, precision, bool(pool_conv2))] = best
    return {"members": W.shape[0], "batch": B, "conv1": {c.name: t for c, t in t1.items()},
            "conv2": {c.name: t for c, t in t2.items()}, "best": (best[0].name, best[1].name)}


def flops_per_member_image(pool_conv2: bool = False) -> dict[str, float]:
    """Multiply-adds of the network and of the kernels (with their padding) per member-image."""
    net = {"conv1": 24 * 24 * 10 * 25, "conv2": 8 * 8 * 20 * 250, "fc": flat_features(pool_conv2) * 10}
    kern = {"conv1": 144 * 4 * 32 * 10, "conv2": 64 * 256 * 32,
            "fc": (16 if pool_conv2 else 64) * 32 * 10}
    return {"network_mac": float(sum(net.values())), "kernel_mac": float(sum(kern.values())),
            **{f"{k}_network_mac": float(v) for k, v in net.items()},
            **{f"{k}_kernel_mac": float(v) for k, v in kern.items()}}


__all__ = [
    "ACTIVATIONS", "CONV1_CONFIGS", "CONV2_CONFIGS", "PRECISIONS", "Conv1Config", "Conv2Config",
    "available", "candidate_configs", "conv1_pool_act", "conv2_act_fc", "default_configs",
    "flops_per_member_image",
    "forward", "forward_chunk", "h_dtype", "interpreting", "num_params", "prepare",
    "recommended_chunk", "tune",
]
