"""Backprop baselines and their instrumentation (backprop.py), Figures 1 and 3-7.

Numbers in the instrumentation tests are worked out by hand in the comments."""

from __future__ import annotations

import math
import shutil

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_run
from enkf_repro.config.schema import InstrumentConfig, method_config
from enkf_repro.errors import ConfigError, Interrupted
from enkf_repro.models import PaperCNN
from enkf_repro.optim.instrument import Instrument, grad_hist_edges, histogram_counts, moments, pool_moments
from enkf_repro.report.render import plot_figure
from enkf_repro.runs.folder import RunFolder
from enkf_repro.runs.loop import train_run
from enkf_repro.runs.results import COLUMNS
from enkf_repro.runs.runner import RunSpec, plan, run_figure, run_one


# -- pure functions --------------------------------------------------------------------------
def test_moments_and_pooling_by_hand():
    m = moments(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert m.tolist() == pytest.approx([2.5, math.sqrt(1.25)])  # population std
    # groups {1, 3} (mean 2, std 1) and {5, 7} (mean 6, std 1): union {1, 3, 5, 7}, mean 4, std sqrt(5)
    pooled = pool_moments(torch.tensor([[2.0, 1.0], [6.0, 1.0]]))
    assert pooled.tolist() == pytest.approx([4.0, math.sqrt(5.0)])


def test_histogram_edges_and_counts_by_hand():
    e = grad_hist_edges()
    assert e.numel() == 90 and torch.all(e[1:] > e[:-1])
    assert torch.equal(e[:45], -e[45:].flip(0))
    assert e[45].item() == pytest.approx(1e-10) and e[-1].item() == pytest.approx(10.0)
    assert e[46].item() == pytest.approx(10 ** -9.75)  # 4 bins per decade
    vals = torch.tensor([0.0, 1e-12, -1e-12, 1e-10, 2e-10, -3e-3, 0.5, 20.0, -20.0])
    c = histogram_counts(vals, e)
    assert c.shape == (91,) and int(c.sum()) == vals.numel()
    lower = [-math.inf] + e.tolist()

    def count_in(lo):  # count of the bin whose lower edge is lo
        k = min(range(91), key=lambda i: abs(lower[i] - lo) if math.isfinite(lower[i]) else math.inf)
        return int(c[k])

    assert int(c[0]) == 1 and int(c[-1]) == 1           # -20 below -10, 20 at or above 10
    assert count_in(-1e-10) == 3                         # 0 and +/-1e-12: the zero bin [-1e-10, 1e-10)
    assert count_in(1e-10) == 1                          # the lower edge belongs to its bin
    assert count_in(10 ** -9.75) == 1                    # 2e-10 in [1.78e-10, 3.16e-10)
    assert count_in(-(10 ** -2.5)) == 1                  # -3e-3 in [-3.16e-3, -1.78e-3)
    assert count_in(10 ** -0.5) == 1                     # 0.5 in [0.316, 0.562)


def test_output_means_histogram_of_a_hand_computed_gradient():
    """The published histograms' statistic, grad.mean(0), on a gradient known by hand: for
    L = sum(W x), dL/dW[i, j] = x_j in every row i, so the mean over the output units is x."""
    from enkf_repro.optim.instrument import output_means

    x = torch.tensor([0.5, -0.03, 2e-5, 0.0])
    W = torch.randn(3, 4, requires_grad=True)
    (W @ x).sum().backward()
    assert torch.equal(W.grad, x.expand(3, 4))
    m = output_means(W.grad)
    assert m.tolist() == pytest.approx(x.tolist())
    c = histogram_counts(m, grad_hist_edges())
    lower = [-math.inf] + grad_hist_edges().tolist()
    got = {round(lower[k], 12): int(v) for k, v in enumerate(c.tolist()) if v}
    # 0.5 in [0.316, 0.562), -0.03 in [-0.0316, -0.0178), 2e-5 in [1.78e-5, 3.16e-5), 0 in the zero bin
    assert got == {round(10 ** -0.5, 12): 1, round(-(10 ** -1.5), 12): 1, round(10 ** -4.75, 12): 1, -1e-10: 1}
    # a conv kernel (out, in, k, k) gives in * k * k values: the 25 / 250 of the paper CNN
    assert output_means(torch.ones(10, 1, 5, 5)).shape == (25,)
    assert output_means(torch.ones(20, 10, 5, 5)).shape == (250,)


# -- the recorder on a network with hand-set weights -----------------------------------------
def instrument_cfg(keys: dict) -> InstrumentConfig:
    """The typed ``instrument`` section a backprop method receives, with ``keys`` set."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(InstrumentConfig), keys))


def hand_net() -> PaperCNN:
    """conv1: channels 0-4 all taps 0, channels 5-9 all taps ln(3)/25; conv2 and fc zero.
    On an all-ones image conv1 gives 0 or ln 3, the logistic 1/2 or 3/4 (layer 1: mean 0.625,
    std 0.125); conv2 gives 0 -> 1/2 everywhere (mean 0.5, std 0); the logits are 0 -> softmax
    0.1 everywhere (mean 0.1, std 0). With fc = 0 no gradient reaches conv1 / conv2 (all 0);
    fc's gradient is (softmax - onehot)^T h / B = 0.5 (0.1 - frac_k) in row k."""
    net = PaperCNN("logistic")
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.conv1.weight[5:] = math.log(3.0) / 25
    return net


def one_step(inst: Instrument, net, x, y, step):
    net.zero_grad()
    with inst.capture():
        logits = net(x)
    torch.nn.functional.cross_entropy(logits, y).backward()
    inst.record(step, logits)
    return inst.rows(step)


def test_instrument_per_iteration_rows_by_hand():
    net = hand_net()
    icfg = instrument_cfg({"stats_per": "iteration", "hist_every": 200})
    inst = Instrument(net, icfg, per_epoch=10, total=10, epochs=1.0)
    x, y = torch.ones(4, 1, 28, 28), torch.tensor([0, 0, 1, 2])
    rows = one_step(inst, net, x, y, 1)  # step 1: histogram due, stats flushed with it
    stats = {(r["metric"], r["layer"]): r["value"] for r in rows if not r["metric"].endswith("_hist")}
    # fc gradient rows: k=0: 0.5 (0.1 - 0.5) = -0.2; k=1,2: -0.075; k=3..9: 0.05 -> mean 0,
    # std^2 = (0.04 + 2 * 0.005625 + 7 * 0.0025) / 10 = 0.006875
    expect = {("act_mean", 1): 0.625, ("act_std", 1): 0.125, ("act_mean", 2): 0.5, ("act_std", 2): 0.0,
              ("act_mean", 3): 0.1, ("act_std", 3): 0.0, ("grad_mean", 1): 0.0, ("grad_std", 1): 0.0,
              ("grad_mean", 2): 0.0, ("grad_std", 2): 0.0, ("grad_mean", 3): 0.0,
              ("grad_std", 3): math.sqrt(0.006875)}
    assert stats.keys() == expect.keys()
    for k, v in expect.items():
        assert stats[k] == pytest.approx(v, abs=1e-6), k
    assert all(r["iteration"] == 1 and r["epoch"] == pytest.approx(0.1) for r in rows)
    hist = pd.DataFrame([r for r in rows if r["metric"] == "grad_hist"])
    assert len(hist) == 3 * 91
    assert hist.groupby("layer")["value"].sum().to_dict() == {1: 250, 2: 5000, 3: 12800}
    nz = {(r.layer, round(r.bin, 12)): r.value for r in hist.itertuples() if r.value}
    assert nz == {(1, -1e-10): 250, (2, -1e-10): 5000,              # zero gradients
                  (3, round(-(10 ** -0.5), 12)): 1280,              # -0.2 in [-0.316, -0.178)
                  (3, -0.1): 2560,                                  # -0.075 in [-0.1, -0.0562)
                  (3, round(10 ** -1.5, 12)): 8960}                 # 0.05 in [0.0316, 0.0562)
    # grad.mean(0) at the snapshot (iteration 1): conv gradients are 0 (25 and 250 zeros); the fc
    # gradient's columns sum to 0 over the 10 rows (-0.2 - 2 x 0.075 + 7 x 0.05 = 0): 1280
    # values that are 0 up to float32 rounding
    outm = pd.DataFrame([r for r in rows if r["metric"] == "grad_outmean_hist"])
    assert len(outm) == 3 * 91 and set(outm.iteration) == {1}
    assert outm.groupby("layer")["value"].sum().to_dict() == {1: 25, 2: 250, 3: 1280}
    nz = {(r.layer, round(r.bin, 12)): r.value for r in outm.itertuples() if r.value}
    assert nz[(1, -1e-10)] == 25 and nz[(2, -1e-10)] == 250
    assert all(abs(b) < 1e-6 for (layer, b) in nz if layer == 3)
    # step 2: no histogram, stats held until the flush (every 100 iterations or at the end)
    assert one_step(inst, net, x, y, 2) == [] and len(inst.pending) == 1
    # forward passes outside capture() (evaluation) are not recorded
    before = len(inst._acts)
    net(x)
    assert before == 2 and len(inst._acts) == 2


def test_instrument_per_epoch_pools_and_percentiles_by_hand():
    net = hand_net()
    icfg = instrument_cfg({"stats_per": "epoch", "hist_every": None})
    inst = Instrument(net, icfg, per_epoch=2, total=4, epochs=2.0)
    assert inst.hist_every == 2  # one epoch
    y = torch.tensor([0, 0, 1, 2])
    # iteration 1 on ones: layer 1 mean 0.625 std 0.125; iteration 2 on zeros: 0.5 everywhere.
    # pooled: 3/4 of the values 0.5, 1/4 0.75 -> mean 0.5625, var 0.01171875
    one_step(inst, net, torch.ones(4, 1, 28, 28), y, 1)
    rows = one_step(inst, net, torch.zeros(4, 1, 28, 28), y, 2)
    df = pd.DataFrame(rows)
    stats = df[~df.metric.str.endswith("_hist")]
    assert set(stats.iteration) == {2} and set(stats.epoch) == {1.0}
    get = {(r.metric, r.bin if r.metric == "act_mean_pct" else None): r.value
           for r in stats[stats.layer == 1].itertuples()}
    assert get[("act_mean", None)] == pytest.approx(0.5625)
    assert get[("act_std", None)] == pytest.approx(math.sqrt(0.01171875))
    # percentiles of the per-iteration means {0.625, 0.5}, linear interpolation
    assert get[("act_mean_pct", 0)] == pytest.approx(0.5)
    assert get[("act_mean_pct", 50)] == pytest.approx(0.5625)
    assert get[("act_mean_pct", 100)] == pytest.approx(0.625)
    assert len(stats) == 3 * (4 + 7)
    assert set(df[df.metric == "grad_hist"].iteration) == {2}  # end of epoch 1
    # no iteration epochs: grad.mean(0) histograms as snapshots with the gradient histograms
    outm = df[df.metric == "grad_outmean_hist"]
    assert set(outm.iteration) == {2} and outm.groupby("layer")["value"].sum().to_dict() == {1: 25, 2: 250, 3: 1280}
    assert inst.pending == [] and inst.pending_outmeans == []
    assert not df.metric.str.endswith("_iter").any()


def test_instrument_iteration_epochs_by_hand():
    """Per-epoch statistics with iteration_epochs=[1] over 3 epochs of 2 iterations: epoch 1
    (iterations 3, 4) also gets one row per iteration (``*_iter``) and one per-unit histogram
    over its 2 iterations; epochs 0 and 2 only their pooled rows."""
    net = hand_net()
    icfg = instrument_cfg({"stats_per": "epoch", "hist_every": None, "iteration_epochs": [1]})
    inst = Instrument(net, icfg, per_epoch=2, total=6, epochs=3.0)
    y = torch.tensor([0, 0, 1, 2])
    rows = []
    for step, fill in zip(range(1, 7), (1, 1, 1, 0, 1, 1)):
        rows += one_step(inst, net, torch.full((4, 1, 28, 28), float(fill)), y, step)
        if step == 3:  # inside epoch 1: nothing written yet, the iteration's statistics pending
            assert len(inst.pending) == 1 and len(inst.pending_outmeans) == 1
    df = pd.DataFrame(rows)
    it = df[df.metric.str.endswith("_iter")]
    assert sorted(it.metric.unique()) == ["act_mean_iter", "act_std_iter", "grad_mean_iter", "grad_std_iter"]
    assert sorted(it.iteration.unique()) == [3, 4] and len(it) == 2 * 3 * 4
    l1 = it[(it.metric == "act_mean_iter") & (it.layer == 1)].set_index("iteration")["value"]
    assert l1.to_dict() == pytest.approx({3: 0.625, 4: 0.5})   # ones, then zeros (hand_net)
    assert set(it.epoch) == {1.5, 2.0}
    pooled = df[df.metric == "act_mean"]
    assert sorted(pooled.epoch.unique()) == [1.0, 2.0, 3.0]     # every epoch keeps its pooled row
    assert pooled[(pooled.layer == 1) & (pooled.epoch == 2.0)]["value"].item() == pytest.approx(0.5625)
    outm = df[df.metric == "grad_outmean_hist"]
    assert set(outm.iteration) == {4}                            # the end of epoch 1 only, over its 2 iterations
    assert outm.groupby("layer")["value"].sum().to_dict() == {1: 50, 2: 500, 3: 2560}
    assert sorted(df[df.metric == "grad_hist"].iteration.unique()) == [1, 2, 4, 6]  # unchanged
    # per-iteration statistics ignore the setting
    it_cfg = instrument_cfg({"stats_per": "iteration", "hist_every": 200, "iteration_epochs": [1]})
    assert Instrument(hand_net(), it_cfg, per_epoch=2, total=6, epochs=3.0).iteration_epochs == frozenset()


def test_a_backprop_optimizer_is_fresh_and_configurable():
    net = PaperCNN()
    cfg = compose_run(["optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.5"])
    opt = method_config(cfg.optimizer).make(net.parameters())
    assert isinstance(opt, torch.optim.SGD) and opt.state_dict()["state"] == {}
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["momentum"] == 0.5
    adam = method_config(compose_run(["optimizer=adam"]).optimizer).make(net.parameters())
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["lr"] == 1e-3


def test_bad_histogram_period_is_a_config_error():
    with pytest.raises(ConfigError, match="instrument.hist_every"):
        compose_run(["optimizer=sgd", "instrument.hist_every=0"])
    with pytest.raises(ConfigError, match="instrument.iteration_epochs"):
        compose_run(["optimizer=sgd", "instrument.iteration_epochs=[0,-1]"])


# -- runs on the synthetic dataset -----------------------------------------------------------
def _tiny(root, out, *extra):
    return ["optimizer=sgd", "init.sigma=1", f"dataset.root={root}", f"out_dir={out}", "progress=false",
            "train.max_batches=4", "train.eval_every=2", "dataset.test_size=64", *extra]


def _read(spec) -> pd.DataFrame:
    return RunFolder(spec.dir).rows().drop(columns=["elapsed_s"])


def test_every_run_starts_from_fresh_model_and_optimizer(synthetic_root, tmp_path):
    """Seed 1 run after seed 0 in the same process equals seed 1 run alone: nothing (optimizer
    state, model, data order) carries over from one run to the next."""
    for opt in ("adam", "sgd"):
        ov = _tiny(synthetic_root, tmp_path / f"both-{opt}", f"optimizer={opt}", "figure=fig6",
                   "scale=smoke", "figure.smoke.seeds=2")
        specs = plan(compose_run(ov))
        assert [s.seed for s in specs] == [0, 1]
        for s in specs:
            assert run_one(s)["status"] == "finished"
        ov1 = _tiny(synthetic_root, tmp_path / f"alone-{opt}", f"optimizer={opt}", "seed=1")
        alone = plan(compose_run(ov1))[0]
        assert run_one(alone)["status"] == "finished"
        a, b = _read(specs[1]), _read(alone)
        cols = ["iteration", "metric", "layer", "bin", "value"]
        pd.testing.assert_frame_equal(a[cols], b[cols])
        assert not _read(specs[0])[cols].equals(a[cols])  # a different seed is a different run


@pytest.mark.parametrize("mode", ["iteration", "epoch", "iteration_epochs"])
def test_interrupted_run_resumes_bit_identically(synthetic_root, tmp_path, mode):
    """Stop after 5 of 8 steps (checkpoint every 3: pending statistics in the checkpoint), resume,
    and compare with an uninterrupted run. ``iteration_epochs``: per-epoch statistics with every
    iteration of epoch 1 (steps 5-8) logged, the stop falling inside it (pending per-iteration
    statistics and per-unit means in the checkpoint)."""
    stats = {"iteration_epochs": ["instrument.stats_per=epoch", "instrument.iteration_epochs=[1]"]}
    ov = _tiny(synthetic_root, tmp_path, "train.epochs=2", *stats.get(mode, [f"instrument.stats_per={mode}"]),
               "instrument.hist_every=3", "checkpoint_every=3", "optimizer=adam")
    cfg = compose_run(ov)

    def spec(folder):
        c = cfg.copy()
        c.out_dir = str(tmp_path / folder)
        return RunSpec("none", None, "t", 0, c, ())

    whole = spec("whole")
    assert run_one(whole)["status"] == "finished"
    cut = spec("cut")
    rd = RunFolder(cut.dir).open(cut.cfg, cut.columns, checkpoint_every=3)
    calls = {"n": 0}
    original = rd.stop_if_requested

    def stop_after_five(state_fn):
        calls["n"] += 1
        rd.stop_requested = calls["n"] == 5
        original(state_fn)

    rd.stop_if_requested = stop_after_five
    with pytest.raises(Interrupted):
        train_run(cut.cfg, rd)
    rd.close()
    assert run_one(cut)["status"] == "finished"
    a, b = _read(whole), _read(cut)
    pd.testing.assert_frame_equal(a, b)
    assert (a.metric == "act_mean").sum() == (3 * 8 if mode == "iteration" else 3 * 2)
    assert (a.metric == "act_mean_iter").sum() == (3 * 4 if mode == "iteration_epochs" else 0)
    outm = a[a.metric == "grad_outmean_hist"]
    # iteration_epochs: every iteration of epoch 1 (4 steps); otherwise snapshots at each grad_hist
    windows = {"iteration": [1, 3, 6, 8], "epoch": [1, 3, 6, 8], "iteration_epochs": [8]}[mode]
    assert sorted(outm.iteration.unique()) == windows
    assert outm.value.sum() == 4 * (25 + 250 + 1280)   # four snapshots, or the four iterations of epoch 1


def test_figure3_end_to_end(synthetic_root, tmp_path):
    from enkf_repro.experiments import get_figure

    df, cfg = _run_and_plot(["figure=fig3", "figure.smoke.overrides.train.max_batches=6",
                             "figure.smoke.overrides.instrument.hist_every=4",
                             "figure.smoke.overrides.dataset.test_size=64"], synthetic_root, tmp_path)
    assert list(df.columns[:len(COLUMNS)]) == COLUMNS
    assert set(df.optimizer) == {"sgd"} and set(df.init_sigma) == {1.0} and df.run_dir.nunique() == 1
    act = df[df.metric == "act_mean"]
    assert sorted(act.iteration.unique()) == list(range(1, 7)) and set(act.layer) == {1, 2, 3}
    assert act[act.layer == 3]["value"].round(6).eq(0.1).all()  # softmax rows average 1/10
    assert df[df.metric == "act_std"]["value"].between(0, 0.5).all()  # logistic units in (0, 1)
    hist = df[df.metric == "grad_hist"]
    assert sorted(hist.iteration.unique()) == [1, 4, 6]  # first, every 4, last
    assert (hist.groupby(["iteration", "layer"])["value"].sum().unstack().values == [250, 5000, 12800]).all()
    # the paper's numbers are read at the end of its epoch (steps 845-938): a 6-step run has none
    for pn in get_figure("3").paper_numbers[:6]:
        assert pn.measure(df, cfg) is None, pn.quantity
    # ... and the saturation claim, judged over the paper's 938 steps, is not decided
    evidence, holds = get_figure("3").claims[1].check(df, cfg)
    assert holds is None and "6 steps logged, fewer than the paper's epoch of 938" in evidence
    assert (tmp_path / "smoke" / "fig3" / "fig3.pdf").stat().st_size > 1000


def _run_and_plot(args, root, out):
    ov = list(args) + [f"dataset.root={root}", f"out_dir={out}", "progress=false", "scale=smoke"]
    cfg = compose_run(ov)
    fig_dir = run_figure(cfg)
    paths = plot_figure(cfg, [o for o in ov if not o.startswith("figure=")])
    assert paths[0].suffix == ".png" and paths[0].stat().st_size > 10000
    from enkf_repro.runs.folder import read_runs

    return read_runs(fig_dir), cfg


def test_figure1_end_to_end(synthetic_root, tmp_path):
    from enkf_repro.experiments import get_figure
    from enkf_repro.experiments.fig1 import samples_seen

    df, cfg = _run_and_plot(
        ["figure=fig1", "figure.smoke.seeds=2", "figure.smoke.ensemble_size=4",
         "figure.smoke.overrides.dataset.test_size=64",
         "figure.smoke.series_overrides.sgd.train.max_batches=4",
         "figure.smoke.series_overrides.adam.train.max_batches=4",
         "figure.smoke.series_overrides.enkf.train.max_batches=1"], synthetic_root, tmp_path)
    assert df.groupby("optimizer")["seed"].nunique().to_dict() == {"adam": 2, "enkf": 2, "sgd": 2}
    assert set(pd.to_numeric(df.init_sigma)) == {1.0}
    assert not df.metric.isin(["act_mean", "grad_hist"]).any()  # instrumentation off for Figure 1
    err = df[df.metric == "test_error"]
    last = err.groupby("optimizer")["iteration"].max().to_dict()
    assert last == {"adam": 4, "sgd": 4, "enkf": 8}  # 4 steps; 1 batch x r = 8
    # samples seen: 4 steps x 64 = 256 for SGD/Adam, 8 iterations x 64 / 8 = 64 for the EnKF
    s = err.assign(samples=samples_seen(err)).groupby("optimizer")["samples"].max().to_dict()
    assert s == {"adam": 256, "sgd": 256, "enkf": 64}
    # the paper's numbers are read in its units (after its epoch, after 500 and 7000 EnKF
    # iterations): these runs stop before, and say where
    notes = [pn.measure(df, cfg) for pn in get_figure("1").paper_numbers]
    assert notes == [(None, "not reached: the run ends at the paper's epoch 0.00426")] + \
        [(None, "not reached: the run ends at iteration 8")] * 2
    # the EnKF runs log the mean network and the last member; figure.<scale>.enkf_network chooses
    # which is compared (the last member by default, as the published plot)
    assert (df.metric == "test_error_last").any() and (df[df.optimizer == "enkf"].metric == "test_error").any()
    from enkf_repro.experiments.fig1 import errors as fig1_errors

    mean = cfg.copy()
    mean.figure.smoke.enkf_network = "mean"
    enkf = df[df.optimizer == "enkf"]
    assert fig1_errors(enkf, cfg)["value"].tolist() == enkf[enkf.metric == "test_error_last"]["value"].tolist()
    assert fig1_errors(enkf, mean)["value"].tolist() == enkf[enkf.metric == "test_error"]["value"].tolist()
    for claim in get_figure("1").claims:   # "within one epoch": these runs end long before it
        evidence, holds = claim.check(df, cfg)
        assert holds is None and "not decided: the run does not reach that point" in evidence, evidence


def test_figure4_end_to_end(synthetic_root, tmp_path):
    from enkf_repro.experiments import get_figure

    df, cfg = _run_and_plot(["figure=fig4", "figure.smoke.overrides.train.epochs=3",
                             "figure.smoke.overrides.train.max_batches=2",
                             "figure.smoke.overrides.train.eval_every=2",
                             "figure.smoke.overrides.dataset.test_size=64"], synthetic_root, tmp_path)
    stats = df[df.metric == "grad_std"]
    assert sorted(stats["pass"].unique()) == [1.0, 2.0, 3.0] and len(stats) == 3 * 3  # per pass
    # 2 of the 10 synthetic batches per pass: the CSV's epoch is the fraction of the data seen
    assert sorted(stats.epoch.unique()) == pytest.approx([0.2, 0.4, 0.6])
    pct = df[df.metric == "act_mean_pct"]
    assert len(pct) == 3 * 3 * 7
    for _, g in pct.groupby(["pass", "layer"]):  # percentiles are ordered
        assert g.sort_values("bin")["value"].is_monotonic_increasing
    assert sorted(df[df.metric == "grad_hist"].iteration.unique()) == [1, 2, 4, 6]  # first + each epoch end
    assert sorted(df[df.metric == "test_error"]["pass"].unique()) == [0.0, 1.0, 2.0, 3.0]
    # the smoke preset's iteration epochs 0, 2, 4, 6, 8: epochs 0 and 2 of these 3, at every iteration
    it = df[df.metric == "grad_std_iter"]
    assert sorted(it.iteration.unique()) == [1, 2, 5, 6] and set(it.layer) == {1, 2, 3}
    outm = df[df.metric == "grad_outmean_hist"]
    assert sorted(outm.iteration.unique()) == [2, 6]  # the ends of epochs 0 and 2, over their 2 iterations
    assert outm.groupby(["iteration", "layer"])["value"].sum().unstack().values.tolist() == [[50, 500, 2560]] * 2
    # the paper's epochs hold 60,000 images, these 128: its per-epoch numbers are not read here
    assert get_figure("4").paper_numbers[0].measure(df, cfg) == (
        None, "not read: the run's epochs hold 128 images, the paper's 60,000")
    for claim in get_figure("4").claims:
        evidence, holds = claim.check(df, cfg)
        assert "SGD sigma=1 up to the paper's epoch 50" in evidence and holds in (False, None)
    # the pooled per-epoch view stays available, also from the command line's overrides (a
    # figure.* setting draws differently, it does not select runs)
    from enkf_repro.experiments.saturation_panels import plot_many_epochs

    view = "figure.smoke.gradient_view=epoch"
    pooled = cfg.copy()
    pooled.figure.smoke.gradient_view = "epoch"
    titles = [ax.get_title() for ax in plot_many_epochs(df, pooled, "Figure 4", "epoch").axes]
    assert not any("output units" in t for t in titles)
    titles = [ax.get_title() for ax in plot_many_epochs(df, cfg, "Figure 4", "iteration").axes]
    assert sum("averaged over output units" in t for t in titles) == 3
    assert plot_figure(pooled, [f"dataset.root={synthetic_root}", view])[0].stat().st_size > 10000


def test_figure5_end_to_end(synthetic_root, tmp_path):
    from enkf_repro.experiments import get_figure

    df, cfg = _run_and_plot(["figure=fig5", "figure.smoke.overrides.train.epochs=2",
                             "figure.smoke.overrides.train.max_batches=2",
                             "figure.smoke.overrides.train.eval_every=2",
                             "figure.smoke.overrides.dataset.test_size=64"], synthetic_root, tmp_path)
    runs = df.groupby(["optimizer", "init_sigma"])["run_dir"].nunique()
    # adam at sigma = 3 twice: fresh, and from the sigma = 1 run's optimizer state (the published script's)
    assert runs.to_dict() == {("adam", 1.0): 1, ("adam", 3.0): 2, ("sgd", 1.0): 1, ("sgd", 3.0): 1}
    err = df[df.metric == "test_error"]
    assert sorted(err["pass"].unique()) == [0.0, 1.0, 2.0]
    assert not df.metric.eq("act_mean").any()  # instrumentation off for Figure 5
    # the paper's epoch 10 lies far beyond 2 passes over 128 images
    assert get_figure("5").paper_numbers[0].measure(df, cfg) == (None, "not reached: the run ends at the paper's "
                                                                       "epoch 0.00426")
    for claim in get_figure("5").claims:
        evidence, holds = claim.check(df, cfg)
        assert evidence and holds in (False, None), claim.text


def test_override_that_one_series_cannot_take_is_a_one_line_error():
    from enkf_repro.errors import EnkfReproError

    ov = ["figure=fig1", "optimizer.lr=0.05"]
    with pytest.raises(EnkfReproError, match="series 'enkf' of figure 1: optimizer.lr=0.05 is not allowed: "
                       "optimizer has no key 'lr'"):
        plan(compose_run(ov))
    ov = ["figure=fig1", "only=sgd|adam", "optimizer.lr=0.05"]  # the backprop series alone take it
    assert {(s.label, s.cfg.optimizer.lr) for s in plan(compose_run(ov))} == {("sgd", 0.05), ("adam", 0.05)}
    ov = ["figure=fig1", "++figure.paper.series_overrides.sgd.optimizer.lr=0.05"]  # or one series only
    lrs = {s.label: s.cfg.optimizer.get("lr") for s in plan(compose_run(ov))}
    assert lrs == {"sgd": 0.05, "adam": 1e-3, "enkf": None}


@pytest.mark.parametrize("hidden", [(), (16,), (16, 8)])
def test_instrument_finds_the_layers_of_dense_networks(hidden):
    """The dense models (mlp, dnn1-4) name their layers fcK / actK inside a Sequential, so SGD /
    Adam baselines on them record one activation and one gradient row per layer."""
    from enkf_repro.models.dense import DenseNet

    net = DenseNet(hidden, "relu")
    icfg = instrument_cfg({"stats_per": "iteration", "hist_every": 200})
    inst = Instrument(net, icfg, per_epoch=10, total=10, epochs=1.0)
    assert inst.layers == len(hidden) + 1
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    rows = one_step(inst, net, x, y, 1)
    layers = {r["layer"] for r in rows if r["metric"] == "act_mean"}
    assert layers == set(range(1, len(hidden) + 2))
    relu = [r["value"] for r in rows if r["metric"] == "act_mean" and r["layer"] <= len(hidden)]
    assert all(v >= 0 for v in relu)


def test_a_shared_optimizer_run_starts_from_the_source_runs_final_state(synthetic_root, tmp_path, cli):
    """Figure 5's ``adam-sigma3-shared``: the published script reused one Adam across its sigmas, so
    its sigma = 3 run starts from the sigma = 1 run's final moments and step count; weights are
    drawn afresh. Without the source finished, the run stops with one line naming it."""
    from enkf_repro.runs.folder import RunFolder

    ov = ["figure=fig5", "figure.smoke.optimizers=[adam]", "figure.smoke.overrides.train.max_batches=2",
          "figure.smoke.overrides.train.epochs=2", "figure.smoke.overrides.dataset.test_size=64",
          f"dataset.root={synthetic_root}", "progress=false", "scale=smoke"]
    alone = cli("run", *ov, "only=shared", f"out_dir={tmp_path / 'alone'}")
    assert alone.returncode == 2 and "optimizer.state_from=" in alone.stderr and "run it first" in alone.stderr
    assert len(alone.stderr.strip().splitlines()) == 1
    specs = plan(compose_run(ov + [f"out_dir={tmp_path / 'res'}"]))
    by = {s.label: s for s in specs}
    assert list(by) == ["adam-sigma1", "adam-sigma3", "adam-sigma3-shared"]
    shared, fresh, source = by["adam-sigma3-shared"], by["adam-sigma3"], by["adam-sigma1"]
    assert shared.cfg.optimizer.state_from == source.run_id and fresh.cfg.optimizer.state_from is None
    assert f"optimizer.state_from={source.run_id}" in shared.overrides and shared.run_id != fresh.run_id
    assert cli("run", *ov, f"out_dir={tmp_path / 'res'}").returncode == 0
    steps = {k: {int(v["step"]) for v in RunFolder(s.dir).params()["state"]["optimizer"]["state"].values()}
             for k, s in by.items()}
    assert steps == {"adam-sigma1": {4}, "adam-sigma3": {4}, "adam-sigma3-shared": {8}}   # 2 x 2 steps each
    rows = {k: RunFolder(s.dir).rows() for k, s in by.items()}
    first = {k: r[(r.metric == "test_error") & (r.iteration == 0)]["value"].item() for k, r in rows.items()}
    assert first["adam-sigma3"] == first["adam-sigma3-shared"]      # the same fresh weights at the start ...
    final = {k: RunFolder(s.dir).params()["params"][""] for k, s in by.items()}
    assert not torch.equal(final["adam-sigma3"], final["adam-sigma3-shared"])   # ... then another state
    # committed results leave the state files out: a finished source without one is named in one line
    (source.dir / "params.pt").unlink()
    shutil.rmtree(shared.dir)
    again = cli("run", *ov, "only=shared", f"out_dir={tmp_path / 'res'}")
    assert again.returncode == 2 and "keeps no final state" in again.stderr and source.run_id in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
