"""Our own comparison of the ensemble Kalman training methods (no source reports it): test error
against iterations for the EnKF, EKI, EKI(R) and ETKI, each with its own step and with the
data-misfit controller (DMC), at equal J and an equal iteration budget, on the paper CNN and
Fashion-MNIST.

Every series makes one update per mini-batch on the same stream of batches (the EnKF at
r = 1 here, its per-sample ``sequential`` update and gamma = 0.01 otherwise as in the paper), so
the x-axis is both iterations and batches seen. The series:

* ``enkf``: the paper's EnKF (Gamma = 0.01 I on the logits), r = 1;
* ``eki``, ``eki_r``: Kovachki & Stuart's EKI and EKI(R) (cross-entropy on the softmax outputs,
  h_n = h0 / (||D||_F + eps), the ``decay`` (R) schedule);
* ``etki``: ensemble transform Kalman inversion, Gamma = 0.01 I on the logits, dt = 1;
* ``*_dmc``: the same method with ``optimizer.scheduler=data_misfit`` (Iglesias & Yang's
  controller; EKI then takes the Kalman form of its step, ``update_form=auto``) and
  ``on_terminate=continue``: EnsembleKalmanProcesses' default, ``stop`` at T = 1, would end a
  mini-batch run within a few steps (T = 1 is about one mini-batch's worth of data,
  optim/eki.py), so every series could not run the same budget; with ``continue`` the
  controller's uncapped steps go on after T. The plot marks where T = 1 was reached.

The right panel draws each method's step (h_n or dt_n; the EnKF's is 1). The final test errors
go to ``methods.csv`` / ``methods.md`` beside the figure (``tables``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import matplotlib.pyplot as plt
import pandas as pd

from ..config.schema import FigureSettings
from .base import Figure, Variant, register
from .common import known
from .draw import COLORS, band, caption, metric

DMC = {"optimizer.scheduler": "data_misfit", "optimizer.on_terminate": "continue"}
# series -> (label, family, optimizer, values)
SERIES: dict[str, tuple[str, str, str, dict]] = {
    "enkf": ("EnKF", "enkf", "enkf", {"optimizer.repetitions": 1}),
    "eki": ("EKI", "eki", "eki", {}),
    "eki_dmc": ("EKI + DMC", "eki", "eki", DMC),
    "eki_r": ("EKI(R)", "eki_r", "eki", {"optimizer.randomize": True}),
    "eki_r_dmc": ("EKI(R) + DMC", "eki_r", "eki", {"optimizer.randomize": True, **DMC}),
    "etki": ("ETKI", "etki", "etki", {}),
    "etki_dmc": ("ETKI + DMC", "etki", "etki", DMC),
}
FAMILY_COLOR = {"enkf": COLORS[0], "eki": COLORS[1], "eki_r": COLORS[2], "etki": COLORS[3]}


@dataclass
class MethodsSettings(FigureSettings):
    ensemble_size: Optional[int] = None                          # J of every series (null: each method's)
    optimizers: List[str] = field(default_factory=list)          # the series (empty: all)


def variants(cfg, s: MethodsSettings) -> list[Variant]:
    J = {"optimizer.ensemble_size": s.ensemble_size} if s.ensemble_size else {}
    return [Variant(name, {**SERIES[name][3], **J}, groups={"optimizer": SERIES[name][2]})
            for name in known(s.optimizers or list(SERIES), SERIES, cfg)]


def _reached_T(df: pd.DataFrame) -> pd.DataFrame:
    """Per DMC run: the first evaluation at which the algorithm time had reached 1, with the test
    error there (iteration, value)."""
    t = metric(df, "algorithm_time")
    err = metric(df, "test_error")
    rows = []
    for run, d in t.groupby("run_dir"):
        hit = d[d["value"] >= 1.0 - 1e-12].sort_values("iteration")
        if hit.empty:
            continue
        it = int(hit["iteration"].iloc[0])
        e = err[(err["run_dir"] == run) & (err["iteration"] == it)]
        if not e.empty:
            rows.append({"series": str(hit["series"].iloc[0]), "iteration": it, "value": float(e["value"].iloc[0])})
    return pd.DataFrame(rows, columns=["series", "iteration", "value"])


def plot(df: pd.DataFrame, cfg):
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.9), gridspec_kw={"width_ratios": [3, 2]})
    err, step = metric(df, "test_error"), metric(df, "step_size")
    marks = _reached_T(df)
    for name, (label, family, *_) in SERIES.items():
        color = FAMILY_COLOR[family]
        style = "--" if name.endswith("_dmc") else "-"
        d = err[err["series"].astype(str) == name]
        if not d.empty:
            band(left, d, label, color, linestyle=style, marker=None)
        m = marks[marks["series"] == name]
        if not m.empty:
            left.scatter(m["iteration"], m["value"], marker="v", s=40, color=color, edgecolor="black",
                         linewidth=0.5, zorder=5)
        s = step[step["series"].astype(str) == name]
        if not s.empty:
            band(right, s, label, color, linestyle=style, marker=None)
    if not marks.empty:
        left.scatter([], [], marker="v", s=40, color="white", edgecolor="black", label="DMC time reached T = 1")
    left.set_xlabel("iteration (= mini-batches seen)")
    left.set_ylabel("test error (%)")
    left.set_title("test error (ensemble-mean network)")
    handles, labels = left.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    right.axhline(1.0, color=FAMILY_COLOR["enkf"], linewidth=0.8)
    right.annotate("EnKF: 1", (0.01, 1.0), xycoords=("axes fraction", "data"), xytext=(2, 2),
                   textcoords="offset points", fontsize=7, color=FAMILY_COLOR["enkf"])
    right.set_yscale("log")
    right.set_xlabel("iteration")
    right.set_ylabel("step h_n or dt_n")
    right.set_title("step size (colours and lines as on the left)")
    J = sorted(df["ensemble_size"].dropna().astype(int).unique()) if not df.empty else []
    fig.suptitle(f"Ensemble Kalman methods on the paper CNN (J = {', '.join(map(str, J)) or '-'}), "
                 "our comparison", fontsize=11)
    caption(fig, cfg, df, "solid: each method's own step; dashed: data-misfit controller (on_terminate=continue); "
                          "EnKF at r = 1")
    return fig


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per series: the final test error (mean, std over seeds), runs, the last iteration."""
    err = metric(df, "test_error").sort_values("iteration")
    last = err.groupby("run_dir").tail(1)
    rows = []
    for name, (label, *_) in SERIES.items():
        d = last[last["series"].astype(str) == name]
        if d.empty:
            continue
        first = err[(err["series"].astype(str) == name) & (err["iteration"] == 0)]["value"]
        rows.append({"series": name, "method": label, "initial_error": float(first.mean()) if not first.empty else None,
                     "final_error": float(d["value"].mean()), "final_error_std": float(d["value"].std(ddof=0)),
                     "runs": int(len(d)), "iterations": int(d["iteration"].max())})
    return pd.DataFrame(rows, columns=["series", "method", "initial_error", "final_error", "final_error_std", "runs",
                                       "iterations"])


