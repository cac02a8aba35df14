"""The 2019 thesis: the MLP 784-128-10 trained by its simplified iterative EnKF
(``optimizer=ienk_simple``: per training sample, all layers perturbed jointly, K = 10) against
SGD, Nesterov momentum SGD (NAG) and Adam, 10 epochs on MNIST. The thesis reports test accuracy
0.886 (IEnK), 0.8922 (SGD), 0.936 (NAG), 0.9699 (Adam) (its README, "Test accuracy").

Settings, from the thesis's published code and README (diepi/Ensemble-Kalman-for-Neural-Network)
where they give them: learning rate 0.001, batch size 500, K = 10 (README, "Results"); the
training set read in order, no shuffling (codes/main.py: batches of 500 in the order of the
dataset, IEnK updates per sample within a batch); Glorot-normal weights, zero biases. Applied here
to all four methods: ``train.batch_size=500``, ``train.shuffle=false``. The README's "learning
rate 0.001" is the IEnK's: the baselines' code is not published, and on the full MNIST SGD at
0.001 reaches only 0.72 after 10 epochs, while at Keras's default 0.01 SGD and NAG reach 0.894 /
0.942 against the thesis's 0.8922 / 0.936. So SGD and NAG run at ``baseline_lr`` = 0.01 (0.001 as
an option), Adam at 0.001 (Keras's default too). Our choices: NAG momentum 0.9; Adam's betas 0.9 /
0.999 (the Keras and PyTorch defaults); cross-entropy averaged over the batch.

What is plotted: the thesis's training plot (README, alldnn1.png) is TRAINING accuracy per epoch:
for IEnK the accuracy on the last batch of 500 of each epoch, each sample predicted by the
unperturbed network just before its own update (codes/main.py prints ``hist10[0][120*k-1]``),
which runs above the test accuracy (about 0.91 at epoch 9 against the test 0.886). We plot TEST
accuracy at the end of every epoch (evaluated every ``per-epoch batches`` iterations); the stars
are the thesis's final test accuracies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import matplotlib.pyplot as plt
import pandas as pd

from ..config.schema import FigureSettings
from .base import Claim, Figure, PaperNumber, Variant, register
from .common import known
from .draw import COLORS, PASS_LABEL, band, caption

# series -> (name, optimizer, its values); the baselines' learning rate is ThesisSettings.baseline_lr
METHODS: dict[str, tuple[str, str, dict]] = {
    "ienk": ("IEnK", "ienk_simple", {}),
    "sgd": ("SGD", "sgd", {"optimizer.momentum": 0.0}),
    "nag": ("NAG", "sgd", {"optimizer.momentum": 0.9, "optimizer.nesterov": True}),
    "adam": ("Adam", "adam", {"optimizer.lr": 0.001}),
}
REPORTED = {"ienk": 0.886, "sgd": 0.8922, "nag": 0.936, "adam": 0.9699}
CLOSE = 0.02   # "close": within 2 accuracy points (the thesis: IEnK 0.6 points below SGD)


@dataclass
class ThesisSettings(FigureSettings):
    optimizers: List[str] = field(default_factory=lambda: list(METHODS))
    # SGD's and NAG's learning rate: 0.01, Keras's default, reproduces the thesis's 0.8922 / 0.936
    # on the full MNIST (0.894 / 0.942); 0.001, the rate the thesis's README lists under its
    # results (the IEnK's), gives SGD 0.72 there
    baseline_lr: float = 0.01


def variants(cfg, s: ThesisSettings) -> list[Variant]:
    out = []
    for m in known(s.optimizers, METHODS, cfg):
        _, optimizer, values = METHODS[m]
        lr = {"optimizer.lr": s.baseline_lr} if optimizer == "sgd" else {}
        out.append(Variant(m, {**lr, **values}, groups={"optimizer": optimizer}))
    return out


def accuracy_curves(df: pd.DataFrame) -> pd.DataFrame:
    err = df[df["metric"] == "test_error"].copy()
    err["value"] = 100.0 - err["value"]
    return err


def plot(df: pd.DataFrame, cfg):
    acc = accuracy_curves(df)
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    last_epoch = float(acc["pass"].max()) if not acc.empty else 10.0
    for i, (m, (name, *_)) in enumerate(METHODS.items()):
        d = acc[acc["series"].astype(str) == m]
        if d.empty:
            continue
        band(ax, d, name, COLORS[i], x="pass")
        ax.scatter([last_epoch], [100 * REPORTED[m]], marker="*", s=90, color=COLORS[i], edgecolor="black",
                   linewidth=0.5, zorder=5)
    ax.scatter([], [], marker="*", s=90, color="white", edgecolor="black", label="thesis, test, after 10 epochs")
    ax.set_xlabel(PASS_LABEL)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Thesis MLP 784-128-10: IEnK vs SGD, NAG, Adam")
    ax.legend()
    caption(fig, cfg, df, "lines: our runs, test accuracy (mean ± std over seeds); stars: the thesis's final "
                          "test accuracies (its own plot shows training accuracy)")
    return fig


def final_accuracy(df: pd.DataFrame, method: str) -> tuple[float, int, float] | None:
    """(accuracy as a fraction, runs, epoch) at the last evaluation of each run of ``method``
    (metric test_error), the mean over its runs; None when there are none."""
    acc = accuracy_curves(df)
    acc = acc[acc["series"].astype(str) == method]
    if acc.empty:
        return None
    last = acc.sort_values("iteration").groupby("run_dir").tail(1)
    return float(last["value"].mean()) / 100.0, len(last), float(last["pass"].max())


def _measure(method: str):
    def f(df, cfg):
        got = final_accuracy(df, method)
        return None if got is None else got[0]

    return f


def _where(df, *methods) -> str:
    runs = [final_accuracy(df, m) for m in methods]
    n = "/".join(str(r[1]) for r in runs)
    return (f"final test accuracy (metric test_error at each run's last evaluation, epoch {runs[0][2]:g}; "
            f"mean over {n} runs of series {'/'.join(methods)})")


def adam_above_ienk(df, cfg):
    adam, ienk = final_accuracy(df, "adam"), final_accuracy(df, "ienk")
    if adam is None or ienk is None:
        return "series adam or ienk missing", None
    return (f"Adam {adam[0]:.4f} vs IEnK {ienk[0]:.4f}, {_where(df, 'adam', 'ienk')}; the thesis: "
            f"{REPORTED['adam']} vs {REPORTED['ienk']}", adam[0] > ienk[0])


def ienk_close_to_sgd(df, cfg):
    ienk, sgd = final_accuracy(df, "ienk"), final_accuracy(df, "sgd")
    if ienk is None or sgd is None:
        return "series ienk or sgd missing", None
    diff = ienk[0] - sgd[0]
    return (f"IEnK {ienk[0]:.4f} vs SGD {sgd[0]:.4f} (IEnK - SGD = {diff:+.4f}), {_where(df, 'ienk', 'sgd')}; "
            f"the thesis: {REPORTED['ienk']} vs {REPORTED['sgd']}", abs(diff) <= CLOSE)


register(Figure(
    id="thesis", config="thesis", settings=ThesisSettings,
    title="2019 thesis: MLP trained by the simplified IEnK vs SGD, NAG, Adam",
    description="MLP 784-128-10 on MNIST, 10 epochs: IEnK (per sample, layers perturbed jointly) vs SGD, NAG, Adam",
    variants=variants, plot=plot, varies=("optimizer",),
    paper_numbers=tuple(PaperNumber(f"test accuracy after 10 epochs, {METHODS[m][0]}", v, _measure(m))
                        for m, v in REPORTED.items()),
    claims=(
        Claim("Adam ends above IEnK in test accuracy (the thesis: 0.9699 vs 0.886)", adam_above_ienk),
        Claim(f"IEnK ends close to SGD, within {100 * CLOSE:g} accuracy points (the thesis: 0.886 vs 0.8922)",
              ienk_close_to_sgd),
    ),
))
