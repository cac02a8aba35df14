"""Figures 3-7 (experiments/saturation.py, saturation_checks.py): the configs' initial scales, the
paper's numbers read off tidy rows, the claims on frames where they hold and where they do not,
and the plots. The frames are built by hand, so every expected number is worked out here."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from conftest import compose_run
from enkf_repro.experiments import get_figure
from enkf_repro.experiments import saturation_checks as sc
from enkf_repro.experiments.saturation import plot_many_epochs, plot_one_epoch
from enkf_repro.optim.instrument import bin_lower_edges, grad_hist_edges
from enkf_repro.runs.runner import plan

LOWER = bin_lower_edges(grad_hist_edges())


# -- configs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", ["paper", "smoke"])
def test_initial_scale_of_each_figure(scale):
    """Figures 6 and 7 are the Adam runs at sigma = 3 (the one that learns late in Figure 5);
    3 and 4 are SGD at sigma = 1; Figure 5 runs both optimizers at both."""
    for fig, opt, sigma in (("3", "sgd", 1.0), ("4", "sgd", 1.0), ("6", "adam", 3.0), ("7", "adam", 3.0)):
        specs = plan(compose_run([f"figure={fig}", f"scale={scale}"]))
        assert {(s.cfg.optimizer.name, s.cfg.init.sigma) for s in specs} == {(opt, sigma)}, fig
        assert f"sigma = {sigma:g}" in get_figure(fig).title and f"sigma={sigma:g}" in get_figure(fig).description
    specs = plan(compose_run(["figure=5", f"scale={scale}"]))
    assert sorted((s.cfg.optimizer.name, s.cfg.init.sigma) for s in specs) == [
        ("adam", 1.0), ("adam", 3.0), ("adam", 3.0), ("sgd", 1.0), ("sgd", 3.0)]


@pytest.mark.parametrize("scale,epochs", [("paper", [0, 10, 20, 30, 40]), ("smoke", [0, 2, 4, 6, 8])])
def test_iteration_epochs_of_figures_4_and_7(scale, epochs):
    """The paper's epochs 0, 10, ..., 40 of 50, at smoke scale the same fractions of the run."""
    for fig in ("4", "7"):
        cfg = plan(compose_run([f"figure={fig}", f"scale={scale}"]))[0].cfg
        assert list(cfg.instrument.iteration_epochs) == epochs
        assert [e / cfg.train.epochs for e in epochs] == [0, 0.2, 0.4, 0.6, 0.8]
    for fig in ("3", "5", "6"):
        assert list(plan(compose_run([f"figure={fig}", f"scale={scale}"]))[0].cfg.instrument.iteration_epochs) == []


# -- synthetic frames --------------------------------------------------------------------------
BASE = {"dataset": "mnist", "lr": 0.001, "finished": True, "bin": np.nan}


def rows(run, opt, sigma, metric, layer, points) -> list[dict]:
    """Rows of one metric: ``points`` [(iteration, epoch, value)]."""
    return [{**BASE, "run_dir": run, "optimizer": opt, "init_sigma": sigma, "metric": metric, "layer": layer,
             "iteration": it, "epoch": ep, "pass": ep, "value": v} for it, ep, v in points]


def errors_frame(curves: dict[tuple[str, float], list[float]], per_epoch: int = 10, finished: bool = True):
    """Test error once per epoch (epoch 0 = the untrained network) for each (optimizer, sigma)."""
    out = []
    for (opt, sigma), errs in curves.items():
        out += rows(f"{opt}{sigma}", opt, sigma, "test_error", np.nan,
                    [(e * per_epoch, float(e), v) for e, v in enumerate(errs)])
    df = pd.DataFrame(out)
    df["finished"] = finished
    return df


