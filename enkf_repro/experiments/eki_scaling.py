"""Kovachki & Stuart's ensemble-size scaling: final test accuracy against J on MNIST and
Fashion-MNIST (Kovachki & Stuart report the figure, no numbers).

Variants: dataset x method (labels of eki_table.METHODS, ensemble methods only; EKI and EKI(R)
by default) x J in ``figure.<scale>.ensemble_sizes``, on ``model=dnn2`` (784-128-10; their
network is unconfirmed). Smoke scale builds both datasets from their t10k files
(``dataset.test_only=true``), so it runs where only the MNIST test files exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import matplotlib.pyplot as plt
import pandas as pd

from ..config.schema import FigureSettings
from .base import Figure, Variant, register
from .common import known
from .draw import COLORS, band, caption
from .eki_table import METHODS, final_accuracy, method_variant

DATASETS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
ENSEMBLE_METHODS = {m: v for m, v in METHODS.items() if v[3]}


@dataclass
class EKIScalingSettings(FigureSettings):
    ensemble_sizes: List[int] = field(default_factory=list)
    optimizers: List[str] = field(default_factory=lambda: ["eki", "eki_r"])   # ensemble methods of eki_table


def variants(cfg, s: EKIScalingSettings) -> list[Variant]:
    methods = known(s.optimizers, ENSEMBLE_METHODS, cfg)
    return [method_variant(f"{d}-{meth}-J{J}", meth, J, dataset=d)
            for d in DATASETS for meth in methods for J in s.ensemble_sizes]


def plot(df: pd.DataFrame, cfg):
    acc = final_accuracy(df)
    acc["method"] = acc["series"].astype(str).str.split("-").str[1]
    acc["value"] = 100.0 * acc["accuracy"]
    acc["ensemble_size"] = acc["ensemble_size"].astype(int)
    datasets = [d for d in DATASETS if d in set(acc["dataset"].astype(str))]
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(4.6 * max(1, len(datasets)), 3.6), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        sub = acc[acc["dataset"].astype(str) == d]
        for i, meth in enumerate(m for m in METHODS if m in set(sub["method"])):
            name = METHODS[meth][0]
            for network, style in (("mean", "-"), ("best", "--")):
                part = sub[(sub["method"] == meth) & (sub["network"] == network)]
                band(ax, part, f"{name} ({network})", COLORS[i], x="ensemble_size", linestyle=style)
        ax.set_xscale("log")
        Js = sorted(sub["ensemble_size"].unique())
        ax.set_xticks(Js, [str(j) for j in Js])
        ax.minorticks_off()
        ax.set_xlabel("ensemble size J (members)")
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title(DATASETS[d])
        ax.legend()
    fig.suptitle("EKI: test accuracy against ensemble size (dense network)", fontsize=11)
    caption(fig, cfg, df, "solid: ensemble-mean network, dashed: best member (lowest training loss)")
    return fig


register(Figure(
    datasets=("mnist", "fashion_mnist"),
    id="eki_scaling", config="eki_scaling", settings=EKIScalingSettings,
    title="EKI test accuracy against ensemble size, MNIST and Fashion-MNIST",
    description="EKI and EKI(R) on DNN 2: final test accuracy vs J, MNIST and Fashion-MNIST",
    variants=variants, plot=plot, varies=("dataset", "optimizer"),
    label=lambda cfg, series: f"{series.rsplit('-', 1)[0]}-J{cfg.optimizer.ensemble_size}",
))
