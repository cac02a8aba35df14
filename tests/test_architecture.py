"""The package's layers, read from its source (ast, nothing imported): imports point down only,
no module takes part in an import circle, and the numerics import no I/O, Hydra or run
management."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "enkf_repro"

# Layer of each package or module; a module may import from its own layer or below.
LAYERS = {
    "enkf_repro.errors": 0,
    "enkf_repro.config": 1,
    "enkf_repro.data": 2, "enkf_repro.models": 2,
    "enkf_repro.optim": 3,
    "enkf_repro.experiments": 4,
    "enkf_repro.runs": 5,
    "enkf_repro.report": 6,
    "enkf_repro.api": 7, "enkf_repro.bench": 7,
    "enkf_repro.cli": 8,
    "enkf_repro.__main__": 9, "enkf_repro": 9,
}
NUMERICS = ("enkf_repro.optim", "enkf_repro.models", "enkf_repro.data")
NOT_IN_NUMERICS = ("hydra", "pandas", "matplotlib", "tqdm", "enkf_repro.config.compose", "enkf_repro.runs",
                   "enkf_repro.experiments", "enkf_repro.report")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports, at any depth of its file (function-level imports included),
    resolved to package modules where they are ones (``from . import x`` -> the module x)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                out.add(full if full in known else base)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {n: {i for i in imports_of(n, p, known) if i in known and i != n} for n, p in mods.items()}


def layer(name: str) -> int:
    best = max((k for k in LAYERS if name == k or name.startswith(k + ".")), key=len)
    return LAYERS[best]


def test_every_module_has_a_layer():
    assert all(layer(m) is not None for m in modules())


def test_imports_point_down_the_layers():
    up = [(m, i) for m, deps in graph().items() for i in deps
          if layer(i) > layer(m) and not (m == "enkf_repro" or i == "enkf_repro")]
    assert not up, "imports that run up the layers: " + ", ".join(f"{a} -> {b}" for a, b in up)


def test_no_import_circles():
    g = graph()
    # a package's __init__ importing its own modules is not a circle of the code's structure
    g = {m: {i for i in deps if not (m == i.rpartition(".")[0] and modules()[m].name == "__init__.py")}
         for m, deps in g.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    counter = [0]

    def strongconnect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in g:
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import circles: {cycles}"


def test_numerics_import_no_io_hydra_or_run_management():
    mods = modules()
    known = set(mods)
    bad = []
    for name, path in mods.items():
        if name.startswith(NUMERICS):
            for i in imports_of(name, path, known):
                if any(i == b or i.startswith(b + ".") for b in NOT_IN_NUMERICS):
                    bad.append(f"{name} -> {i}")
    assert not bad, "numerics importing I/O or run code: " + ", ".join(bad)


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The walker itself: a two-module circle and an import from optim up to runs are found."""
    import sys

    pkg = tmp_path / "enkf_repro"
    (pkg / "optim").mkdir(parents=True)
    (pkg / "runs").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "optim" / "__init__.py").write_text("")
    (pkg / "runs" / "__init__.py").write_text("")
    (pkg / "optim" / "a.py").write_text("from . import b\nfrom ..runs import loop\n")
    (pkg / "optim" / "b.py").write_text("def f():\n    from .a import x\n")
    (pkg / "runs" / "loop.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    g = graph()
    assert "enkf_repro.optim.b" in g["enkf_repro.optim.a"] and "enkf_repro.optim.a" in g["enkf_repro.optim.b"]
    assert "enkf_repro.runs.loop" in g["enkf_repro.optim.a"]
    for check in (test_no_import_circles, test_imports_point_down_the_layers):
        try:
            check()
        except AssertionError:
            continue
        raise AssertionError(f"{check.__name__} did not catch the planted fault")


def test_a_method_is_one_module_and_one_yaml(tmp_path):
    """In a copy of the package: removing the never-look-back method is removing optim/haber.py and
    configs/optimizer/haber.yaml, and a new method is one new module plus one YAML file, which
    ``optimizer=<name>`` then composes and trains with no other file touched; what its config
    declares (a neutral key, positive keys, a cross-field check, the section it reads, its cost) is
    what the run identity, the validation, the cost model and the library API then use."""
    import shutil
    import subprocess
    import sys

    repo = PKG.parent
    shutil.copytree(PKG, tmp_path / "enkf_repro", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(repo / "configs", tmp_path / "configs")
    (tmp_path / "enkf_repro" / "optim" / "haber.py").unlink()
    (tmp_path / "configs" / "optimizer" / "haber.yaml").unlink()
    (tmp_path / "enkf_repro" / "optim" / "signsgd.py").write_text("""
from dataclasses import dataclass

import torch

from ..config.schema import Cost, MethodConfig
from ..config.validate import check
from .base import SingleNetworkMethod, register_method


@dataclass
class SignConfig(MethodConfig):
    name: str = "signsgd"
    lr: float = 0.01
    decay: float = 1.0            # added later: lr * decay^n; 1 reproduces the earlier runs

    neutral = {"decay": 1.0}
    positive = ("lr", "decay")
    reads = ("instrument",)       # its runs log the step size unless instrument.enabled=false

    def check(self, cfg):
        check(cfg.train.batch_size >= 2, "train.batch_size", cfg.train.batch_size, "at least 2 for signsgd")

    def cost(self, run):
        return Cost(run.batches * run.batch_size * 2.0 * run.forward_flops, run.batches, "step")


class SignDescent(SingleNetworkMethod):
    def __init__(self, opt, ctx):
        self.config, self.model, self.K, self.lr = opt, ctx.model, 1, opt.lr
        self.log_lr = ctx.instrument.enabled
        self.theta = ctx.model.init(1, ctx.init, ctx.generator, ctx.device)[0]

    def step(self, x, y):
        theta = self.theta.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(self.model.forward(theta, x), y.argmax(1))
        loss.backward()
        self.theta = (theta - self.lr * theta.grad.sign()).detach()
        self.lr *= self.config.decay
        return {"train_loss": float(loss.detach())}

    def rows(self, iteration, epoch):
        return [{"iteration": iteration, "metric": "lr", "value": self.lr}] if self.log_lr else []


register_method("signsgd", SignConfig, SignDescent)
""")
    (tmp_path / "configs" / "optimizer" / "signsgd.yaml").write_text("defaults:\n  - signsgd_schema\n")
    probe = """
import torch
from enkf_repro.api import compose, method_names, train
from enkf_repro.config.identity import config_hash, to_plain
from enkf_repro.config.validate import validate
from enkf_repro.errors import ConfigError
from enkf_repro.models.ensemble import EnsembleForward
from enkf_repro.models.registry import build_model
from enkf_repro.optim import METHODS
from enkf_repro.optim.base import make_method
from enkf_repro.runs.cost import estimate_cost, run_size

assert "haber" not in METHODS and "signsgd" in method_names(), method_names()
ov = ["optimizer=signsgd", "optimizer.lr=0.5", "model=dnn1"]
cfg = compose(ov)
validate(cfg)
model = build_model(cfg.model)
m = make_method(cfg, model, EnsembleForward(model), torch.Generator().manual_seed(0), "cpu")
assert type(m.config).__name__ == "SignConfig" and m.config.lr == 0.5 and m.log_lr
x, y = torch.rand(8, 1, 28, 28), torch.eye(10)[torch.arange(8)]
before = m.eval_params()[""].clone()
m.step(x, y)
assert not torch.equal(before, m.eval_params()[""]) and m.lr == 0.5
# identity: the neutral key at its neutral value keeps the id of a config made before it existed
old = to_plain(cfg)
del old["optimizer"]["decay"]
assert config_hash(old) == config_hash(cfg)
assert config_hash(compose(ov + ["optimizer.decay=0.9"])) != config_hash(cfg)
# the section it reads is part of its identity (and of no method that does not read it)
assert config_hash(compose(ov + ["instrument.enabled=false"])) != config_hash(cfg)
assert config_hash(compose(["optimizer=enkf", "instrument.enabled=false"])) == config_hash(compose(["optimizer=enkf"]))
# validation: its positive keys and its own check
for bad, key in (("optimizer.lr=0", "optimizer.lr=0"), ("optimizer.decay=-1", "optimizer.decay=-1"),
                 ("train.batch_size=1", "at least 2 for signsgd")):
    try:
        validate(compose(ov + [bad]))
    except ConfigError as e:
        assert key in str(e), str(e)
    else:
        raise AssertionError(bad + " passed validation")
# the cost model asks the method
run = run_size(cfg)
assert tuple(estimate_cost(cfg)) == (run.batches * run.batch_size * 2.0 * run.forward_flops, run.batches, "step")
# the library entry: the section it reads gives it options (hist_every); enkf has none of them
data = (torch.randn(32, 4), torch.arange(32) % 3)
net = torch.nn.Linear(4, 3)
r = train(net, data, method="signsgd", lr=0.1, decay=0.5, batch_size=8, epochs=1, hist_every=3, progress=False,
          device="cpu", **{"instrument.enabled": True})
lrs = r.history[r.history.metric == "lr"].sort_values("iteration")["value"].tolist()
assert r.config.instrument.hist_every == 3 and lrs == [0.1 * 0.5 ** n for n in range(1, 5)], lrs
try:
    train(net, data, method="enkf", hist_every=3)
except ConfigError as e:
    assert "hist_every" in str(e)
else:
    raise AssertionError("hist_every is an option of enkf")
try:
    compose(["optimizer=haber"])
except Exception as e:
    assert "haber" in str(e)
else:
    raise AssertionError("optimizer=haber still composes")
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
                          timeout=300)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_a_figure_is_one_module_and_one_yaml(tmp_path, synthetic_root):
    """In a copy of the package: a new figure is one module in experiments/ (its settings, variants,
    drawing, the paper's numbers and claims) plus one YAML in configs/figure/; it composes with its
    own typed settings, plans, runs, draws and is judged with no other file touched."""
    import shutil
    import subprocess
    import sys

    repo = PKG.parent
    shutil.copytree(PKG, tmp_path / "enkf_repro", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(repo / "configs", tmp_path / "configs")
    (tmp_path / "enkf_repro" / "experiments" / "gamma_sweep.py").write_text('''
from dataclasses import dataclass, field
from typing import List

import matplotlib.pyplot as plt

from ..config.schema import FigureSettings
from .base import Claim, Figure, PaperNumber, Variant, register
from .draw import band, metric


@dataclass
class GammaSettings(FigureSettings):
    gammas: List[float] = field(default_factory=lambda: [0.01, 0.1])


def variants(cfg, s):
    return [Variant(f"gamma{g:g}", {"optimizer.gamma": g}) for g in s.gammas]


def plot(df, cfg):
    fig, ax = plt.subplots()
    for i, (series, d) in enumerate(metric(df, "test_error").groupby("series")):
        band(ax, d, str(series), f"C{i}")
    return fig


def final(df, cfg):
    err = metric(df, "test_error")
    return float(err.sort_values("iteration").groupby("run_dir").tail(1)["value"].mean())


register(Figure(id="gamma_sweep", config="gamma_sweep", settings=GammaSettings, title="EnKF over gamma",
                description="EnKF at two observation-noise levels", variants=variants, plot=plot,
                paper_numbers=(PaperNumber("final test error (%)", 50.0, final),),
                claims=(Claim("a final error is below chance", lambda df, cfg: ("read", final(df, cfg) < 90),
                              sentence="not a claim of the paper", unit="the run's end", threshold="< 90 %"),)))
''')
    (tmp_path / "configs" / "figure" / "gamma_sweep.yaml").write_text("""# @package _global_
defaults:
  - /figure_settings@figure.paper: gamma_sweep
  - /figure_settings@figure.smoke: gamma_sweep
  - override /optimizer: enkf
figure:
  id: gamma_sweep
  smoke:
    gammas: [0.01, 0.5]
    overrides:
      optimizer: {ensemble_size: 6}
      train: {max_batches: 2, eval_every: 8}
      dataset: {test_size: 64}
""")
    probe = f"""
from enkf_repro.api import compose
from enkf_repro.errors import ConfigError
from enkf_repro.experiments import get_figure
from enkf_repro.report.findings import judge, measure
from enkf_repro.report.render import plot_figure
from enkf_repro.runs.folder import read_runs
from enkf_repro.runs.runner import plan, run_figure

cfg = compose(["figure=gamma_sweep", "scale=smoke", "dataset.root={synthetic_root}", "out_dir={tmp_path / 'out'}",
               "progress=false"])
assert [s.label for s in plan(cfg)] == ["gamma0.01", "gamma0.5"]
assert [s.cfg.optimizer.gamma for s in plan(cfg)] == [0.01, 0.5]
try:
    compose(["figure=gamma_sweep", "figure.smoke.gamas=[1]"])
except ConfigError as e:
    assert "did you mean 'gammas'" in str(e), str(e)
else:
    raise AssertionError("a misspelt figure setting composed")
folder = run_figure(cfg)
png, pdf = plot_figure(cfg)
df = read_runs(folder)
fig = get_figure("gamma_sweep")
assert measure(fig, cfg, df)[0].value is not None and judge(fig, cfg, df)[0].holds in (True, False)
print("ok", png.name)
"""
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0 and "ok gamma_sweep.png" in out.stdout, out.stderr[-3000:]


def test_only_runs_names_the_files_of_a_run_folder():
    """A run folder's files are runs/folder.py's (and the loop's, which writes through it): no
    module outside runs/ names them, in code or docstrings."""
    names = ("done.json", "metrics.csv", "params.pt", "checkpoint.pt")
    bad = [f"{name}: {n}" for name, path in modules().items() if not name.startswith("enkf_repro.runs")
           for n in names if n in path.read_text()]
    assert not bad, "run files named outside runs/: " + ", ".join(bad)