def one_epoch_frame(mean1, n=500, opt="adam", sigma=3.0) -> pd.DataFrame:
    """Per-iteration activation rows of a one-epoch run of n iterations: layer 1's mean from
    ``mean1(it)``, its std 0.3; layer 2 settles at once (mean 0.5, std 0.49); layer 3 the softmax."""
    out = []
    for it in range(1, n + 1):
        ep = it / n
        for layer, m, s in ((1, mean1(it), 0.3), (2, 0.5, 0.49), (3, 0.1, 0.29)):
            out += rows("r", opt, sigma, "act_mean", layer, [(it, ep, m)])
            out += rows("r", opt, sigma, "act_std", layer, [(it, ep, s)])
    out += rows("r", opt, sigma, "test_error", np.nan, [(0, 0.0, 90.0), (n, 1.0, 88.0)])
    return pd.DataFrame(out)


def saturating(it):   # moves 0.1 in the first iterations, then flat: settles
    return 0.46 + 0.1 * math.exp(-it / 30)


def drifting(it):     # 0.49 -> 0.53 at a constant pace over 500 iterations: keeps moving
    return 0.49 + 0.04 * it / 500


def test_drift_by_hand():
    # linear: block means of 20 iterations; early = from x(1) to the 10th block's mean (its 181-200)
    s = pd.Series({it: it / 1000 for it in range(1, 501)})
    early, late = sc.drift(s)
    assert early == pytest.approx(0.1905 - 0.001)       # mean of 181..200 is 0.1905
    assert late == pytest.approx(0.4905 - 0.2105)       # blocks 201-220 ... 481-500
    assert not sc.settled(early, late) and sc.settled(0.1, 0.02) and sc.settled(0.0, 0.009)
    assert sc.drift(pd.Series({it: 0.5 for it in range(1, 300)})) is None  # < 400 iterations


def test_settling_claims_hold_and_fail():
    fig3 = get_figure("3").claims[1].check
    fig6 = get_figure("6").claims[0].check
    sat = one_epoch_frame(saturating, opt="sgd", sigma=1.0)
    evidence, holds = fig3(sat, None)
    assert holds is True and "layer 1 mean moved 0.0" in evidence and "by it 200" in evidence
    assert fig6(sat, None)[1] is False            # settled: does not keep moving
    moving = one_epoch_frame(drifting)
    assert fig3(moving, None)[1] is False
    evidence, holds = fig6(moving, None)
    # x(1) = 0.49008, its 181-200 average 0.49 + 8e-5 x 190.5: early 0.0152; later block means
    # 210.5 ... 490.5: 280 x 8e-5 = 0.0224 > max(0.25 x 0.0152, 0.01)
    assert holds is True and "moved 0.015 by it 200 of 500, 0.022 after" in evidence
    # a shorter run (one epoch of a smaller training set) is judged at the same fraction of it:
    # 300 iterations -> by iteration 60 (200 / 938 of the run, in whole 20-iteration blocks)
    evidence, holds = fig6(one_epoch_frame(drifting, n=300), None)
    assert holds is True and "by it 60 of 300" in evidence
    evidence, holds = fig6(one_epoch_frame(drifting, n=30), None)
    assert holds is None and "30 iterations logged, too few to judge settling by iteration 20" in evidence


def test_no_learning_claims():
    flat = errors_frame({("sgd", 1.0): [90, 89, 91, 88.5]})
    evidence, holds = get_figure("3").claims[0].check(flat, None)
    assert holds is True and "final test error 88.5 % at epoch 3" in evidence
    evidence, holds = get_figure("4").claims[0].check(flat, None)
    assert holds is True and "lowest test error 88.5 % (epoch 3 of 3)" in evidence
    dips = errors_frame({("sgd", 1.0): [90, 60, 91, 88.5]})
    assert get_figure("3").claims[0].check(dips, None)[1] is True   # the final error decides
    assert get_figure("4").claims[0].check(dips, None)[1] is False  # every evaluation does
    assert get_figure("3").claims[0].check(errors_frame({("sgd", 1.0): [90, 30]}), None)[1] is False
    assert get_figure("3").claims[0].check(errors_frame({("adam", 1.0): [90, 30]}), None)[1] is None


