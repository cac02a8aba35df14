"""The Triton kernels of the paper's CNN against PyTorch references.

Without a GPU the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set per test
by a fixture) on tiny odd shapes (3 members, 5 images). The kernel module builds interpreted
kernels on first use in that mode, next to compiled ones, and its kernels call only Triton
builtins, so this works whatever ran before in the same process; this file itself imports
triton at collection, before the variable is set. Every allowed kernel configuration is run
(in fp32 and bf16; the whole forward in every mode). In the interpreter the kernels emulate the
tensor cores' operand rounding (bf16 to nearest, tf32 truncated, tf32x3 split as Triton does),
so the tolerances of every mode are checked here too. ``-m slow`` compiles every configuration
for sm_90 without a device, checks that the defaults do not spill registers and that the
tensor-core defaults use full tiles; ``-m gpu`` runs the compiled kernels at real shapes (1000
members, 64 images) against the project's PyTorch path.

Errors are normwise: max |got - ref| / max |ref|. References are float64, per member, with
F.conv2d / F.max_pool2d / matmul in the network's own order (activation before pooling).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="Triton is not installed (it ships with CUDA builds of torch); "
                                     "the fused kernels are optional")

from enkf_repro.models.kernels import paper_cnn_triton as K  # noqa: E402

ACT = {"logistic": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}
TOL = K.TOLERANCE                                    # normwise, against float64
JC, B = 3, 5                                         # odd chunk and batch sizes


def rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double().cpu(), ref.double().cpu()
    return ((got - ref).abs().max() / ref.abs().max()).item()


def bf16(t: torch.Tensor) -> torch.Tensor:
    """Values rounded to bfloat16 (the bf16 mode's operands), kept in float64."""
    return t.float().to(torch.bfloat16).double()


def members(n: int, pool_conv2: bool, seed: int = 0, device="cpu") -> torch.Tensor:
    """(n, P) fp32 members with per-layer scales that keep every activation in its working range."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(n, 250, generator=g) * 0.3, torch.randn(n, 5000, generator=g) * 0.1,
             torch.randn(n, 10 * K.flat_features(pool_conv2), generator=g) * 0.1]
    return torch.cat(parts, 1).to(device)


def images(n: int, seed: int = 1, device="cpu") -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)).to(device)


def ref_h(W, x, activation, rnd=lambda t: t):
    """maxpool(act(conv1)) per member as (Jc, B, 12, 12, 10) channels-last, float64; ``rnd``
    is applied to conv1's operands."""
    x = rnd(x.double())
    out = []
    for w in W.double():
        h = F.max_pool2d(ACT[activation](F.conv2d(x, rnd(w[:250].view(10, 1, 5, 5)))), 2)
        out.append(h.permute(0, 2, 3, 1))
    return torch.stack(out)


def ref_logits(W, h, activation, pool_conv2, rnd=lambda t: t):
    """fc(act(conv2(h)) [pooled]) per member from channels-last h, float64; ``rnd`` is applied
    to conv2's operands."""
    out = []
    for w, hm in zip(W.double(), h.double()):
        o = ACT[activation](F.conv2d(rnd(hm.permute(0, 3, 1, 2)), rnd(w[250:5250].view(20, 10, 5, 5))))
        if pool_conv2:
            o = F.max_pool2d(o, 2)
        out.append(o.flatten(1) @ w[5250:].view(10, -1).T)
    return torch.stack(out)


def reference(W, x, activation, pool_conv2):
    return ref_logits(W, ref_h(W, x, activation), activation, pool_conv2)


@pytest.fixture
def interpreter(monkeypatch):
    """Run this test's kernels in Triton's CPU interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert K.interpreting() and K.available()


# -- the reference itself -------------------------------------------------------------------------

@pytest.mark.parametrize("pool_conv2", [False, True])
def test_reference_is_the_projects_model(pool_conv2):
    """The test's reference (and so the kernels' parameter layout) is the project's PaperCNN."""
    from enkf_repro.models import PaperCNNSpec

    spec = PaperCNNSpec("tanh", pool_conv2)
    assert spec.num_params == K.num_params(pool_conv2)
    W, x = members(JC, pool_conv2), images(B)
    ours = reference(W, x, "tanh", pool_conv2)
    theirs = spec.forward_chunk(W.double(), spec.prepare(x.double()))
    assert rel(ours, theirs) < 1e-12


