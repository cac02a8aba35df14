"""Figure 8: EnKF test error over one epoch.

Left: activation functions (logistic / ReLU / tanh) at J = 5000. Right: ensemble sizes
J = 100 / 5000 / 10000 (logistic). The paper reports, for the left panel, 6.11 / 6.56 / 8.15 %
after 500 iterations and 3.8 / 3.75 / 4.51 % after the epoch; for the right, about 47 % with
J = 100 after a few hundred iterations, 3.8 % (J = 5000) and 3.0 % (J = 10000).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import matplotlib.pyplot as plt
import pandas as pd

from ..config.schema import Activation, FigureSettings, name_of
from .base import Claim, Figure, PaperNumber, Variant, register
from .common import curve, planned_ensemble_sizes, runs_where
from .draw import COLORS, band, caption, metric
from .paper_units import error_after, paper_epochs

ACT_LABEL = {"logistic": "logistic", "relu": "ReLU", "tanh": "tanh"}


@dataclass
class Fig8Settings(FigureSettings):
    ensemble_size: int = 5000                                   # J of the activations panel
    activations: List[Activation] = field(default_factory=list)
    ensemble_sizes: List[int] = field(default_factory=list)     # J of the logistic panel


def variants(cfg, s: Fig8Settings) -> list[Variant]:
    runs = [(a.value, s.ensemble_size) for a in s.activations] + [("logistic", j) for j in s.ensemble_sizes]
    return [Variant(f"{a}-J{j}", {"model.activation": a, "optimizer.ensemble_size": j}) for a, j in runs]


def main_ensemble_size(df: pd.DataFrame) -> int:
    """The J of the activations panel: the one with the most activations (ties: the largest)."""
    counts = df.groupby("ensemble_size")["activation"].nunique()
    best = counts.max()
    return int(max(j for j, c in counts.items() if c == best))


def planned_sizes(cfg) -> dict[str, int | None]:
    """The J the figure's runs have (common.planned_ensemble_sizes): ``main`` (the activations
    panel), the ``smallest`` and ``largest`` of the logistic panel (None when it plans none)."""
    s = FIGURE.settings_of(cfg)
    (main,) = planned_ensemble_sizes(cfg, [s.ensemble_size])
    sizes = planned_ensemble_sizes(cfg, s.ensemble_sizes)
    return {"main": main, "smallest": sizes[0] if sizes else None, "largest": sizes[-1] if sizes else None}


def activations_panel_size(err: pd.DataFrame, cfg) -> int | None:
    """The J of the left panel: the planned one when it has runs, else the J with the most
    activations unless that is logistic alone (the right panel's curve: a figure holding only the
    J = 100 run draws it once), else None."""
    planned = planned_sizes(cfg)["main"]
    if not runs_where(err, ensemble_size=planned).empty or err.empty:
        return planned
    J = main_ensemble_size(err)
    return None if set(runs_where(err, ensemble_size=J)["activation"].astype(str)) == {"logistic"} else J


def plot(df: pd.DataFrame, cfg):
    err = metric(df, "test_error")
    J = activations_panel_size(err, cfg)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), sharey=False)
    for i, act in enumerate(["logistic", "relu", "tanh"] if J is not None else []):
        band(left, runs_where(err, activation=act, ensemble_size=J), f"{ACT_LABEL[act]}", COLORS[i])
    left.set_title(f"activation functions (J = {J if J is not None else planned_sizes(cfg)['main']})")
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


def _with_pe(err: pd.DataFrame) -> pd.DataFrame:
    return err.assign(pe=paper_epochs(err))


def _at(d: pd.DataFrame, when: str, j: int):
    """The test error after 500 iterations (``"it500"``) or after the paper's epoch (``"epoch"``:
    60,000 images, 7,504 iterations at r = 8); see paper_units.error_after."""
    return error_after(d, steps=500, label=f"J={j}") if when == "it500" else error_after(d, epochs=1.0, label=f"J={j}")


def plateau(d: pd.DataFrame) -> float | None:
    """Mean test error over the second half of the paper's epoch (the evaluations between 30,000
    and 60,000 images), mean over runs: the level a curve stagnates at; None when a run ends
    before the epoch does."""
    d = _with_pe(curve(d))
    if d.empty or (d.groupby("run_dir")["pe"].max() < 0.95).any():
        return None
    # the epoch ends with its last, partial batch counted whole: 938 x 64 = 60,032 images
    vals = [float(r.loc[(r["pe"] >= 0.5) & (r["pe"] <= 1.001), "value"].mean()) for _, r in d.groupby("run_dir")]
    return sum(vals) / len(vals)


def _measure(act: str, when: str):
    def f(df, cfg):
        err = metric(df, "test_error")
        if err.empty:
            return None
        j = planned_sizes(cfg)["main"]
        return _at(runs_where(err, activation=act, ensemble_size=j), when, j)

    return f


def _logistic(df):
    err = metric(df, "test_error")
    return err[err["activation"] == "logistic"]


def _measure_size(rank: str, when: str):
    def f(df, cfg):
        err = _logistic(df)
        j = planned_sizes(cfg)[rank]
        if err.empty or j is None:
            return None
        if when == "plateau":
            d = runs_where(err, ensemble_size=j)
            if d.empty:
                return None
            v = plateau(d)
            return (None, "not reached: the run ends before the paper's epoch") if v is None else \
                (v, f"mean over the second half of the epoch, J={j}")
        return _at(runs_where(err, ensemble_size=j), when, j)

    return f


def _finals(df) -> tuple[dict[tuple[str, int], float], str]:
    """Test error after the paper's epoch (mean over seeds) per (activation, J) whose runs reach
    it, and a note on the ones that do not."""
    err = metric(df, "test_error")
    out, short = {}, []
    for (act, j), d in err.groupby(["activation", err["ensemble_size"].astype(int)]):
        got = _at(d, "epoch", int(j))
        if got is not None and got[0] is not None:
            out[(str(act), int(j))] = got[0]
        elif got is not None:
            short.append(f"{act} J={j}: {got[1]}")
    return out, "; ".join(short)


EPOCH_UNIT = "the paper's epoch (60,000 images = 7,504 EnKF iterations at r = 8)"


def _claim_activations(df, cfg):
    finals, short = _finals(df)
    if metric(df, "test_error").empty:
        return "no runs", None
    j = planned_sizes(cfg)["main"]
    got = {a: finals.get((a, j)) for a in ("logistic", "relu", "tanh")}
    if any(v is None for v in got.values()):
        present = sorted(a for a, v in got.items() if v is not None)
        return (f"the three activations at J={j} after the paper's epoch are needed; there: {present}"
                + (f"; {short}" if short else "")), None
    lo, re_, ta = got["logistic"], got["relu"], got["tanh"]
    evidence = f"test error after the epoch at J={j}: logistic {lo:.2f} %, ReLU {re_:.2f} %, tanh {ta:.2f} %"
    return evidence, bool(abs(lo - re_) <= 1.0 and ta > max(lo, re_))


def _claim_falls_with_J(df, cfg):
    finals, short = _finals(df)
    finals = {j: v for (a, j), v in finals.items() if a == "logistic"}
    js = planned_ensemble_sizes(cfg, FIGURE.settings_of(cfg).ensemble_sizes)
    if len(js) < 2:
        return "fewer than two ensemble sizes planned", None
    missing = [j for j in js if j not in finals]
    if missing:
        return (f"logistic at J={', '.join(map(str, js))} after the paper's epoch are needed; missing or short of "
                "it: J=" + ", ".join(map(str, missing)) + (f" ({short})" if short else "")), None
    evidence = "test error after the epoch (logistic) " + ", ".join(f"J={j}: {finals[j]:.2f} %" for j in js)
    return evidence, bool(all(finals[a] > finals[b] for a, b in zip(js, js[1:])))


def _claim_smallest_plateaus(df, cfg):
    err = _logistic(df)
    sizes = planned_sizes(cfg)
    small_j, large_j = sizes["smallest"], sizes["largest"]
    if small_j is None or small_j == large_j:
        return "fewer than two ensemble sizes planned", None
    at_small = runs_where(err, ensemble_size=small_j)
    small = None if at_small.empty else plateau(at_small)
    large = _at(runs_where(err, ensemble_size=large_j), "epoch", large_j)
    if small is None or large is None or large[0] is None:
        return (f"J={small_j} and J={large_j} over the paper's whole epoch are needed (not there, or the runs end "
                "before it)"), None
    evidence = (f"J={small_j} stagnates at {small:.2f} % (mean over the second half of the epoch); "
                f"J={large_j} ends at {large[0]:.2f} %")
    return evidence, bool(small > 2 * large[0])


def _claim_early_gain(df, cfg):
    """Most of the gain (initial error -> after the epoch) is there after 500 iterations."""
    err = metric(df, "test_error")
    if err.empty:
        return "no runs", None
    j = planned_sizes(cfg)["main"]
    at_j = runs_where(err, ensemble_size=j)
    if at_j.empty:
        return f"no runs at J={j}", None
    parts, ok = [], []
    for act, d in at_j.groupby("activation"):
        start = float(d[d["iteration"] == 0]["value"].mean())
        first, last = _at(d, "it500", j), _at(d, "epoch", j)
        if first is None or last is None or first[0] is None or last[0] is None:
            return f"{act} at J={j}: iteration 500 and the end of the paper's epoch are needed " \
                f"({(first or last or (None, ''))[1]})", None
        if start <= last[0]:
            continue
        share = (start - first[0]) / (start - last[0])
        parts.append(f"{act} {100 * share:.0f} % of the gain by it 500")
        ok.append(bool(share >= 0.5))
    if not ok:
        return "no run improved", None
    return "; ".join(parts), bool(all(ok))


FIGURE = register(Figure(
    id="8", config="fig8", settings=Fig8Settings,
    title="EnKF test error: activations and ensemble sizes",
    description="EnKF, 1 epoch: logistic/ReLU/tanh at J=5000; J=100/5000/10000 (logistic)",
    variants=variants, plot=plot, varies=("model.activation", "optimizer.ensemble_size"),
    label=lambda cfg, series: f"{name_of(cfg.model.activation)}-J{cfg.optimizer.ensemble_size}",
    paper_numbers=(
        PaperNumber("test error (%) after 500 iterations, logistic", 6.11, _measure("logistic", "it500")),
        PaperNumber("test error (%) after 500 iterations, ReLU", 6.56, _measure("relu", "it500")),
        PaperNumber("test error (%) after 500 iterations, tanh", 8.15, _measure("tanh", "it500")),
        PaperNumber("test error (%) after the epoch, logistic", 3.8, _measure("logistic", "epoch")),
        PaperNumber("test error (%) after the epoch, ReLU", 3.75, _measure("relu", "epoch")),
        PaperNumber("test error (%) after the epoch, tanh", 4.51, _measure("tanh", "epoch")),
        PaperNumber("test error (%) the smallest J (100) stagnates at (paper: around 47 % with a few "
                    "hundred members)", 47.0, _measure_size("smallest", "plateau")),
        PaperNumber("test error (%) after the epoch, J = 5000", 3.8, _measure_size("main", "epoch")),
        PaperNumber("test error (%) after the epoch, largest J (10000)", 3.0, _measure_size("largest", "epoch")),
    ),
    claims=(
        Claim("after the epoch logistic and ReLU are within 1 point of each other and tanh is worse",
              _claim_activations, sentence="logistic 3.8 %, ReLU 3.75 %, tanh 4.51 % after the epoch (Figure 8 left)",
              unit=EPOCH_UNIT, threshold="logistic and ReLU at most 1 point apart, tanh above both"),
        Claim("the test error after the epoch falls with J", _claim_falls_with_J,
              sentence="J = 100 / 5000 / 10000: ~47 % / 3.8 % / 3.0 % (Figure 8 right)", unit=EPOCH_UNIT,
              threshold="strictly lower at each larger J"),
        Claim("the smallest J stagnates far above the largest", _claim_smallest_plateaus,
              sentence="\"with a few hundred ensembles the test error stagnates around 47 %\" (Figure 8 right)",
              unit=EPOCH_UNIT, threshold="mean over the epoch's second half > 2 x the largest J's final error"),
        Claim("most of the gain comes by iteration 500", _claim_early_gain,
              sentence="6.11 / 6.56 / 8.15 % after 500 iterations, 3.8 / 3.75 / 4.51 % after the epoch (Figure 8 left)",
              unit="EnKF iterations; " + EPOCH_UNIT, threshold="(start - it 500) >= 1/2 (start - end of the epoch)"),
    ),
))
