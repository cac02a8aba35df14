"""Figure 10: Algorithm 1 (adaptive ensemble size J, repetitions r, budget N) against the fixed
EnKF, one epoch, both starting at J = 5000 and r = 8 (adaptive.py has the algorithm).

The paper reports the same test error for both runs, r dropping by 1 every 500 iterations and J
dropping by 1000 after 1500 iterations, the adaptive run over by iteration 2500: the rule it
ran (``optimizer.adaptive.rule=as_run``, the default), not the pseudo-code as printed
(``printed``). Drawn as the paper's figure: test error of both runs
over the iterations, with J and r of each run on two secondary axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import pandas as pd

from ..config.schema import FigureSettings
from .base import Claim, Figure, PaperNumber, Variant, register
from .common import value_at
from .draw import COLORS, band, caption, mean_std, metric
from .paper_units import at_step

J_METRIC, R_METRIC = "adaptive_ensemble_size", "adaptive_repetitions"


@dataclass
class Fig10Settings(FigureSettings):
    ensemble_size: int = 5000   # J at the start of both runs


def variants(cfg, s: Fig10Settings) -> list[Variant]:
    J = s.ensemble_size
    return [Variant(f"{kind}-J{J}", {"optimizer.ensemble_size": J, "optimizer.adaptive.enabled": kind == "adaptive"})
            for kind in ("fixed", "adaptive")]


def split_runs(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of the fixed runs, rows of the adaptive runs): adaptive runs log ``adaptive_*`` rows."""
    adaptive = set(df.loc[df["metric"] == J_METRIC, "run_dir"])
    mask = df["run_dir"].isin(adaptive)
    return df[~mask], df[mask]


def _steps(ax, rows: pd.DataFrame, color: str, label: str, **kw) -> None:
    s = mean_std(rows)
    if not s.empty:
        ax.plot(s["iteration"], s["mean"], drawstyle="steps-post", color=color, label=label, **kw)


def _flat(ax, fixed: pd.DataFrame, column: str, color: str, label: str) -> None:
    if fixed.empty:
        return
    x = [0, int(fixed["iteration"].max())]
    ax.plot(x, [float(fixed[column].astype(float).iloc[0])] * 2, color=color, linestyle="--", label=label)