FIG5_PAPERLIKE = {("adam", 1.0): [90] + [4] * 15,                  # > 90 % accuracy from epoch 1
                  ("adam", 3.0): [90] * 9 + [70, 40, 30, 20, 20, 16, 16],  # learns at epoch 9 of 15
                  ("sgd", 1.0): [90] * 16, ("sgd", 3.0): [90] * 16}


def measured(fig: str, df) -> dict[str, object]:
    """The figure's paper numbers measured on ``df``, keyed by their quantity text."""
    return {n.quantity: n.measure(df, None) for n in get_figure(fig).paper_numbers}


def number(got: dict, start: str):
    (key,) = [k for k in got if k.startswith(start)]
    return got[key]


def test_figure5_claims_hold_on_a_paperlike_frame_and_fail_otherwise():
    claims = {c.text.split(":")[0]: c.check for c in get_figure("5").claims}
    df = errors_frame(FIG5_PAPERLIKE)
    verdicts = {k: c(df, None) for k, c in claims.items()}
    assert all(v[1] is True for v in verdicts.values()), verdicts
    assert "test accuracy 96.0 % at epoch 3 of 15 (the 10/50 point)" in verdicts["Adam at sigma = 1 learns"][0]
    assert "epoch 9 of 15 (= 30.0 of 50); needs to be after epoch 6 of 15" in \
        verdicts["Adam at sigma = 3 learns only late"][0]
    # Adam sigma=1 learns from epoch 1 but reaches 55 % accuracy only by epoch 3 of 15; sigma=3 from epoch 2
    smoke_like = errors_frame({("adam", 1.0): [90, 70, 60, 45] + [40] * 12, ("adam", 3.0): [90, 85, 78] + [60] * 13,
                               ("sgd", 1.0): [90, 89, 90, 91] + [89.5] * 12})
    verdicts = {k: c(smoke_like, None)[1] for k, c in claims.items()}
    assert verdicts == {"Adam at sigma = 1 learns": False, "Adam at sigma = 3 learns only late": False,
                        "Adam learns sooner at sigma = 1 than at sigma = 3": True,
                        "SGD at sigma = 1 does not learn": True}
    never = {("adam", 1.0): [90, 50], ("adam", 3.0): [90, 89]}
    assert claims["Adam at sigma = 3 learns only late"](errors_frame(never), None)[1] is False
    assert claims["Adam at sigma = 3 learns only late"](errors_frame(never, finished=False), None)[1] is None
    assert claims["Adam learns sooner at sigma = 1 than at sigma = 3"](errors_frame(never), None)[1] is True
    assert claims["Adam at sigma = 1 learns"](errors_frame({("sgd", 1.0): [90]}), None)[1] is None


def test_figure5_numbers_read_at_the_same_fraction_of_the_run():
    df = errors_frame(FIG5_PAPERLIKE)
    got = measured("5", df)
    assert number(got, "Adam sigma=1 test accuracy (%) at epoch 10 of 50") == (96.0, "epoch 3 of 15")
    # first error < 80 % at epoch 9 of 15 = epoch 30 of a 50-epoch run
    assert number(got, "Adam sigma=3 first epoch with test error < 80 %") == (pytest.approx(30.0), "epoch 9 of 15")
    assert number(got, "Adam sigma=3 best test accuracy") == 84.0


