"""The 2019 master thesis: the MLP 784-128-10 trained by its simplified iterative EnKF
(``optimizer=ienk_simple``, one update per training sample) against SGD, Nesterov momentum SGD
(NAG) and Adam, 10 epochs on MNIST. The thesis reports test accuracy 0.886 (IEnK), 0.892 (SGD),
0.936 (NAG), 0.970 (Adam).

Baselines (the thesis's settings are not available): lr = 0.001 for all three, the IEnK's own lr
(SGD and NAG with lr 0.1 would beat the reported 0.892 / 0.936 by far; lr 0.001 is the value
consistent with them), NAG momentum 0.9, cross-entropy, batch 64, shuffled; Glorot-normal init,
zero biases for every method. One IEnK "iteration" is one mini-batch of 64 samples processed one
sample at a time, so the x axis (epochs) is shared by all methods.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from .base import Figure, PaperNumber, Variant, register
from .draw import COLORS, PASS_LABEL, band, caption

METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ienk": ("IEnK", ("optimizer=ienk_simple",)),
    "sgd": ("SGD", ("optimizer=sgd", "optimizer.lr=0.001", "optimizer.momentum=0.0")),
    "nag": ("NAG", ("optimizer=sgd", "optimizer.lr=0.001", "optimizer.momentum=0.9", "optimizer.nesterov=true")),
    "adam": ("Adam", ("optimizer=adam", "optimizer.lr=0.001")),
}
REPORTED = {"ienk": 0.886, "sgd": 0.892, "nag": 0.936, "adam": 0.970}


def variants(cfg, s) -> list[Variant]:
    out = []
    for m in s.optimizers:
        if m not in METHODS:
            from ..errors import ConfigError

            raise ConfigError(f"figure.{cfg.scale.name.value}.optimizers", m, "a list of " + ", ".join(METHODS))
        out.append(Variant(m, METHODS[m][1]))
    return out


def accuracy_curves(df: pd.DataFrame) -> pd.DataFrame:
    err = df[df["metric"] == "test_error"].copy()
    err["value"] = 100.0 - err["value"]
    return err


def plot(df: pd.DataFrame, cfg):
    acc = accuracy_curves(df)
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    last_epoch = float(acc["pass"].max()) if not acc.empty else 10.0
    for i, (m, (name, _)) in enumerate(METHODS.items()):
        d = acc[acc["series"].astype(str) == m]
        if d.empty:
            continue
        band(ax, d, name, COLORS[i], x="pass")
        ax.scatter([last_epoch], [100 * REPORTED[m]], marker="*", s=90, color=COLORS[i], edgecolor="black",
                   linewidth=0.5, zorder=5)
    ax.scatter([], [], marker="*", s=90, color="white", edgecolor="black", label="thesis, after 10 epochs")
    ax.set_xlabel(PASS_LABEL)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Thesis MLP 784-128-10: IEnK vs SGD, NAG, Adam")
    ax.legend()
    caption(fig, cfg, df, "lines: our runs (mean ± std over seeds); stars: the thesis's final values")
    return fig


def _measure(method: str):
    def f(df, cfg):
        acc = accuracy_curves(df)
        acc = acc[acc["series"].astype(str) == method]
        if acc.empty:
            return None
        last = acc.sort_values("iteration").groupby("run_dir").tail(1)
        return float(last["value"].mean()) / 100.0

    return f


register(Figure(
    id="thesis", config="thesis",
    title="2019 thesis: MLP trained by the simplified IEnK vs SGD, NAG, Adam",
    description="MLP 784-128-10 on MNIST, 10 epochs: IEnK (per sample) vs SGD, NAG, Adam",
    variants=variants, plot=plot, varies=("optimizer",),
    paper_numbers=tuple(PaperNumber(f"test accuracy after 10 epochs, {METHODS[m][0]}", v, _measure(m))
                        for m, v in REPORTED.items()),
))