# -- kernel A: conv1 + pool + activation ----------------------------------------------------------

# Per-configuration checks run fp32 (CUDA-core products) and bf16 (the mode whose h is stored in
# bf16) here; the tf32 modes share bf16's code path but for the operand rounding, which the
# forward tests check in every mode; the GPU tests run every configuration in every mode.
INTERP_PRECISIONS = ("fp32", "bf16")


@pytest.mark.parametrize("precision", INTERP_PRECISIONS)
@pytest.mark.parametrize("activation", K.ACTIVATIONS)
@pytest.mark.parametrize("config", K.CONV1_CONFIGS, ids=lambda c: c.name)
def test_conv1_kernel(interpreter, config, activation, precision):
    W, x = members(JC, False, seed=2), images(B)
    h = K.conv1_pool_act(W, x, activation, precision, config)
    assert h.shape == (JC, B, 12, 12, 10) and h.dtype == K.h_dtype(precision)
    assert rel(h, ref_h(W, x, activation)) < TOL[precision]
    if precision == "bf16":
        # exactly: conv1 of bf16-rounded operands in fp32, activated, rounded to bf16
        r = ref_h(W, x, activation, bf16)
        assert ((h.double() - r).abs() <= r.abs() * 2.0 ** -8 + 1e-5 * r.abs().max()).all()


# -- kernel B: conv2 + activation [+ pool] + fc ---------------------------------------------------

@pytest.mark.parametrize("precision", INTERP_PRECISIONS)
@pytest.mark.parametrize("pool_conv2", [False, True], ids=["8x8", "pool4x4"])
@pytest.mark.parametrize("config", K.CONV2_CONFIGS, ids=lambda c: c.name)
def test_conv2_fc_kernel(interpreter, config, pool_conv2, precision):
    # each configuration meets all three activations across its four runs
    activation = K.ACTIVATIONS[(K.CONV2_CONFIGS.index(config) + INTERP_PRECISIONS.index(precision)
                                + 2 * pool_conv2) % 3]
    W, x = members(JC, pool_conv2, seed=3), images(B)
    h = ref_h(W, x, activation).to(K.h_dtype(precision))
    got = K.conv2_act_fc(W, h, activation, pool_conv2, precision, config)
    assert got.shape == (JC, B, 10) and got.dtype == torch.float32
    assert rel(got, ref_logits(W, h, activation, pool_conv2)) < TOL[precision]
    if precision == "bf16":   # bf16 products accumulated in fp32: as exact as fp32
        assert rel(got, ref_logits(W, h, activation, pool_conv2, bf16)) < 1e-5


# -- the whole forward -----------------------------------------------------------------------------

# every activation in every kernel mode (the interpreter emulates each mode's operand rounding)
FORWARD_CASES = [(a, p) for p in K.PRECISIONS for a in K.ACTIVATIONS]


@pytest.mark.parametrize("pool_conv2", [False, True], ids=["8x8", "pool4x4"])
@pytest.mark.parametrize("activation,precision", FORWARD_CASES)
def test_forward_chunk(interpreter, activation, pool_conv2, precision):
    W, x = members(JC, pool_conv2, seed=4), images(B)
    got = K.forward_chunk(W, x, activation, pool_conv2, precision)
    assert got.shape == (JC, B, 10) and got.dtype == torch.float32
    assert rel(got, reference(W, x, activation, pool_conv2)) < TOL[precision]
    if precision == "bf16":   # the bf16 mode is: bf16 operands, fp32 accumulation, h in bf16
        h = bf16(ref_h(W, x, activation, bf16))
        assert rel(got, ref_logits(W, h, activation, pool_conv2, bf16)) < 1e-3


