"""Figure 8: EnKF test error over one epoch.

Left: activation functions (logistic / ReLU / tanh) at J = 5000. Right: ensemble sizes
J = 100 / 5000 / 10000 (logistic). The paper reports, for the left panel, 6.11 / 6.56 / 8.15 %
after 500 iterations and 3.8 / 3.75 / 4.51 % after the epoch; for the right, about 47 % with
J = 100 after a few hundred iterations, 3.8 % (J = 5000) and 3.0 % (J = 10000).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from .base import Figure, PaperNumber, Variant, register
from .common import curve, runs_where, value_at
from .draw import COLORS, band, caption, metric

ACT_LABEL = {"logistic": "logistic", "relu": "ReLU", "tanh": "tanh"}


def variants(cfg, s) -> list[Variant]:
    J = int(s.ensemble_size)
    out = [Variant(f"{a.value if hasattr(a, 'value') else a}-J{J}",
                   (f"model.activation={getattr(a, 'value', a)}", f"optimizer.ensemble_size={J}"))
           for a in s.activations]
    out += [Variant(f"logistic-J{j}", ("model.activation=logistic", f"optimizer.ensemble_size={j}"))
            for j in s.ensemble_sizes]
    return out


def main_ensemble_size(df: pd.DataFrame) -> int:
    """The J of the activations panel: the one with the most activations (ties: the largest)."""
    counts = df.groupby("ensemble_size")["activation"].nunique()
    best = counts.max()
    return int(max(j for j, c in counts.items() if c == best))


def plot(df: pd.DataFrame, cfg):
    err = metric(df, "test_error")
    J = main_ensemble_size(err)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), sharey=False)
    for i, act in enumerate(["logistic", "relu", "tanh"]):
        d = runs_where(err, activation=act, ensemble_size=J)
        band(left, d, f"{ACT_LABEL[act]}", COLORS[i])
    left.set_title(f"activation functions (J = {J})")
    logistic = err[err["activation"] == "logistic"]
    for i, j in enumerate(sorted(logistic["ensemble_size"].astype(int).unique())):
        band(right, runs_where(logistic, ensemble_size=j), f"J = {j}", COLORS[i + 3])
    right.set_title("ensemble sizes (logistic)")
    for ax in (left, right):
        ax.set_xlabel("EnKF iteration")
        ax.set_ylabel("test error (%)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no runs for this panel", transform=ax.transAxes, ha="center", color="0.4")
    fig.suptitle("Figure 8: EnKF on the paper CNN, one epoch", fontsize=11)
    caption(fig, cfg, df, "ensemble-mean network; first point = initial ensemble")
    return fig


def _at(df: pd.DataFrame, which: str, j: int):
    """(value, "it N, J=j") of the first evaluation after 0 or the last one; None if absent."""
    value = value_at(df, "test_error", which)
    if value is None:
        return None
    c = curve(df)
    c = c[c["iteration"] > 0]
    it = int(c["iteration"].min() if which == "first" else c["iteration"].max())
    return value, f"it {it}, J={j}"


def _measure(act: str, which: str):
    def f(df, cfg):
        err = metric(df, "test_error")
        if err.empty:
            return None
        j = main_ensemble_size(err)
        return _at(runs_where(err, activation=act, ensemble_size=j), which, j)

    return f


def _measure_size(rank: str, which: str):
    def f(df, cfg):
        err = metric(df, "test_error")
        err = err[err["activation"] == "logistic"]
        sizes = sorted(err["ensemble_size"].astype(int).unique())
        if not sizes:
            return None
        j = {"smallest": sizes[0], "main": main_ensemble_size(metric(df, "test_error")), "largest": sizes[-1]}[rank]
        return _at(runs_where(err, ensemble_size=j), which, j)

    return f


register(Figure(
    id="8", config="fig8",
    title="EnKF test error: activations and ensemble sizes",
    description="EnKF, 1 epoch: logistic/ReLU/tanh at J=5000; J=100/5000/10000 (logistic)",
    variants=variants, plot=plot, varies=("model.activation", "optimizer.ensemble_size"),
    paper_numbers=(
        PaperNumber("test error (%) at first evaluation (it 500), logistic", 6.11, _measure("logistic", "first")),
        PaperNumber("test error (%) at first evaluation (it 500), ReLU", 6.56, _measure("relu", "first")),
        PaperNumber("test error (%) at first evaluation (it 500), tanh", 8.15, _measure("tanh", "first")),
        PaperNumber("test error (%) after the epoch, logistic", 3.8, _measure("logistic", "last")),
        PaperNumber("test error (%) after the epoch, ReLU", 3.75, _measure("relu", "last")),
        PaperNumber("test error (%) after the epoch, tanh", 4.51, _measure("tanh", "last")),
        PaperNumber("test error (%) after a few hundred its, smallest J (100)", 47.0,
                    _measure_size("smallest", "first")),
        PaperNumber("test error (%) after the epoch, J = 5000", 3.8, _measure_size("main", "last")),
        PaperNumber("test error (%) after the epoch, largest J (10000)", 3.0, _measure_size("largest", "last")),
    ),
))