def test_at_paper_scale_epochs_are_placed_by_images_seen():
    """On the 8,000-image proxy (125 iterations of 64 per epoch) a 50-epoch run sees as many images
    as 6.7 of the paper's 60,000-image epochs: the epoch-10 point lies beyond it, Adam sigma=3
    learning at the run's epoch 3 is the paper's epoch 0.4, and a run that has not learned by its
    end is not decided about learning after the paper's epoch 20."""
    cfg = compose_run(["figure=fig5", "scale=paper", "dataset.test_only=true"])
    claims = {c.text.split(":")[0]: c.check for c in get_figure("5").claims}
    proxy = errors_frame({("adam", 1.0): [90, 75, 70] + [24] * 8 + [8] * 40,   # > 90 % from epoch 11 of 50
                          ("adam", 3.0): [90, 87, 82, 79] + [70] * 47}, per_epoch=125)
    evidence, holds = claims["Adam at sigma = 1 learns"](proxy, cfg)
    assert holds is True and "test accuracy 92.0 % at epoch 50 of 50 = 6.7 of the paper's epochs by images " \
        "seen (the 10/50 point, which lies beyond this run: its last evaluation)" in evidence
    # the same run by the fraction of the run (smoke placement) reads epoch 10 of 50: 76 %
    assert claims["Adam at sigma = 1 learns"](proxy, None)[1] is False
    evidence, holds = claims["Adam at sigma = 3 learns only late"](proxy, cfg)
    assert holds is False and ("at epoch 3 of 50 (= the paper's epoch 0.4 by images seen); needs to be after "
                               "the paper's epoch 20 by images seen") in evidence
    got = {n.quantity: n.measure(proxy, cfg) for n in get_figure("5").paper_numbers}
    assert number(got, "Adam sigma=3 first epoch")[0] == pytest.approx(3 * 125 * 64 / 60000)
    acc, where = number(got, "Adam sigma=1 test accuracy (%) at epoch 10 of 50")
    assert acc == 92.0 and where.endswith("; the run ends before epoch 10")
    sgd = errors_frame({("sgd", 1.0): [90] * 51}, per_epoch=125)
    evidence, holds = claims["SGD at sigma = 1 does not learn"](sgd, cfg)
    assert holds is True and evidence.endswith("the run covers the paper's first 6.7 epochs by images seen")
    slow = errors_frame({("adam", 1.0): [90] * 51, ("adam", 3.0): [90] * 51}, per_epoch=125)
    assert claims["Adam at sigma = 1 learns"](slow, cfg)[1] is None         # 10 % by 6.7: not decided
    evidence, holds = claims["Adam at sigma = 3 learns only late"](slow, cfg)
    assert holds is None and "the run ends at the paper's epoch 6.7" in evidence
    # on the full 60,000 images (938 iterations per epoch) images seen and fraction agree
    full = errors_frame({("adam", 1.0): [90] + [4] * 50, ("adam", 3.0): [90] * 29 + [60] * 22,
                         ("sgd", 1.0): [90] * 51}, per_epoch=938)
    for k, check in claims.items():
        assert check(full, cfg)[1] is True, k


