"""The fused kernels prove themselves before the engine trusts them (models/ensemble.py FusedGate).

A failing kernel (an exception at its first launch, as a compile, launcher or out-of-resources
error would be) and a wrong one (finite outputs off by more than the precision's tolerance) are
faked by subclassing the paper CNN's spec; ``kernel=auto`` must fall back to the PyTorch path
with one line on stderr (once per process and device), ``kernel=triton`` must stop with a
one-line ConfigError. The real kernels run in Triton's interpreter. ``auto`` picks the fused
kernels only on CUDA, so the tests that exercise it on this CPU make ``resolve_kernel`` answer
"triton" as it would there.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed")

from enkf_repro.errors import ConfigError  # noqa: E402
from enkf_repro.models import ensemble  # noqa: E402
from enkf_repro.models.ensemble import EnsembleForward  # noqa: E402
from enkf_repro.models.kernels import paper_cnn_triton as K  # noqa: E402
from enkf_repro.models.paper_cnn import PaperCNNSpec  # noqa: E402


class Exploding(PaperCNNSpec):
    """Fused kernels that raise at their first launch (as ptxas or the launcher build would)."""

    calls = 0

    def fused_available(self) -> bool:
        return True

    def fused_forward(self, U, x, precision, chunk):
        type(self).calls += 1
        raise RuntimeError("out of resources: shared memory, Required: 232448, Hardware limit: 232448\nmore")


class Wrong(PaperCNNSpec):
    """Fused kernels whose finite outputs are off by 0.1 % (above fp32's 1e-5)."""

    def fused_available(self) -> bool:
        return True

    def fused_forward(self, U, x, precision, chunk):
        out = self.forward_chunk(U, self.prepare(x))
        return out * 1.001


class Counting(PaperCNNSpec):
    """The real fused kernels, counting their calls."""

    calls = 0

    def fused_forward(self, U, x, precision, chunk):
        type(self).calls += 1
        return super().fused_forward(U, x, precision, chunk)


@pytest.fixture(autouse=True)
def fresh_gate(monkeypatch):
    """Every test starts with no verdict, no fallback notice and no measured plan."""
    for name in ("_REJECTED", "_VERDICTS", "_STATIC"):
        monkeypatch.setattr(ensemble, name, {})
    monkeypatch.setattr(ensemble, "_NOTIFIED", set())
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def auto_is_fused(monkeypatch):
    """kernel=auto chooses the fused kernels here, as it does on CUDA."""
    monkeypatch.setattr(ensemble, "resolve_kernel",
                        lambda kernel, model, device: "torch" if str(kernel) == "torch" else "triton")


def data(n=5, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 18050, generator=g) * 0.1, torch.rand(b, 1, 28, 28, generator=g)


@pytest.mark.usefixtures("auto_is_fused")
@pytest.mark.parametrize("spec_class,reason", [(Exploding, "RuntimeError: out of resources: shared memory"),
                                               (Wrong, "differs from the PyTorch path in float64 by 1.0e-03")])
def test_auto_falls_back_to_the_pytorch_path_with_one_line_once(capsys, spec_class, reason):
    U, x = data()
    spec = spec_class("tanh")
    engine = EnsembleForward(spec, precision="fp32", kernel="auto")
    assert engine.kernel == "triton"
    got = engine(U, x)
    ref = EnsembleForward(PaperCNNSpec("tanh"), kernel="torch")(U, x)
    assert engine.kernel == "torch" and torch.equal(got, ref)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and reason in err[0] and "ensemble.kernel=auto" in err[0] and "cpu" in err[0]
    # once per process and device: a second call and a second engine say nothing more, and a
    # kernel that failed is not run again
    Exploding.calls = 0
    engine(U, x)
    again = EnsembleForward(spec_class("tanh"), precision="fp32", kernel="auto")
    assert torch.equal(again(U, x), ref) and again.kernel == "torch"
    assert capsys.readouterr().err == "" and Exploding.calls == 0


@pytest.mark.parametrize("spec_class,reason", [(Exploding, "RuntimeError: out of resources"),
                                               (Wrong, "differs from the PyTorch path")])
def test_kernel_triton_turns_the_same_failure_into_a_one_line_error(spec_class, reason):
    U, x = data()
    engine = EnsembleForward(spec_class("logistic"), kernel="triton")
    with pytest.raises(ConfigError) as info:
        engine(U, x)
    msg = str(info.value)
    assert "\n" not in msg and reason in msg and msg.startswith("ensemble.kernel='triton'") and "auto or torch" in msg


def test_a_wrong_kernel_within_a_looser_precision_passes():
    """The tolerance is the precision's: 0.1 % is wrong for fp32 but inside bf16's 2e-2."""
    U, x = data()
    engine = EnsembleForward(Wrong("logistic"), precision="bf16", kernel="triton")
    engine(U, x)
    assert engine.kernel == "triton"


@pytest.mark.usefixtures("auto_is_fused")
def test_real_kernels_pass_the_check_once_and_are_used(capsys):
    """The interpreted kernels pass (fp32 route: tf32x3 by default without a measurement); the
    check runs once per configuration: later calls launch only the forward."""
    U, x = data(6, 3)
    Counting.calls = 0
    engine = EnsembleForward(Counting("relu"), precision="fp32", kernel="auto", chunk_size=4)
    got = engine(U, x)
    assert engine.kernel == "triton" and engine.fused_mode == K.ROUTES["fp32"][0]
    ref = EnsembleForward(PaperCNNSpec("relu"), kernel="torch")(U.double(), x.double())
    assert ((got.double() - ref).abs().max() / ref.abs().max()).item() < ensemble.PRECISION_TOLERANCE["fp32"]
    assert Counting.calls == 2          # the check, then the forward
    engine(U, x)
    assert Counting.calls == 3 and capsys.readouterr().err == ""


@pytest.mark.usefixtures("auto_is_fused")
def test_an_untested_triton_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(K, "untested_triton", lambda: "Triton 9.1.0 is not one of the tested releases 3.6, 3.8")
    U, x = data()
    engine = EnsembleForward(PaperCNNSpec("tanh"), kernel="auto")
    engine(U, x)
    err = capsys.readouterr().err.strip().splitlines()
    assert engine.kernel == "torch" and len(err) == 1 and "Triton 9.1.0" in err[0]
    with pytest.raises(ConfigError, match="Triton 9.1.0 is not one of the tested"):
        EnsembleForward(PaperCNNSpec("tanh"), kernel="triton")(U, x)


def test_the_tested_triton_releases_are_named_by_minor_version(monkeypatch):
    import triton

    monkeypatch.setattr(triton, "__version__", "3.6.0")
    assert K.untested_triton() is None
    monkeypatch.setattr(triton, "__version__", "3.7.1")
    assert "3.7.1" in K.untested_triton()


def test_launcher_prerequisites_name_the_missing_piece(monkeypatch, tmp_path):
    import sysconfig

    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"include": str(tmp_path)})
    missing = K.launcher_prerequisites()
    assert any("CC=no-such-compiler-xyz" in m for m in missing)
    assert any("Python.h" in m and str(tmp_path) in m for m in missing)
    (tmp_path / "Python.h").write_text("")
    monkeypatch.delenv("CC")
    assert not any("Python.h" in m or "compiler" in m for m in K.launcher_prerequisites())