def plot(df: pd.DataFrame, cfg):
    fixed, adaptive = split_runs(df)
    fig, ax = plt.subplots(figsize=(7.2, 3.9))
    band(ax, metric(fixed, "test_error"), "test error, fixed", COLORS[0])
    band(ax, metric(adaptive, "test_error"), "test error, adaptive", COLORS[1])
    ax.set_xlabel("EnKF iteration")
    ax.set_ylabel("test error (%)")
    ax_j = ax.twinx()
    _flat(ax_j, fixed, "ensemble_size", COLORS[2], "J, fixed")
    _steps(ax_j, metric(adaptive, J_METRIC), COLORS[2], "J, adaptive")
    ax_j.set_ylabel("ensemble size J (members)", color=COLORS[2])
    ax_j.set_ylim(bottom=0, top=1.1 * max(ax_j.get_ylim()[1], 1))
    ax_r = ax.twinx()
    ax_r.spines["right"].set_position(("outward", 48))
    _flat(ax_r, fixed, "repetitions", COLORS[3], "r, fixed")
    _steps(ax_r, metric(adaptive, R_METRIC), COLORS[3], "r, adaptive", linewidth=1.2)
    ax_r.set_ylabel("repetitions r (iterations per batch)", color=COLORS[3])
    ax_r.set_ylim(0, max(9, ax_r.get_ylim()[1]))
    for a in (ax_j, ax_r):
        a.grid(False)
        a.spines["right"].set_visible(True)
    handles, labels = [], []
    for a in (ax, ax_j, ax_r):
        h, l_ = a.get_legend_handles_labels()
        handles += h
        labels += l_
    ax.legend(handles, labels, fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
    fig.suptitle("Figure 10: adaptive ensemble size and repetitions (Algorithm 1)", fontsize=11)
    its = {name: int(part["iteration"].max()) for name, part in (("fixed", fixed), ("adaptive", adaptive))
           if not part.empty}
    caption(fig, cfg, df, "iterations: " + ", ".join(f"{k} {v}" for k, v in its.items()))
    return fig


def _final(which: str, metric_name: str = "test_error"):
    def f(df, cfg):
        fixed, adaptive = split_runs(df)
        return value_at(fixed if which == "fixed" else adaptive, metric_name, "last")

    return f


def _matched(df) -> tuple[float, float, int, int] | None:
    """(adaptive error at its end, fixed error at the same iteration, that iteration, the fixed
    run's evaluation read): the paper compares the two curves where the adaptive run ends (its
    Figure 10 shows the fixed run up to iteration 2,500)."""
    fixed, adaptive = split_runs(df)
    a = metric(adaptive, "test_error")
    f = metric(fixed, "test_error")
    if a.empty or f.empty:
        return None
    end = int(a.groupby("run_dir")["iteration"].max().mean())
    got = at_step(f, end)
    if got is None:
        return None
    return float(value_at(adaptive, "test_error", "last")), got[0], end, got[1]


def _at_matched(which: str):
    def f(df, cfg):
        m = _matched(df)
        if m is None:
            return None
        return (m[0], f"it {m[2]} (its end)") if which == "adaptive" else (m[1], f"it {m[3]}")

    return f


def _gap(df, cfg):
    m = _matched(df)
    return None if m is None else (m[0] - m[1], f"at it {m[2]}")


def _first_drop(metric_name: str):
    """Mean over seeds of the first iteration where the adaptive run's J (or r) is below its start."""
    def f(df, cfg):
        _, adaptive = split_runs(df)
        rows = metric(adaptive, metric_name).sort_values("iteration")
        its = []
        for _, run in rows.groupby("run_dir"):
            start = run["value"].iloc[0]
            below = run[run["value"] < start]
            if not below.empty:
                its.append(float(below["iteration"].iloc[0]))
        return sum(its) / len(its) if its else None

    return f


def _claim_same_error(df, cfg):
    m = _matched(df)
    if m is None:
        return "the fixed or the adaptive run is missing", None
    a, b, end, read = m
    return (f"test error where the adaptive run ends (it {end}): adaptive {a:.2f} %, fixed {b:.2f} % (its evaluation "
            f"at it {read})", bool(abs(a - b) <= 1.0))


def _claim_cheaper(df, cfg):
    fixed, adaptive = split_runs(df)
    if fixed.empty or adaptive.empty:
        return "the fixed or the adaptive run is missing", None
    its_f, its_a = int(fixed["iteration"].max()), int(adaptive["iteration"].max())
    J = metric(adaptive, J_METRIC).sort_values("iteration")["value"]
    r = metric(adaptive, R_METRIC).sort_values("iteration")["value"]
    evidence = (f"iterations fixed {its_f}, adaptive {its_a}; adaptive J {int(J.iloc[0])} -> {int(J.iloc[-1])}, "
                f"r {int(r.iloc[0])} -> {int(r.iloc[-1])}")
    return evidence, bool(its_a < its_f and J.iloc[-1] < J.iloc[0] and r.iloc[-1] < r.iloc[0])


register(Figure(
    id="10", config="fig10", settings=Fig10Settings,
    title="Adaptive ensemble size and repetitions (Algorithm 1)",
    description="EnKF, 1 epoch: fixed J=5000, r=8 vs Algorithm 1 (adaptive J, r, budget)",
    variants=variants, plot=plot, varies=("optimizer.adaptive.enabled",),
    label=lambda cfg, series: f"{series.split('-')[0]}-J{cfg.optimizer.ensemble_size}",
    paper_numbers=(
        PaperNumber("test error (%) where the adaptive run ends (paper: iteration 2,500), fixed", "same as adaptive",
                    _at_matched("fixed")),
        PaperNumber("test error (%) where the adaptive run ends (paper: iteration 2,500), adaptive", "same as fixed",
                    _at_matched("adaptive")),
        PaperNumber("test error there, adaptive - fixed (points)", 0.0, _gap),
        PaperNumber("ensemble size J at the end, adaptive", "5000 - 1000 after 1500 its", _final("adaptive", J_METRIC)),
        PaperNumber("repetitions r at the end, adaptive", "8 - 1 every 500 its", _final("adaptive", R_METRIC)),
        PaperNumber("iteration of the first decrease of J", 1500, _first_drop(J_METRIC)),
        PaperNumber("iteration of the first decrease of r", 500, _first_drop(R_METRIC)),
    ),
    claims=(
        Claim("where Algorithm 1 ends, its test error is within 1 point of the fixed run's at the same iteration",
              _claim_same_error, sentence="the adaptive run reaches the same test error as the fixed one, "
              "finishing its epoch by iteration 2,500 (Figure 10)", unit="EnKF iterations",
              threshold="adaptive and fixed at most 1 point apart"),
        Claim("Algorithm 1 uses fewer iterations and ends with a smaller J and r", _claim_cheaper,
              sentence="\"we were able to decrease the repetitions r by 1 in every 500th iteration\"; \"after 1500 "
              "iterations the number of ensembles is decreased by v = 1000\" (Figure 10)", unit="EnKF iterations",
              threshold="fewer iterations; J and r below their start"),
    ),
))