@pytest.mark.usefixtures("interpreter")
def test_interpreter_emulates_the_tensor_core_roundings():
    """The emulation is not fp32 in disguise: tf32 is about 2^-11 off, bf16 worse, while tf32x3
    (the fp32 route on the tensor cores) stays at fp32 accuracy; members at sigma = 1 (Figure 1),
    where the logits are largest."""
    W = torch.randn(4, K.num_params(False), generator=torch.Generator().manual_seed(12))
    x = images(B, seed=13)
    ref = reference(W, x, "logistic", False)
    err = {p: rel(K.forward_chunk(W, x, "logistic", False, p), ref) for p in K.PRECISIONS}
    assert err["fp32"] < 1e-6 and err["tf32x3"] < K.TOLERANCE["tf32x3"] / 5
    assert 2.0 ** -14 < err["tf32"] < K.TOLERANCE["tf32"] and err["tf32"] > 100 * err["fp32"]
    assert err["bf16"] > 2 * err["tf32"] and err["bf16"] < K.TOLERANCE["bf16"]


@pytest.mark.parametrize("jc,b", [(1, 1), (2, 9)])
def test_forward_chunk_strided_rows_and_odd_sizes(interpreter, jc, b):
    """Rows of W taken from a wider matrix (row stride > P, nonzero offset); batches that are
    not a multiple of any tile."""
    P = K.num_params(False)
    wide = torch.zeros(jc + 2, P + 7)
    wide[1: 1 + jc, :P] = members(jc, False, seed=5)
    W = wide[1: 1 + jc, :P]
    assert W.stride(0) == P + 7
    x = images(b, seed=6)
    for c2 in (K.CONV2_CONFIGS[0], K.CONV2_CONFIGS[2]):
        got = K.forward_chunk(W, x, "logistic", False, "fp32", conv2_config=c2)
        assert rel(got, reference(W, x, "logistic", False)) < TOL["fp32"]


def test_forward_in_chunks(interpreter):
    """The ensemble forward a chunk at a time (last chunk short) equals the reference."""
    U, x = members(5, True, seed=7), images(3, seed=8)
    got = K.forward(U, x, "relu", True, "fp32", chunk=2)
    assert got.shape == (5, 3, 10)
    assert rel(got, reference(U, x, "relu", True)) < TOL["fp32"]


def test_sizes_and_validation():
    assert K.num_params(False) == 18050 and K.num_params(True) == 8450
    assert K.recommended_chunk(64, "fp32") >= 1
    assert K.recommended_chunk(64, "bf16") == K.H_CHUNK_BYTES // (64 * 1440 * 2)
    assert K.recommended_chunk(1, "fp32", budget_bytes=1) == 1
    flops = K.flops_per_member_image(False)
    assert flops["network_mac"] == 476_800
    with pytest.raises(ValueError):
        K.forward_chunk(torch.zeros(2, 100), images(2))
    with pytest.raises(TypeError):
        K.forward_chunk(torch.zeros(2, 18050, dtype=torch.float64), images(2))
    with pytest.raises(ValueError):
        K.forward_chunk(torch.zeros(2, 18050), images(2), activation="gelu")
    with pytest.raises(ValueError):
        K.forward_chunk(torch.zeros(2, 18050), images(2), precision="fp16")


# -- GPU: compiled kernels at real shapes against the project's PyTorch path ----------------------

CUDA = torch.cuda.is_available()
J_GPU, B_GPU = 1000, 64
TORCH_PRECISION = {"fp32": "fp32", "tf32": "tf32", "bf16": "bf16", "tf32x3": "fp32"}
_GPU_REF: dict = {}


def gpu_case(activation: str, pool_conv2: bool):
    """Members, images and the PyTorch path's outputs (float64, and each precision) on CUDA."""
    key = (activation, pool_conv2)
    if key not in _GPU_REF:
        from enkf_repro.models import PaperCNNSpec
        from enkf_repro.models.ensemble import precision_scope

        spec = PaperCNNSpec(activation, pool_conv2)
        dev = torch.device("cuda")
        W, x = members(J_GPU, pool_conv2, seed=10, device=dev), images(B_GPU, seed=11, device=dev)
        with torch.no_grad():
            ref64 = spec.forward_chunk(W.double(), spec.prepare(x.double())).float()
            by_prec = {}
            for p in set(TORCH_PRECISION.values()):
                with precision_scope(p, dev):
                    by_prec[p] = spec.forward_chunk(W, spec.prepare(x)).float()
        _GPU_REF[key] = (W, x, ref64, by_prec)
    return _GPU_REF[key]


