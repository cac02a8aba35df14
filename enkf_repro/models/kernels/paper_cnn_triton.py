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

Precision (``precision``, the kernel mode): ``"fp32"`` IEEE fp32 products
(``input_precision="ieee"``: on the CUDA cores, so 0.45 TFLOP at J = 5000 takes at least ~7 ms
at an H200's 67 TFLOP/s), ``"tf32x3"`` each product as three tf32 products on the tensor cores
(a = big + small; small*big + big*small + big*big: fp32 accuracy, 1e-5 normwise), ``"tf32"``
TensorFloat-32 tensor cores, ``"bf16"`` operands rounded to bfloat16 (h stored in bf16).
Accumulation is always fp32 and outputs are always fp32; the activations and fc run in fp32 in
every mode. The engine's ``ensemble.precision=fp32`` is the faster of ``tf32x3`` and ``fp32``
that meets :data:`TOLERANCE` (:data:`ROUTES`, :func:`select_mode`).

Memory and chunking: a chunk of Jc members needs h (Jc*B*1440 values) besides its output, so
the caller evaluates the ensemble a chunk at a time (:func:`forward` does it, with
:func:`recommended_chunk` members per chunk unless told otherwise).

Kernels are built on first use, once per mode: compiled for the GPU, or for Triton's CPU
interpreter when ``TRITON_INTERPRET=1`` is set at that time (both can coexist in one process).
The interpreter's ``tl.dot`` computes every mode in fp32 (and mishandles bfloat16 operands), so
in interpreter mode the kernels emulate the tensor cores' operand rounding and multiply the
rounded values exactly in fp32: bf16 to nearest even (h rounded as the GPU's cast does), tf32 by
truncation (what the tensor cores read from an fp32 operand), tf32x3 as Triton splits it
(``_mma`` in the kernel file). The interpreter's errors are therefore those of the GPU's operand
rounding, with exact products and fp32 accumulation in a different order.

Before a GPU launch Triton builds a small C launcher (a C compiler, Python.h, libcuda.so.1):
:func:`launcher_prerequisites` names what is missing; :data:`TESTED_TRITON` lists the releases
the kernels were tested with (:func:`untested_triton`).
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
# -m gpu). Add one only together with its test coverage. What each compiles to for sm_90 (tile,
# shared memory, registers, spills, load widths): scripts/sm90_report.py, docs/gpu.md.
CONV1_CONFIGS = (
    Conv1Config(block_m=64, block_n=64, block_k=32, num_warps=4),    # tensor cores
    Conv1Config(block_m=128, block_n=64, block_k=32, num_warps=8),   # tensor cores
    Conv1Config(block_m=64, block_n=64, block_k=16, num_warps=8),    # IEEE fp32 (CUDA cores), default
    Conv1Config(block_m=32, block_n=64, block_k=16, num_warps=4),    # IEEE fp32: spills 16 bytes on sm_90
)
CONV2_CONFIGS = (
    Conv2Config(images=1, block_k=64, num_warps=4, num_stages=2),
    Conv2Config(images=2, block_k=64, num_warps=4, num_stages=2),
    Conv2Config(images=4, block_k=64, num_warps=8, num_stages=2),   # m64n16 per warp group; IEEE fp32 default
    Conv2Config(images=4, block_k=32, num_warps=4, num_stages=3),   # tensor-core default: m64n32
    Conv2Config(images=8, block_k=32, num_warps=8, num_stages=2),   # m64n32 per warp group
)

# The kernel modes that give each precision of the engine (``ensemble.precision``), the first
# being the default where nothing was measured: fp32 means fp32 accuracy, by three tf32
# products on the tensor cores or IEEE products on the CUDA cores, whichever is faster.
ROUTES = {"fp32": ("tf32x3", "fp32"), "tf32": ("tf32",), "bf16": ("bf16",)}
# Normwise error of the logits against float64 (max |got - ref| / max |ref|) that each kernel
# mode is held to, on the GPU and in the interpreter's emulation of the tensor cores.
TOLERANCE = {"fp32": 1e-5, "tf32x3": 1e-5, "tf32": 5e-3, "bf16": 2e-2}

_TUNED: dict[tuple, tuple[Conv1Config, Conv2Config]] = {}


def candidate_configs(precision: str) -> tuple[tuple[Conv1Config, ...], tuple[Conv2Config, ...]]:
    """The configurations :func:`tune` tries for a kernel mode (all are allowed and tested with
    every mode). IEEE fp32 runs ``tl.dot`` on the CUDA cores, which holds a whole K-step of
    both operands in registers: kernel A's 32-tap steps spill there (compiled for sm_90), so
    fp32 gets the 16-tap ones and the tensor-core modes the 32-tap ones."""
    _prec_code(precision)
    k = 16 if precision == "fp32" else 32
    return tuple(c for c in CONV1_CONFIGS if c.block_k == k), CONV2_CONFIGS


def default_configs(batch: int, precision: str = "fp32",
                    pool_conv2: bool = False) -> tuple[Conv1Config, Conv2Config]:
    """The configurations used when none is given: those :func:`tune` found (or
    :func:`use_configs` set) for this batch size, mode and pooling in this process, else a
    heuristic: the first of :func:`candidate_configs` for kernel A; for kernel B, with batches
    of 4 images or more, 4 images per program: on the tensor cores with 4 warps (one warp group
    owns the whole m64n32 tile, 108 KB of shared memory in tf32: two programs per SM), with
    IEEE fp32 with 8 warps (with 4, or 2 images, or 8 images, registers spill on the CUDA cores
    under Triton 3.6 or 3.8); 1 image per program for smaller batches. None of these defaults
    spills registers when compiled for sm_90 (tests/test_kernels.py checks it)."""
    tuned = _TUNED.get((batch, precision, bool(pool_conv2)))
    if tuned is not None:
        return tuned
    conv1 = candidate_configs(precision)[0][0]
    if batch < 4:
        conv2 = CONV2_CONFIGS[0]
    elif precision == "fp32":
        conv2 = CONV2_CONFIGS[2]
    else:
        conv2 = CONV2_CONFIGS[3]
    return conv1, conv2


def use_configs(batch: int, precision: str, pool_conv2: bool, configs: tuple[Conv1Config, Conv2Config]) -> None:
    """Make ``configs`` the :func:`default_configs` of this batch size, mode and pooling (the
    engine sets what it measured or read from its cache)."""
    _prec_code(precision)
    _TUNED[(batch, precision, bool(pool_conv2))] = configs


def config_by_name(name: str) -> Conv1Config | Conv2Config:
    """The allowed configuration called ``name`` (KeyError for any other)."""
    for c in CONV1_CONFIGS + CONV2_CONFIGS:
        if c.name == name:
            return c
    raise KeyError(name)


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


# Triton releases these kernels were tested with (interpreter tests, sm_90 compilation; see
# scripts/triton_compat.sh); the engine does not trust the kernels with any other.
TESTED_TRITON = ("3.6", "3.8")


def triton_version() -> str | None:
    """The installed Triton's version, or None."""
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def untested_triton() -> str | None:
    """Why the installed Triton is not trusted (a version the kernels were not tested with), or None."""
    v = triton_version()
    if v is None:
        return "Triton is not installed"
    if ".".join(v.split(".")[:2]) not in TESTED_TRITON:
        return f"Triton {v} is not one of the tested releases {', '.join(TESTED_TRITON)}"
    return None


def launcher_prerequisites() -> list[str]:
    """What Triton needs to build its kernel launcher at the first launch on a GPU and is
    missing here, one phrase each (empty: all there): a C compiler (``$CC``, gcc or clang),
    the Python headers (Python.h), libcuda.so.1 (the driver), and the ptxas it compiles with."""
    import shutil
    import sysconfig

    missing = []
    try:
        from triton import knobs
    except ImportError:
        return ["Triton"]
    if knobs.build.impl is None:
        cc = os.environ.get("CC")
        if cc:
            if shutil.which(cc) is None:
                missing.append(f"the C compiler CC={cc}")
        elif shutil.which("gcc") is None and shutil.which("clang") is None:
            missing.append("a C compiler (gcc or clang, or set CC)")
        scheme = sysconfig.get_default_scheme()
        scheme = "posix_prefix" if scheme == "posix_local" else scheme
        include = sysconfig.get_paths(scheme=scheme)["include"]
        if not os.path.isfile(os.path.join(include, "Python.h")):
            missing.append(f"the Python headers (Python.h in {include}; install python3-dev)")
    if not _libcuda_found():
        missing.append("libcuda.so.1 (the NVIDIA driver library; run ldconfig or set TRITON_LIBCUDA_PATH)")
    try:
        ptxas = knobs.nvidia.ptxas.path
    except Exception as e:  # noqa: BLE001 - any failure to locate it is the message
        missing.append(f"ptxas ({_first_line(e)})")
    else:
        if not ptxas or not os.path.isfile(ptxas):
            missing.append("ptxas (Triton's NVIDIA backend; set TRITON_PTXAS_PATH)")
    return missing


def _libcuda_found() -> bool:
    try:
        from triton.backends.nvidia.driver import libcuda_dirs
    except ImportError:
        return False
    fn = getattr(libcuda_dirs, "__wrapped__", libcuda_dirs)   # not the cached verdict
    try:
        return bool(fn())
    except Exception:  # noqa: BLE001 - Triton asserts when it finds none
        return False


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


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
                           emulate=mode == "interpreted")


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
                  ACT=_act_code(activation), PREC=_prec_code(precision), EMULATE=k.emulate,
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
                              PREC=_prec_code(precision), EMULATE=k.emulate,
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
    (default :func:`recommended_chunk`); one h buffer is reused by all chunks. Arguments are
    checked once, then each chunk is two launches and nothing else (the host cost of a forward
    is about two Triton launches per chunk)."""
    _check_members(U, pool_conv2)
    act, prec = _act_code(activation), _prec_code(precision)
    xp = prepare(x)
    J, B = U.shape[0], xp.shape[0]
    out = torch.empty(J, B, 10, device=U.device, dtype=torch.float32)
    if J == 0 or B == 0:
        return out
    cs = max(1, min(J, chunk or recommended_chunk(B, precision)))
    c1, c2 = default_configs(B, precision, pool_conv2)
    c1, c2 = conv1_config or c1, conv2_config or c2
    M = B * 144
    if _cdiv(cs * 10, c1.block_n) > 65535:
        raise ValueError(f"chunk of {cs} members is too large for one launch; use smaller chunks")
    h = torch.empty(cs, B, 12, 12, 10, device=U.device, dtype=h_dtype(precision))
    k = _kernels()
    n_blocks = _cdiv(B, c2.images)
    stride_w, stride_h = U.stride(0), B * H_PER_IMAGE
    kw1 = dict(ACT=act, PREC=prec, EMULATE=k.emulate, BLOCK_M=c1.block_m, BLOCK_N=c1.block_n,
               BLOCK_K=c1.block_k, num_warps=c1.num_warps, num_stages=c1.num_stages)
    kw2 = dict(ACT=act, POOL=bool(pool_conv2), PREC=prec, EMULATE=k.emulate, IMGS=c2.images,
               BLOCK_K=c2.block_k, num_warps=c2.num_warps, num_stages=c2.num_stages)
    for s in range(0, J, cs):
        n = min(cs, J - s)
        W = U[s: s + n]
        k.conv1[(_cdiv(M, c1.block_m), _cdiv(n * 10, c1.block_n))](xp, W, h, M, n * 10, stride_w, stride_h, **kw1)
        k.conv2[(n * n_blocks,)](h, W, out[s: s + n], n, B, stride_w, stride_h, n_blocks, **kw2)
    return out


def tune(U: torch.Tensor, x: torch.Tensor, activation: str = "logistic", pool_conv2: bool = False,
         precision: str = "fp32", chunk: int | None = None, remember: bool = True) -> dict:
    """Time the :func:`candidate_configs` of each kernel on CUDA for one chunk of U (the first
    ``chunk`` members) in one kernel mode, remember the fastest pair for this batch size, mode
    and pooling (:func:`default_configs` returns it from then on; not with ``remember=False``)
    and return the timings in ms. A candidate that fails to compile or launch (e.g. out of
    shared memory on a smaller GPU) is skipped and its one-line reason kept under "failed"."""
    if not U.is_cuda or interpreting():
        raise RuntimeError("tune needs CUDA tensors and compiled (not interpreted) kernels")
    from triton.testing import do_bench

    xp = prepare(x)
    B = xp.shape[0]
    W = U[: max(1, min(U.shape[0], chunk or recommended_chunk(B, precision)))]
    c1s, c2s = candidate_configs(precision)
    failed: dict[str, str] = {}

    def bench(fn, name):
        try:
            fn()
            torch.cuda.synchronize()
            return do_bench(fn)
        except Exception as e:  # noqa: BLE001 - a configuration that cannot run here is skipped
            failed[name] = _first_line(e)
            return None

    h = torch.empty(W.shape[0], B, 12, 12, 10, device=W.device, dtype=h_dtype(precision))
    out = torch.empty(W.shape[0], B, 10, device=W.device)
    t1 = {c: bench(lambda c=c: conv1_pool_act(W, xp, activation, precision, c, out=h), c.name) for c in c1s}
    t1 = {c: t for c, t in t1.items() if t is not None}
    if not t1:
        return {"members": W.shape[0], "batch": B, "precision": precision, "failed": failed, "best": None}
    best1 = min(t1, key=t1.get)
    conv1_pool_act(W, xp, activation, precision, best1, out=h)
    t2 = {c: bench(lambda c=c: conv2_act_fc(W, h, activation, pool_conv2, precision, c, out=out), c.name)
          for c in c2s}
    t2 = {c: t for c, t in t2.items() if t is not None}
    if not t2:
        return {"members": W.shape[0], "batch": B, "precision": precision, "failed": failed, "best": None}
    best = (best1, min(t2, key=t2.get))
    if remember:
        use_configs(B, precision, pool_conv2, best)
    return {"members": W.shape[0], "batch": B, "precision": precision,
            "conv1": {c.name: t for c, t in t1.items()}, "conv2": {c.name: t for c, t in t2.items()},
            "best": (best[0].name, best[1].name), "ms": t1[best[0]] + t2[best[1]], "failed": failed}


def rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Normwise error max |got - ref| / max |ref| (in float64; inf when got is not finite where
    ref is)."""
    got, ref = got.double(), ref.double().to(got.device)
    scale = ref.abs().max().item()
    err = (got - ref).abs().max().item()
    if err != err:   # NaN
        return float("inf")
    return err / scale if scale > 0 else err


def select_mode(U: torch.Tensor, x: torch.Tensor, activation: str, pool_conv2: bool, precision: str,
                reference: torch.Tensor, chunk: int | None = None) -> dict:
    """On CUDA: for each kernel mode that gives ``precision`` (:data:`ROUTES`), tune its
    configurations (:func:`tune`) and check its output on the first ``reference.shape[0]``
    members against ``reference`` (their float64 logits) at :data:`TOLERANCE`; choose the
    fastest mode that is accurate enough. Returns {"mode", "conv1", "conv2" (names), "ms",
    "modes": per-mode timings, errors and failures}; "mode" is None when no mode qualifies."""
    modes = {}
    n = reference.shape[0]
    for mode in ROUTES[precision]:
        t = tune(U, x, activation, pool_conv2, mode, chunk, remember=False)
        entry = {"ms": t.get("ms"), "best": t["best"], "failed": t["failed"]}
        if t["best"] is not None:
            c1, c2 = (config_by_name(nm) for nm in t["best"])
            try:
                got = forward_chunk(U[:n], x, activation, pool_conv2, mode, c1, c2)
                entry["error"] = rel_error(got, reference)
            except Exception as e:  # noqa: BLE001
                entry["failed"]["check"] = _first_line(e)
                entry["error"] = float("inf")
            entry["accurate"] = entry["error"] <= TOLERANCE[mode]
        else:
            entry["accurate"] = False
        modes[mode] = entry
    good = [m for m, e in modes.items() if e["accurate"]]
    if not good:
        return {"mode": None, "modes": modes}
    mode = min(good, key=lambda m: modes[m]["ms"])
    c1, c2 = modes[mode]["best"]
    return {"mode": mode, "conv1": c1, "conv2": c2, "ms": modes[mode]["ms"], "modes": modes}


def flops_per_member_image(pool_conv2: bool = False) -> dict[str, float]:
    """Multiply-adds of the network and of the kernels (with their padding) per member-image."""
    net = {"conv1": 24 * 24 * 10 * 25, "conv2": 8 * 8 * 20 * 250, "fc": flat_features(pool_conv2) * 10}
    kern = {"conv1": 144 * 4 * 32 * 10, "conv2": 64 * 256 * 32,
            "fc": (16 if pool_conv2 else 64) * 32 * 10}
    return {"network_mac": float(sum(net.values())), "kernel_mac": float(sum(kern.values())),
            **{f"{k}_network_mac": float(v) for k, v in net.items()},
            **{f"{k}_kernel_mac": float(v) for k, v in kern.items()}}


__all__ = [
    "ACTIVATIONS", "CONV1_CONFIGS", "CONV2_CONFIGS", "PRECISIONS", "ROUTES", "TESTED_TRITON", "TOLERANCE",
    "Conv1Config", "Conv2Config", "available", "candidate_configs", "config_by_name", "conv1_pool_act",
    "conv2_act_fc", "default_configs", "flops_per_member_image", "forward", "forward_chunk", "h_dtype",
    "interpreting", "launcher_prerequisites", "num_params", "prepare", "recommended_chunk", "rel_error",
    "select_mode", "triton_version", "tune", "untested_triton", "use_configs",
]