def test_missing_launcher_prerequisites_stop_the_fused_path_on_cuda(monkeypatch):
    """On a CUDA device with compiled kernels the prerequisites are checked before any launch
    (no device is touched by this check)."""
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(K, "launcher_prerequisites", lambda: ["a C compiler (gcc or clang, or set CC)"])
    why = ensemble.static_problem(torch.device("cuda"))
    assert why is not None and "launcher" in why and "a C compiler" in why
    assert ensemble.static_problem(torch.device("cpu")) is None        # interpreter/CPU: no launcher


def test_measured_plans_are_cached_by_device_versions_model_batch_and_precision(monkeypatch):
    """Where the engine measures (CUDA), the chosen kernel mode, configurations and chunk go to
    the cache folder; a new process (here: a new engine with the in-memory state cleared) reads
    them instead of measuring again. The chunk candidates keep the number of chunks bounded."""
    calls = []

    def fake_select(U, x, activation, pool_conv2, precision, reference, chunk=None):
        calls.append(precision)
        return {"mode": "fp32", "conv1": K.CONV1_CONFIGS[3].name, "conv2": K.CONV2_CONFIGS[1].name, "ms": 1.0,
                "modes": {"fp32": {"ms": 1.0, "error": 1e-7, "best": None}}}

    probed = []

    def fake_probe(run, sizes, timer=None, per_member=True):
        probed.append(list(sizes))
        return sizes[-1]

    dev = torch.device("cpu")
    engine = EnsembleForward(PaperCNNSpec("tanh"), precision="fp32", device=dev, kernel="triton")
    fresh = EnsembleForward(PaperCNNSpec("tanh"), precision="fp32", device=dev, kernel="triton")
    monkeypatch.setattr(K, "select_mode", fake_select)
    monkeypatch.setattr(K, "interpreting", lambda: False)
    monkeypatch.setattr(ensemble, "probe_chunk", fake_probe)
    monkeypatch.setattr(ensemble, "device_name", lambda device: "Fake GPU sm_90")
    monkeypatch.setattr(ensemble, "static_problem", lambda device: None)
    monkeypatch.setattr(engine.gate, "_verify", lambda U, x, plan, chunk: None)
    cpu_is_cuda = torch.device("cuda")
    engine.device = cpu_is_cuda                              # what is measured is faked above
    U, x = torch.zeros(3000, 18050), torch.zeros(4, 1, 28, 28)
    plan = engine.gate.plan(U, x)
    assert plan == {"mode": "fp32", "chunk": 3000} and calls == ["fp32"]
    assert probed and min(probed[0]) >= -(-3000 // ensemble.FUSED_MAX_CHUNKS)
    cache = json.loads((ensemble._cache_file()).read_text())
    (key, entry), = [(k, v) for k, v in cache.items() if k.startswith("Fake GPU sm_90|")]
    assert f"torch {torch.__version__}" in key and f"triton {K.triton_version()}" in key
    assert "paper_cnn:tanh" in key and key.endswith("|B4|fp32")
    assert entry["mode"] == "fp32" and entry["chunks"] == {"3000": 3000}
    fresh.device = cpu_is_cuda
    monkeypatch.setattr(fresh.gate, "_verify", lambda U, x, plan, chunk: None)
    assert fresh.gate.plan(U, x) == plan and calls == ["fp32"] and len(probed) == 1
    assert K.default_configs(4, "fp32") == (K.CONV1_CONFIGS[3], K.CONV2_CONFIGS[1])
    K._TUNED.clear()
    assert os.environ["ENKF_REPRO_CACHE"] in str(ensemble._cache_file())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_on_cuda_auto_measures_checks_and_uses_the_fused_kernels(monkeypatch, precision):
    """On a GPU: kernel=auto keeps the fused kernels after measuring and checking them, in a
    kernel mode of the precision's route, within the precision's tolerance of float64; the
    measured plan is in the cache file."""
    monkeypatch.delenv("TRITON_INTERPRET")
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    U = torch.randn(600, 18050, generator=g, device=dev) * 0.1
    x = torch.rand(64, 1, 28, 28, generator=g, device=dev)
    engine = EnsembleForward(PaperCNNSpec("logistic"), precision=precision, device=dev, kernel="auto")
    got = engine(U, x)
    assert engine.kernel == "triton" and engine.fused_mode in K.ROUTES[precision]
    ref = EnsembleForward(PaperCNNSpec("logistic"), device=dev, kernel="torch")(U.double(), x.double())
    assert ((got.double() - ref).abs().max() / ref.abs().max()).item() <= ensemble.PRECISION_TOLERANCE[precision]
    cache = json.loads(ensemble._cache_file().read_text())
    entry = next(v for k, v in cache.items() if k.endswith(f"|B64|{precision}") and "paper_cnn:logistic" in k)
    assert entry["mode"] == engine.fused_mode and entry["chunks"][str(600)] == engine.chunk_for(64)