@pytest.fixture
def compiled(monkeypatch):
    """Compiled kernels (whatever TRITON_INTERPRET says in the environment)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not K.interpreting()


def check_gpu(activation, pool_conv2, precision, conv1_config=None, conv2_config=None):
    W, x, ref64, by_prec = gpu_case(activation, pool_conv2)
    got = K.forward_chunk(W, x, activation, pool_conv2, precision, conv1_config, conv2_config)
    torch.cuda.synchronize()
    err = rel(got, ref64)
    assert err < TOL[precision], f"error {err:.2e} against float64"
    return got, by_prec[TORCH_PRECISION[precision]]


@pytest.mark.parametrize("precision", K.PRECISIONS)
@pytest.mark.parametrize("config", K.CONV1_CONFIGS, ids=lambda c: c.name)
@pytest.mark.usefixtures("compiled")
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_conv1_configs(config, precision):
    check_gpu("logistic", False, precision, conv1_config=config)


@pytest.mark.parametrize("precision", K.PRECISIONS)
@pytest.mark.parametrize("pool_conv2", [False, True], ids=["8x8", "pool4x4"])
@pytest.mark.parametrize("config", K.CONV2_CONFIGS, ids=lambda c: c.name)
@pytest.mark.usefixtures("compiled")
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_conv2_configs(config, pool_conv2, precision):
    check_gpu("logistic", pool_conv2, precision, conv2_config=config)


@pytest.mark.parametrize("precision", K.PRECISIONS)
@pytest.mark.parametrize("pool_conv2", [False, True], ids=["8x8", "pool4x4"])
@pytest.mark.parametrize("activation", K.ACTIVATIONS)
@pytest.mark.usefixtures("compiled")
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_matches_pytorch_path(activation, pool_conv2, precision):
    """Against PaperCNNSpec.forward_chunk in float64 and at the same precision; the ensemble a
    chunk at a time equals one chunk."""
    W, x, _, _ = gpu_case(activation, pool_conv2)
    got, torch_out = check_gpu(activation, pool_conv2, precision)
    assert rel(got, torch_out) < 2 * TOL[precision]
    chunked = K.forward(W, x, activation, pool_conv2, precision, chunk=300)   # last chunk short
    assert rel(chunked, got) < 1e-6


# -- compilation for a GPU target, without a GPU ---------------------------------------------------

def compile_for_sm90(config, precision: str, pool_conv2: bool = False, activation: int = 2):
    """The Hopper (sm_90) binary of one kernel configuration: front end, layouts, LLVM, ptxas."""
    from enkf_repro.models.kernels import compiled

    return compiled.compile_kernel(config, precision, pool_conv2, activation)


@pytest.fixture
def nvidia_backend(compiled):
    pytest.importorskip("triton.backends.nvidia", reason="Triton's NVIDIA backend is not installed")


@pytest.mark.slow
@pytest.mark.parametrize("precision", K.PRECISIONS)
@pytest.mark.parametrize("config", K.CONV1_CONFIGS + K.CONV2_CONFIGS, ids=lambda c: c.name)
def test_compiles_for_sm90(nvidia_backend, config, precision):
    """Every allowed configuration compiles for Hopper with every precision (no device needed):
    catches what the interpreter cannot (layouts, dot shapes, dtypes)."""
    for pool_conv2 in ((False,) if isinstance(config, K.Conv1Config) else (False, True)):
        compile_for_sm90(config, precision, pool_conv2)


@pytest.mark.slow
@pytest.mark.parametrize("precision", K.PRECISIONS)
def test_default_configs_do_not_spill_on_sm90(nvidia_backend, precision):
    """The configurations used by default at batch 64 keep everything in registers (ptxas -v),
    for the cheapest and the dearest activation, in both specialisations of the launcher (a
    chunk of U starting at an even or an odd row: W 16-byte aligned or not)."""
    from enkf_repro.models.kernels import compiled

    for pool_conv2, activation, aligned in itertools.product((False, True), (0, 2), (True, False)):
        for config in K.default_configs(64, precision, pool_conv2):
            binary = compiled.compile_kernel(config, precision, pool_conv2, activation, aligned_w=aligned)
            report = compiled.ptxas_report(binary.asm["ptx"])
            assert report["spill_bytes"] == 0, f"{config.name} {precision} act {activation}: {report['ptxas']}"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["tf32", "tf32x3", "bf16"])
def test_default_conv2_uses_full_tensor_core_tiles_and_paired_loads_on_sm90(nvidia_backend, precision):
    """Read from the sm_90 binary: the default conv2 kernel of the tensor-core modes runs one
    warp group over the whole m64n32 tile (wgmma m64n32, warps [4, 1]: N = 32 not split), two
    programs fit on an SM (at most 113 KB of shared memory), and the im2col operand is gathered
    in pairs (8-byte cp.async for fp32 h; 4-byte = two bf16 values)."""
    from enkf_repro.models.kernels import compiled

    config = K.default_configs(64, precision)[1]
    facts = compiled.describe(compile_for_sm90(config, precision), config.num_warps)
    assert facts["mma"].startswith("v3") and "warps 4,1" in facts["mma"], facts["mma"]
    assert any(".m64n32k" in i for i in facts["instructions"]), facts["instructions"]
    assert facts["shared_bytes"] <= 113 * 1024 and facts["blocks_per_sm"] >= 2, facts
    pair = 4 if precision == "bf16" else 8
    assert facts["cp_async_bytes"].get(pair, 0) >= 32, facts["cp_async_bytes"]


def test_bench_script_smoke(tmp_path):
    """scripts/bench_kernels.py runs end to end (tiny shapes, interpreter) and writes its table."""
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "bench.md"
    proc = subprocess.run([sys.executable, str(repo / "scripts" / "bench_kernels.py"), "--smoke",
                           "--precisions", "fp32,bf16", "--markdown", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = out.read_text()
    assert "| 5 | bf16 |" in table and "FAIL" not in table


# -- the engine's use of the kernels ------------------------------------------------------------
@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_ensemble_forward_with_the_triton_kernel_equals_the_torch_path(precision):
    """EnsembleForward(kernel="triton") (chunked: 7 members in chunks of 3) against the PyTorch
    path, for the paper CNN; kernel="auto" keeps the PyTorch path on CPU."""
    from enkf_repro.models.ensemble import EnsembleForward
    from enkf_repro.models.paper_cnn import PaperCNNSpec

    spec = PaperCNNSpec("tanh", False)
    U, x = members(7, False), images(B)
    fused = EnsembleForward(spec, chunk_size=3, precision=precision, kernel="triton")
    assert fused.kernel == "triton" and EnsembleForward(spec, kernel="auto").kernel == "torch"
    ref = EnsembleForward(spec, chunk_size=3, kernel="torch")(U.double(), x.double())
    assert rel(fused(U, x), ref) < TOL[precision]


def test_unavailable_kernel_is_a_config_error(monkeypatch):
    from enkf_repro.errors import ConfigError
    from enkf_repro.models.dense import DenseSpec
    from enkf_repro.models.ensemble import EnsembleForward

    with pytest.raises(ConfigError, match="ensemble.kernel='triton'.*auto or torch"):
        EnsembleForward(DenseSpec("dnn2", [8]), kernel="triton")


def test_chunk_probe_picks_the_least_time_per_member():
    from enkf_repro.models.ensemble import probe_chunk

    cost = {64: 1.0, 128: 1.2, 256: 3.0}          # seconds per call: 128 members is the cheapest per member
    assert probe_chunk(None, [64, 128, 256], timer=lambda n: cost[n]) == 128
