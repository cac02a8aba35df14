"""The EnsembleKalmanProcesses-style controls wired into the methods: EKI's step schedulers (the
default bit for bit as before), ETKI as a method, inflation in every ensemble method, the loop
stopping when a method is finished, checkpoints of the schedulers; and known-solution tests
through ``enkf_repro.train`` on a linear inverse problem (the pure numerics are tested in
test_ekp_numerics.py).

The linear problem: the "network" is ``nn.Linear(4, 3, bias=False)`` (P = 12, the generic
custom-model path), the data 60 inputs x_i with labels, the observation the one-hot labels, so
G(theta) = A theta is linear and one mini-batch holds the whole data set. With the ensemble's
initial Gaussian N(m0, C0) (J = 40 > P, drawn as the loop draws it) the answers are closed-form:

- ETKI with a fixed dt is an exact Kalman update; n steps compose to the posterior with
  Gamma / (n dt), and the mean converges to the least-squares solution like 1/n;
- ETKI with the data-misfit controller stops at T = 1 at the posterior with Gamma (the
  Tikhonov-regularised solution);
- the EnKF (deterministic, ``update_mode=batch``, r = 1) equals EKI's Kalman form with dt = 1;
  its precision grows as P + 2 h S + h^2 S P^-1 S (S = A^T Gamma^-1 A), so its mean converges to
  the least-squares solution like n^-1/2;
- EKI with the data-misfit controller takes exactly the Kalman-form steps it logs; with
  ``on_terminate=continue`` the controller's steps grow as the ensemble collapses and the mean
  reaches the least-squares solution.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import TINY_FIG8, compose_run
from enkf_repro import train
from enkf_repro.errors import ConfigError
from enkf_repro.models.custom import spec_for_module
from enkf_repro.models.ensemble import EnsembleForward
from enkf_repro.models.registry import build_model
from enkf_repro.optim.base import make_method
from enkf_repro.optim.eki import eki_frobenius, eki_kalman_step_, eki_loss_grad
from enkf_repro.optim.enkf import enkf_update
from enkf_repro.optim.inflation import multiplicative_factor, multiplicative_inflation_
from enkf_repro.optim.linalg import apply_low_rank_
from enkf_repro.runs.folder import RunFolder

N, NIN, C, J = 60, 4, 3, 40
GAMMA = 0.5


@pytest.fixture(scope="module")
def linear():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, NIN, generator=g)
    W = torch.randn(C, NIN, generator=g)
    y = (x @ W.T + 0.5 * torch.randn(N, C, generator=g)).argmax(1)
    A = torch.zeros(N * C, C * NIN, dtype=torch.float64)        # G(theta) = A theta, theta = W row-major
    for c in range(C):
        A[c::C, c * NIN:(c + 1) * NIN] = x.double()
    Y = F.one_hot(y, C).double()
    ls = torch.linalg.lstsq(A, Y.flatten()).solution
    return {"x": x, "y": y, "A": A, "Y": Y, "ls": ls, "net": nn.Linear(NIN, C, bias=False)}


def fit(lin, method, n, **options):
    """train() on the linear problem: the whole data set as one batch, n iterations."""
    opts = dict(ensemble_size=J, batch_size=N, sigma=1.0, progress=False, device="cpu", num_classes=C, epochs=n,
                eval_every=n)
    opts.update(options)
    return train(lin["net"], (lin["x"], lin["y"]), (lin["x"], lin["y"]), method=method, **opts)


def initial_ensemble(lin, result):
    """The loop's initial ensemble: the init prior drawn with the run's seeded generator."""
    spec = spec_for_module(lin["net"], (NIN,))
    gen = torch.Generator().manual_seed(int(result.config.seed))
    return spec.init(J, result.config.init, gen, "cpu", ensemble=True).double()


def posterior_mean(lin, U0, gamma):
    m0 = U0.mean(0)
    C0 = (U0 - m0).T @ (U0 - m0) / J
    A = lin["A"]
    cov = torch.linalg.inv(torch.linalg.inv(C0) + A.T @ A / gamma)
    return cov @ (torch.linalg.solve(C0, m0) + A.T @ lin["Y"].flatten() / gamma)


def mean_of(result):
    return result.networks[""].double()


# -- known solutions through train() ---------------------------------------------------------------
def test_etki_fixed_dt_is_the_tempered_posterior_and_converges_like_1_over_n(linear):
    errs = {}
    for n in (10, 40, 160):
        r = fit(linear, "etki", n, gamma=GAMMA)
        m = mean_of(r)
        expected = posterior_mean(linear, initial_ensemble(linear, r), GAMMA / n)
        assert torch.allclose(m, expected, rtol=0, atol=1e-5)
        errs[n] = float((m - linear["ls"]).norm())
    for a, b in ((10, 40), (40, 160)):
        assert 0.2 < errs[b] / errs[a] < 0.3, errs                     # O(1/n)


def test_etki_with_the_data_misfit_controller_stops_at_the_regularised_solution(linear):
    r = fit(linear, "etki", 50, gamma=GAMMA, scheduler="data_misfit", eval_every=1)
    assert "terminal time T = 1" in r.summary["stopped_early"]
    last = int(r.history["iteration"].max())
    assert last < 50 and r.summary["iterations"] == last              # ended before the budget
    t = r.history[r.history.metric == "algorithm_time"].sort_values("iteration")["value"]
    assert float(t.iloc[-1]) == 1.0 and float(t.iloc[0]) < 1.0
    post = posterior_mean(linear, initial_ensemble(linear, r), GAMMA)
    assert torch.allclose(mean_of(r), post, rtol=0, atol=1e-5)
    assert float((post - linear["ls"]).norm()) > 1e-3                  # regularised, not least squares


def test_enkf_is_ekis_kalman_form_and_converges_like_inverse_sqrt_n(linear):
    errs = {}
    for n in (160, 640):
        r = fit(linear, "enkf", n, gamma=GAMMA, update_mode="batch", repetitions=1)
        errs[n] = float((mean_of(r) - linear["ls"]).norm())
    assert 0.4 < errs[640] / errs[160] < 0.65, errs                    # O(n^-1/2)
    enkf = fit(linear, "enkf", 20, gamma=GAMMA, update_mode="batch", repetitions=1)
    eki = fit(linear, "eki", 20, gamma=GAMMA, loss="mse", scheduler="fixed", dt=1.0, best_of=0)
    assert torch.allclose(mean_of(enkf), mean_of(eki), rtol=0, atol=1e-6)


def test_eki_with_the_data_misfit_controller_takes_the_steps_it_logs_and_reaches_least_squares(linear):
    r = fit(linear, "eki", 50, gamma=GAMMA, loss="mse", scheduler="data_misfit", eval_every=1, best_of=0)
    steps = r.history[r.history.metric == "step_size"].sort_values("iteration")["value"].tolist()
    assert r.summary.get("stopped_early") and sum(steps) == pytest.approx(1.0, abs=1e-12)
    U = initial_ensemble(linear, r)
    for h in steps:                                                    # replay in float64
        G = (U.view(J, C, NIN) @ linear["x"].double().T).transpose(1, 2)
        eki_kalman_step_(U, G, linear["Y"], GAMMA, h)
    assert torch.allclose(mean_of(r), U.mean(0), rtol=0, atol=1e-5)
    cont = fit(linear, "eki", 40, gamma=GAMMA, loss="mse", scheduler="data_misfit", on_terminate="continue",
               best_of=0)
    assert float((mean_of(cont) - linear["ls"]).norm()) < 1e-3 * float(linear["ls"].norm())


# -- EKI's default is unchanged ----------------------------------------------------------------------
def old_eki_step_(U, G, Y, h0, eps, loss, delta):
    """The EKI step as written before the schedulers: h = h0 / (||D||_F + eps) inline."""
    J_ = G.shape[0]
    G64 = G.to(torch.float64)
    psi, grad = eki_loss_grad(G64, Y.to(torch.float64), loss, delta)
    A = grad.reshape(J_, -1)
    Z = (G64 - G64.mean(0, keepdim=True)).reshape(J_, -1)
    h = h0 / (eki_frobenius(A, Z) + eps)
    apply_low_rank_(U, A * (-h / J_), Z)
    return h


def _method(overrides, J_=12):
    cfg = compose_run(["optimizer=eki", "model=dnn1", f"optimizer.ensemble_size={J_}", *overrides])
    model = build_model(cfg.model)
    forward = EnsembleForward(model, 8)
    return make_method(cfg, model, forward, torch.Generator().manual_seed(0), torch.device("cpu")), forward, cfg


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_default_eki_steps_are_bit_for_bit_the_old_formula(loss):
    meth, forward, cfg = _method([f"optimizer.loss={loss}", "optimizer.best_of=0"])
    assert meth.form == "euler" and meth.scheduler.name == "kovachki_stuart"
    U = meth.U.clone()
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.rand(16, 1, 28, 28, generator=g)
        y = F.one_hot(torch.randint(0, 10, (16,), generator=g), 10).float()
        meth.step(x, y)
        G = forward(U, x)
        h = old_eki_step_(U, torch.softmax(G, -1) if loss == "cross_entropy" else G, y, 2.0, 0.5, loss, 0.005)
        assert meth.last["step_size"] == h
        assert torch.equal(meth.U, U)


def test_earlier_runs_keep_their_ids():
    """The hashes of these configs before the schedulers, inflation and custom models existed."""
    from enkf_repro.api import compose
    from enkf_repro.config.identity import config_hash

    known = {("figure=8", "scale=smoke"): "97265af995c1", ("optimizer=eki", "model=dnn2"): "42a2f1e27f2b",
             ("optimizer=eki", "optimizer.randomize=true"): "cba45a14663c", ("optimizer=sgd",): "81d4c1162bc8",
             ("optimizer=haber",): "04e8821e7a6a", ("optimizer=ienk_simple", "model=mlp"): "df4e3a077f2e",
             ("optimizer=enkf", "optimizer.adaptive.enabled=true"): "4e7fd34ae714"}
    for ov, h in known.items():
        assert config_hash(compose(list(ov))) == h, ov
    assert config_hash(compose(["optimizer=eki", "optimizer.scheduler=fixed"])) != known[("optimizer=eki",
                                                                                         "model=dnn2")]


# -- checkpoints of the schedulers --------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [
    ["optimizer.scheduler=data_misfit", "optimizer.on_terminate=continue", "optimizer.terminate_at=0.5"],
    ["optimizer.scheduler=data_misfit", "optimizer.misfit_clock=batch"],
    ["optimizer.scheduler=fixed", "optimizer.dt=0.3"],
])
@pytest.mark.parametrize("method", ["eki", "etki"])
def test_scheduler_state_survives_a_checkpoint(tmp_path, method, overrides):
    def fresh():
        cfg = compose_run([f"optimizer={method}", "model=dnn1", "optimizer.ensemble_size=10", *overrides])
        model = build_model(cfg.model)
        return make_method(cfg, model, EnsembleForward(model, 8), torch.Generator().manual_seed(0),
                           torch.device("cpu"))

    g = torch.Generator().manual_seed(2)
    batches = [(torch.rand(8, 1, 28, 28, generator=g), F.one_hot(torch.randint(0, 10, (8,), generator=g), 10).float())
               for _ in range(6)]
    whole, half = fresh(), fresh()
    for x, y in batches:
        whole.step(x, y)
    for x, y in batches[:3]:
        half.step(x, y)
    torch.save(half.state_dict(), tmp_path / "state.pt")
    resumed = fresh()
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    assert resumed.scheduler.state_dict() == half.scheduler.state_dict()
    for x, y in batches[3:]:
        resumed.step(x, y)
    assert torch.equal(resumed.U, whole.U)
    assert resumed.scheduler.state_dict() == whole.scheduler.state_dict()
    assert json.loads(json.dumps(whole.scheduler.state_dict())) == whole.scheduler.state_dict()


# -- the loop ends a finished method's run cleanly ---------------------------------------------------
def test_run_stops_when_the_controller_reaches_T(cli, synthetic_root, tmp_path):
    out = tmp_path / "out"
    proc = cli("run", "optimizer=etki", "optimizer.scheduler=data_misfit", "optimizer.ensemble_size=8",
               "train.max_batches=10", "train.eval_every=50", f"dataset.root={synthetic_root}", "scale=smoke",
               f"out_dir={out}", "progress=false", check=True)
    assert "stopped at iteration" in proc.stderr and "terminal time T = 1" in proc.stderr
    (run,) = (out / "smoke" / "runs").iterdir()
    done = json.loads((run / "done.json").read_text())
    assert done["status"] == "finished" and done["iterations"] < 10 and "T = 1" in done["stopped_early"]
    rows = RunFolder(run).rows_bytes().decode().splitlines()
    assert any(",algorithm_time,1.0," in r for r in rows)
    assert (run / "params.pt").is_file() and not (run / "checkpoint.pt").exists()


def test_etki_end_to_end_smoke(cli, synthetic_root, tmp_path):
    from enkf_repro import read_runs

    out = tmp_path / "out"
    cli("run", "optimizer=etki", "optimizer.outputs=softmax", "optimizer.gamma=0.1", "optimizer.scheduler=data_misfit",
        "optimizer.misfit_clock=batch", "optimizer.ensemble_size=12", "train.max_batches=6", "train.eval_every=3",
        f"dataset.root={synthetic_root}", "scale=smoke", f"out_dir={out}", "progress=false", check=True)
    df = read_runs(out)
    err = df[df.metric == "test_error"].sort_values("iteration")["value"].tolist()
    assert len(err) == 3 and err[-1] < err[0]
    steps = df[df.metric == "step_size"]["value"]
    assert ((steps > 0) & (steps <= 1.0)).all()                        # the per-batch clock caps each step at T
    assert set(df["optimizer"]) == {"etki"} and df.finished.all()


# -- inflation ---------------------------------------------------------------------------------------
def _enkf(overrides):
    cfg = compose_run(["optimizer=enkf", "model=dnn1", "optimizer.ensemble_size=10", "optimizer.update_mode=batch",
                       *overrides])
    model = build_model(cfg.model)
    forward = EnsembleForward(model, 8)
    return make_method(cfg, model, forward, torch.Generator().manual_seed(0), torch.device("cpu")), forward


def _batch():
    g = torch.Generator().manual_seed(3)
    return torch.rand(8, 1, 28, 28, generator=g), F.one_hot(torch.randint(0, 10, (8,), generator=g), 10).float()


@pytest.mark.parametrize("overrides,factor", [
    ([], 1.0),
    (["optimizer.inflation.multiplicative=1.05"], 1.05),
    (["optimizer.inflation.multiplicative=0.2", "optimizer.inflation.multiplicative_form=ekp"],
     multiplicative_factor(0.2, 1.0)),
])
def test_multiplicative_inflation_after_the_enkf_update(overrides, factor):
    meth, forward = _enkf(overrides)
    U0 = meth.U.clone()
    x, y = _batch()
    meth.step(x, y)
    expected = enkf_update(U0, forward(U0, x), y, meth.gamma, "batch")
    if factor != 1.0:
        multiplicative_inflation_(expected, factor)
        assert meth.inflation.enabled
    else:
        assert not meth.inflation.enabled                              # off: the update alone, bit for bit
    assert torch.equal(meth.U, expected)


def test_additive_inflation_widens_the_ensemble_and_keep_mean_keeps_its_mean():
    plain, _ = _enkf([])
    infl, _ = _enkf(["optimizer.inflation.additive=0.3", "optimizer.inflation.additive_keep_mean=true"])
    ens, _ = _enkf(["optimizer.inflation.additive=0.3", "optimizer.inflation.additive_covariance=ensemble"])
    x, y = _batch()
    for m in (plain, infl, ens):
        m.step(x, y)
    assert float(infl.U.std(0).mean()) > 1.2 * float(plain.U.std(0).mean())
    assert torch.allclose(infl.U.mean(0), plain.U.mean(0), atol=1e-5)
    # the ensemble's own covariance: the noise is a combination of the members' deviations
    D = (plain.U - plain.U.mean(0)).double()
    delta = (ens.U - plain.U).double()
    coef = torch.linalg.lstsq(D.T, delta.T).solution
    assert float(delta.norm()) > 0 and float((D.T @ coef - delta.T).norm()) < 1e-4 * float(delta.norm())


def test_eki_inflation_uses_the_steps_dt():
    a, forward, _ = _method(["optimizer.best_of=0", "optimizer.inflation.multiplicative=0.05",
                             "optimizer.inflation.multiplicative_form=ekp"])
    x, y = _batch()
    U = a.U.clone()
    a.step(x, y)
    h = old_eki_step_(U, torch.softmax(forward(U, x), -1), y, 2.0, 0.5, "cross_entropy", 0.005)
    multiplicative_inflation_(U, multiplicative_factor(0.05, h))
    assert a.dt == h and torch.allclose(a.U, U, atol=1e-6)


@pytest.mark.parametrize("override,match", [
    ("optimizer.inflation.multiplicative=0.5", "factor >= 1"),
    ("optimizer.inflation.additive=1.5", r"s in \[0, 1\)"),
    ("optimizer.scheduler=nope", "optimizer.scheduler"),
    ("optimizer.dt=0", "optimizer.dt"),
])
def test_bad_inflation_and_scheduler_settings_are_one_line_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        compose_run(["optimizer=eki", override])


def test_inflation_is_not_distributed():
    from enkf_repro.runs.distributed import validate_distributed

    cfg = compose_run(["optimizer=enkf", "optimizer.inflation.multiplicative=1.1"])
    with pytest.raises(ConfigError, match="inflation"):
        validate_distributed(cfg)


# -- the methods figure -------------------------------------------------------------------------------
def test_methods_figure_plans_equal_J_and_budget():
    from enkf_repro.runs.runner import plan

    specs = plan(compose_run(["figure=methods", "scale=smoke"]))
    assert [s.label for s in specs] == ["enkf", "eki", "eki_dmc", "eki_r", "eki_r_dmc", "etki", "etki_dmc"]
    assert {s.cfg.optimizer.ensemble_size for s in specs} == {100}
    assert {s.cfg.train.max_batches for s in specs} == {60}
    assert {str(s.cfg.dataset.name.value) for s in specs} == {"fashion_mnist"}
    by = {s.label: s.cfg.optimizer for s in specs}
    assert by["enkf"].repetitions == 1
    assert by["eki_dmc"].scheduler.value == "data_misfit" and by["eki_dmc"].on_terminate.value == "continue"
    assert by["eki_r_dmc"].randomize and by["etki"].scheduler.value == "fixed"
    paper = plan(compose_run(["figure=methods"]))
    assert {s.cfg.optimizer.ensemble_size for s in paper} == {1000} and {s.cfg.train.epochs for s in paper} == {1.0}


def test_methods_figure_end_to_end_tiny(cli, synthetic_root, tmp_path):
    out = tmp_path / "out"
    args = ["figure=methods", "scale=smoke", f"dataset.root={synthetic_root}", "figure.smoke.ensemble_size=6",
            "figure.smoke.optimizers=[enkf,eki_dmc,eki_r,etki_dmc]",
            "figure.smoke.overrides.train.max_batches=4", "figure.smoke.overrides.train.eval_every=2",
            "figure.smoke.overrides.dataset.test_size=100", "progress=false", f"out_dir={out}"]
    cli("run", *args, check=True)
    cli("plot", *args, check=True)
    folder = out / "smoke" / "methods"
    assert (folder / "methods.png").is_file() and (folder / "methods.md").is_file()
    table = (folder / "methods.csv").read_text()
    assert table.count("\n") == 5 and "ETKI + DMC" in table and "EKI(R)" in table
    assert "no source reports" in (folder / "methods.md").read_text()
    from enkf_repro.experiments import figure_ids, get_figure

    assert "methods" in figure_ids() and "our comparison" in get_figure("methods").description


def test_custom_models_run_in_figures(cli, synthetic_root, tmp_path):
    """A figure on a module given by model.target: Figure 8's EnKF runs on it (activation rows
    do not apply to it and compose to identical configs, so one run per J)."""
    out = tmp_path / "out"
    cli("run", *TINY_FIG8, "model=custom", "model.target=custom_nets:TwoLayer", "+model.kwargs.hidden=8",
        f"dataset.root={synthetic_root}", f"out_dir={out}", check=True)
    runs = sorted((out / "smoke" / "fig8").iterdir())
    assert len(runs) >= 2 and all((r / "done.json").is_file() for r in runs)
    assert math.isfinite(float(json.loads((runs[0] / "done.json").read_text())["iterations"]))


def test_params_pt_holds_each_network_alone(cli, synthetic_root, tmp_path):
    """EKI's best member is a row of the ensemble: params.pt stores it as a P-vector, not the view
    that would drag the whole J x P ensemble into the file."""
    out = tmp_path / "out"
    cli("run", "optimizer=eki", "model=dnn2", "optimizer.ensemble_size=40", "train.max_batches=2",
        f"dataset.root={synthetic_root}", "scale=smoke", f"out_dir={out}", "progress=false", check=True)
    (run,) = (out / "smoke" / "runs").iterdir()
    saved = torch.load(run / "params.pt", weights_only=False)
    assert set(saved["params"]) == {"", "best"}
    for theta in saved["params"].values():
        assert theta.dim() == 1
        assert theta.untyped_storage().nbytes() == theta.numel() * theta.element_size()
    assert (run / "params.pt").stat().st_size < 3 * 2 * saved["params"][""].numel() * 4