def many_epochs_frame(epochs=10, per_epoch=4, iteration_epochs=(0, 2, 4, 6, 8), errs=None) -> pd.DataFrame:
    """A per-epoch Adam sigma=3 run: pooled layer rows (layer-1 mean 0.49 + 0.01 k in epoch k,
    layer-3 grad std 0.16 / (k + 1)), percentiles, per-iteration rows in the iteration epochs
    (grad mean 0.1 / (k + 1) at every iteration) and per-unit histograms there (10 units in
    bin [-0.316, -0.178) in epoch 0, in [0.0178, 0.0316) later)."""
    out = []
    k_03 = LOWER.index(next(e for e in LOWER if abs(e + 10 ** -0.5) < 1e-12))
    k_002 = LOWER.index(next(e for e in LOWER if abs(e - 10 ** -1.75) < 1e-12))
    for k in range(epochs):
        end = (k + 1) * per_epoch
        head = (end, float(k + 1))
        for layer in (1, 2, 3):
            out += rows("r", "adam", 3.0, "act_mean", layer, [(*head, 0.49 + 0.01 * k if layer == 1 else 0.5)])
            out += rows("r", "adam", 3.0, "act_std", layer, [(*head, 0.3)])
            out += rows("r", "adam", 3.0, "grad_mean", layer, [(*head, 0.0)])
            out += rows("r", "adam", 3.0, "grad_std", layer, [(*head, 0.16 / (k + 1))])
            for p in (0, 10, 25, 50, 75, 90, 100):
                out += [{**r, "bin": p} for r in rows("r", "adam", 3.0, "act_mean_pct", layer,
                                                      [(*head, 0.49 + 0.01 * k + (p - 50) / 1000)])]
            if k in iteration_epochs:
                for it in range(k * per_epoch + 1, end + 1):
                    at = (it, it / per_epoch)
                    for name, v in (("act_mean", 0.5), ("act_std", 0.3), ("grad_mean", 0.1 / (k + 1)),
                                    ("grad_std", 0.05)):
                        out += rows("r", "adam", 3.0, f"{name}_iter", layer, [(*at, v)])
                full = [0] * len(LOWER)
                full[k_03 if k == 0 else k_002] = 10 * per_epoch
                out += [{**r, "bin": LOWER[b]} for b, r in
                        enumerate(rows("r", "adam", 3.0, "grad_outmean_hist", layer, [(*head, c) for c in full]))]
    errs = errs or [90.0] * 7 + [70.0, 50.0, 20.0, 16.0]
    out += rows("r", "adam", 3.0, "test_error", np.nan, [(e * per_epoch, float(e), v) for e, v in enumerate(errs)])
    return pd.DataFrame(out)


def test_figure7_numbers_by_hand():
    df = many_epochs_frame()
    got = measured("7", df)
    assert number(got, "layer 1 mean activation in the first epoch") == (pytest.approx(0.49), "epoch ending at 1 of 10")
    # epoch 40 of 50 -> the epoch ending at 8 of 10: k = 7, 0.49 + 0.07
    assert number(got, "layer 1 mean activation in epoch 40 of 50") == (pytest.approx(0.56), "epoch ending at 8 of 10")
    assert number(got, "test error (%) at epoch 10 of 50") == (90.0, "epoch 2 of 10")
    assert number(got, "first epoch with test error < 80 %, as the paper's epoch") == \
        (pytest.approx(35.0), "epoch 7 of 10")
    assert number(got, "best test accuracy (%) over the run") == 84.0
    # bin [-0.316, -0.178): magnitudes up to 0.316; bin [0.0178, 0.0316): below 0.0316
    v, where = number(got, "layer 1 largest |per-unit mean gradient| before epoch 10 of 50")
    assert v == pytest.approx(10 ** -0.5) and where == "epochs 0 (0-based), bin edge"
    v, where = number(got, "layer 1 largest |per-unit mean gradient| after epoch 28 of 50")
    assert v == pytest.approx(10 ** -1.5) and where == "epochs 6, 8 (0-based), bin edge"
    assert number(got, "layer 3 (fc) weight-gradient std in the first epoch")[0] == pytest.approx(0.16)
    assert number(got, "layer 3 (fc) weight-gradient std in the last epoch")[0] == pytest.approx(0.016)


def test_figure7_claims_hold_and_fail():
    late, rises = (c.check for c in get_figure("7").claims)
    df = many_epochs_frame()   # first error < 80 % at epoch 7 of 10 > 4: late
    evidence, holds = late(df, None)
    assert holds is True and "epoch 7 of 10 (= 35.0 of 50)" in evidence
    evidence, holds = rises(df, None)
    assert holds is True and "0.4900 (epoch ending at 1 of 10) -> 0.5600 (epoch ending at 8 of 10)" in evidence
    early = many_epochs_frame(errs=[90.0, 70.0] + [50.0] * 9)
    assert late(early, None)[1] is False
    falling = many_epochs_frame()
    sel = (falling.metric == "act_mean") & (falling.layer == 1)
    falling.loc[sel, "value"] = 1.0 - falling.loc[sel, "value"]
    assert rises(falling, None)[1] is False