def tables(df: pd.DataFrame, cfg) -> dict[str, str]:
    """``methods.csv`` and ``methods.md``: the final test errors."""
    tab = summary(df)
    lines = ["| method | initial test error (%) | final test error (%) | runs | iterations |",
             "| --- | --- | --- | --- | --- |"]
    for r in tab.itertuples():
        std = f" ± {r.final_error_std:.2f}" if r.runs > 1 else ""
        init = "-" if r.initial_error is None or pd.isna(r.initial_error) else f"{r.initial_error:.2f}"
        lines.append(f"| {r.method} | {init} | {r.final_error:.2f}{std} | {r.runs} | {r.iterations} |")
    note = ("\n\nOur comparison (no source reports these numbers): equal J and iteration budget, one update per "
            "mini-batch; DMC = data-misfit controller with on_terminate=continue.\n")
    return {"methods.csv": tab.to_csv(index=False), "methods.md": "\n".join(lines) + note}


register(Figure(
    id="methods", config="methods", settings=MethodsSettings,
    title="Ensemble Kalman methods compared: EnKF, EKI, EKI(R), ETKI, with and without the data-misfit controller",
    description="our comparison (no paper numbers): EnKF, EKI, EKI(R), ETKI +/- data-misfit controller, equal J and "
                "iterations, paper CNN, Fashion-MNIST",
    variants=variants, plot=plot, varies=("optimizer",), tables=tables, datasets=("fashion_mnist",),
))