def test_figure4_and_6_numbers_by_hand():
    df = many_epochs_frame()
    got = measured("4", df)
    assert number(got, "layer 1 mean activation in the first epoch")[0] == pytest.approx(0.49)
    assert number(got, "layer 1 mean activation in the last epoch") == (pytest.approx(0.58), "epoch ending at 10 of 10")
    # mean over epochs k = 0..9 of 0.16 / (k + 1)
    v, where = number(got, "layer 3")
    assert v == pytest.approx(0.016 * sum(1 / (k + 1) for k in range(10))) and where == "mean over 10 epochs"
    # Figure 6: two iterations (0.5, 0.1) and (0.7, 0.1): pooled mean 0.6, std^2 = 0.38 - 0.36
    two = pd.DataFrame(rows("r", "adam", 3.0, "act_mean", 1, [(1, 0.5, 0.5), (2, 1.0, 0.7)])
                       + rows("r", "adam", 3.0, "act_std", 1, [(1, 0.5, 0.1), (2, 1.0, 0.1)]))
    got = {n.quantity: n.measure(two, None) for n in get_figure("6").paper_numbers if "layer 1" in n.quantity}
    assert number(got, "layer 1 activation mean over the epoch (all iterations pooled)")[0] == pytest.approx(0.6)
    std = number(got, "layer 1 activation std over the epoch (all iterations pooled)")[0]
    assert std == pytest.approx(math.sqrt(0.02))
    assert number(got, "layer 1 mean activation at the first iteration") == 0.5


def test_iteration_rows_get_their_epoch_and_place_in_it():
    d = sc.iteration_epoch_rows(many_epochs_frame(), "grad_mean", 1)
    assert sorted(d.ep.unique()) == [0, 2, 4, 6, 8] and sorted(d.within.unique()) == [1, 2, 3, 4]
    assert d[d.ep == 2].groupby("within")["value"].first().tolist() == pytest.approx([0.1 / 3] * 4)


# -- plots -------------------------------------------------------------------------------------
def test_figures_4_7_and_6_render(tmp_path):
    import matplotlib.pyplot as plt

    df = many_epochs_frame()
    df["run_dir"] = "r"
    cfg = compose_run(["figure=fig7", "scale=smoke"])
    fig = plot_many_epochs(df, cfg, "7")
    titles = [ax.get_title() for ax in fig.axes]
    assert sum("per-unit mean gradient" in t for t in titles) == 3
    top = fig.axes[0]
    assert [line.get_label() for line in top.get_lines() if line.get_label().startswith("epoch")] == \
        [f"epoch {k}" for k in (0, 2, 4, 6, 8)]
    fig.savefig(tmp_path / "fig7.png")
    plt.close(fig)
    pooled = plot_many_epochs(df, compose_run(["figure=fig7", "scale=smoke", "figure.smoke.gradient_view=epoch"]), "7")
    assert not any("per-unit" in ax.get_title() for ax in pooled.axes)
    plt.close(pooled)
    # without per-iteration rows (a run from before, or iteration_epochs=[]): the pooled view
    old = plot_many_epochs(df[~df.metric.str.endswith("_iter")], cfg, "7")
    assert not any("per-unit" in ax.get_title() for ax in old.axes)
    plt.close(old)
    one = one_epoch_frame(drifting)
    one["run_dir"] = "r"
    fig = plot_one_epoch(one, compose_run(["figure=fig6", "scale=smoke"]), "6", "fig6")
    labels = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert "paper (MNIST) 0.47 \u2192 0.5" in labels and "paper, over the epoch 0.5124 \u00b1 0.286" in labels
    fig.savefig(tmp_path / "fig6.png")
    plt.close(fig)
    assert (tmp_path / "fig7.png").stat().st_size > 10000
