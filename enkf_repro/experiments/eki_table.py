"""Kovachki & Stuart's table: dense networks DNN 1-4 on MNIST, J = 2000, final test accuracy.

Rows: SGD, momentum SGD, EKI, MEKI, EKI(R), MEKI(R) (ensemble methods: the mean network and the
best member); columns: DNN 1-4 (dense.py). Kovachki & Stuart report SGD 0.9199 / 0.9735 / 0.9798 /
0.9818, EKI (mean) 0.9092 / 0.9398 / 0.9424 / 0.9404 and EKI(R) (mean) 0.9252 / 0.9721 /
0.9738 / 0.9741. The plot is a table image; ``eki_table.csv`` (tidy) and ``eki_table.md`` are
written next to it (``tables``).

Baselines (our choice; the paper gives no settings): SGD lr 0.1 without momentum, momentum SGD
lr 0.01 with momentum 0.9 (the same effective step lr / (1 - momentum) = 0.1), cross-entropy,
batch 64, shuffled. MEKI variants use h0 = 0.5: Nesterov momentum is stable for h ||D|| <= 1 on
quadratics, and h0 = 2 drifted with mini-batch noise in a smoke-scale check. The ensemble
methods' members draw their biases from the prior (``init.bias_sigma`` null: the layer's Glorot
std), so EKI trains the biases as SGD does (SGD starts from zero biases). (R) uses the default
``random_schedule=decay``; ``optimizer.random_schedule=public`` is the public implementation's.

Claims (checked on any run): EKI(R) above EKI and SGD above EKI, mean networks, on each DNN, as
in Kovachki & Stuart's table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import matplotlib.pyplot as plt
import pandas as pd

from ..config.schema import FigureSettings
from .base import Claim, Figure, PaperNumber, Variant, register
from .common import known
from .draw import caption

MODELS = ("dnn1", "dnn2", "dnn3", "dnn4")
MEKI = {"optimizer.momentum": "nesterov", "optimizer.h0": 0.5}
# method label -> (display name, optimizer, its values, ensemble method?)
METHODS: dict[str, tuple[str, str, dict, bool]] = {
    "sgd": ("SGD", "sgd", {"optimizer.lr": 0.1, "optimizer.momentum": 0.0}, False),
    "msgd": ("momentum SGD", "sgd", {"optimizer.lr": 0.01, "optimizer.momentum": 0.9}, False),
    "eki": ("EKI", "eki", {}, True),
    "meki": ("MEKI", "eki", MEKI, True),
    "eki_r": ("EKI(R)", "eki", {"optimizer.randomize": True}, True),
    "meki_r": ("MEKI(R)", "eki", {**MEKI, "optimizer.randomize": True}, True),
}


@dataclass
class EKITableSettings(FigureSettings):
    ensemble_size: Optional[int] = None                  # J of the ensemble methods (null: EKI's)
    optimizers: List[str] = field(default_factory=lambda: list(METHODS))
# values Kovachki & Stuart report (accuracy), by (method, network) and model
REPORTED: dict[tuple[str, str], tuple[float, float, float, float]] = {
    ("sgd", "mean"): (0.9199, 0.9735, 0.9798, 0.9818),
    ("eki", "mean"): (0.9092, 0.9398, 0.9424, 0.9404),
    ("eki_r", "mean"): (0.9252, 0.9721, 0.9738, 0.9741),
}


def method_variant(series: str, method: str, J: int | None, **groups: str) -> Variant:
    """The variant of ``method`` (a METHODS label) with J members (ensemble methods), in ``groups``."""
    _, optimizer, values, ensemble = METHODS[method]
    size = {"optimizer.ensemble_size": J} if ensemble and J else {}
    return Variant(series, {**values, **size}, groups={**groups, "optimizer": optimizer})


def variants(cfg, s: EKITableSettings) -> list[Variant]:
    return [method_variant(f"{m}-{meth}", meth, s.ensemble_size, model=m)
            for m in MODELS for meth in known(s.optimizers, METHODS, cfg)]


def final_accuracy(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, network): the accuracy (fraction) at the run's last evaluation."""
    rows = df[df["metric"].isin(["test_error", "test_error_best"])]
    last = rows.sort_values("iteration").groupby(["run_dir", "metric"]).tail(1).copy()
    last["network"] = last["metric"].map({"test_error": "mean", "test_error_best": "best"})
    last["accuracy"] = 1.0 - last["value"] / 100.0
    last["method"] = last["series"].astype(str).str.split("-", n=1).str[1]
    return last


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Tidy table: method, network, model, accuracy mean / std over seeds, runs, reported value."""
    acc = final_accuracy(df)
    g = acc.groupby(["method", "network", "model"])["accuracy"]
    out = pd.DataFrame({"accuracy": g.mean(), "accuracy_std": g.std(ddof=0), "runs": g.count()}).reset_index()
    out["reported"] = [REPORTED.get((m, n), (None,) * 4)[MODELS.index(k)] if k in MODELS else None
                       for m, n, k in zip(out["method"], out["network"], out["model"])]
    out["_m"] = out["method"].map({m: i for i, m in enumerate(METHODS)})
    out["_n"] = out["network"].map({"mean": 0, "best": 1})
    return out.sort_values(["_m", "_n", "model"]).drop(columns=["_m", "_n"]).reset_index(drop=True)


def cells(tab: pd.DataFrame) -> tuple[list[str], list[str], list[list[str]]]:
    """(row labels, column labels, cell texts) of the rendered table."""
    models = [m for m in MODELS if m in set(tab["model"])]
    row_labels, text = [], []
    for (method, network), t in tab.groupby(["method", "network"], sort=False):
        name = METHODS.get(method, (method,))[0]
        row_labels.append(f"{name} ({network})" if METHODS.get(method, ("", "", {}, True))[3] else name)
        by = t.set_index("model")
        row = []
        for m in models:
            if m not in by.index:
                row.append("-")
                continue
            r = by.loc[m]
            s = f"{r['accuracy']:.4f}" + (f" ± {r['accuracy_std']:.4f}" if r["runs"] > 1 else "")
            if pd.notna(r["reported"]):
                s += f" ({r['reported']:.4f})"
            row.append(s)
        text.append(row)
    return row_labels, [m.upper().replace("DNN", "DNN ") for m in models], text


def markdown(tab: pd.DataFrame) -> str:
    rows, cols, text = cells(tab)
    lines = ["| method | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    lines += ["| " + r + " | " + " | ".join(t) + " |" for r, t in zip(rows, text)]
    return "\n".join(lines) + ("\n\nFinal test accuracy; in parentheses the value Kovachki & Stuart report "
                               "(J = 2000, MNIST).\n")


def tables(df: pd.DataFrame, cfg) -> dict[str, str]:
    """``eki_table.csv`` (tidy) and ``eki_table.md``, written beside the table image."""
    tab = summary(df)
    return {"eki_table.csv": tab.to_csv(index=False), "eki_table.md": markdown(tab)}


def plot(df: pd.DataFrame, cfg):
    tab = summary(df)
    rows, cols, text = cells(tab)
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(rows) + 0.9))
    ax.axis("off")
    t = ax.table(cellText=text, rowLabels=rows, colLabels=cols, loc="center", cellLoc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    t.scale(1.0, 1.25)
    Js = sorted({int(j) for j in df["ensemble_size"].dropna() if str(j) != ""})
    ax.set_title("Kovachki & Stuart's table: final MNIST test accuracy of dense networks "
                 f"(ensemble J = {', '.join(map(str, Js)) or '-'}; in parentheses: Kovachki & Stuart, J = 2000)",
                 fontsize=9)
    caption(fig, cfg, df, "mean = ensemble-mean network, best = lowest training loss member")
    return fig


def _measure(method: str, model: str):
    def f(df, cfg):
        acc = final_accuracy(df)
        acc = acc[(acc["method"] == method) & (acc["model"] == model) & (acc["network"] == "mean")]
        return float(acc["accuracy"].mean()) if not acc.empty else None

    return f


def mean_network_accuracy(df: pd.DataFrame) -> dict[tuple[str, str], tuple[float, int]]:
    """(method, model) -> (final accuracy of the ensemble-mean network, or of the trained network
    for SGD, as the mean over runs; runs)."""
    acc = final_accuracy(df)
    acc = acc[acc["network"] == "mean"]
    g = acc.groupby(["method", "model"])["accuracy"]
    means, counts = g.mean(), g.count()
    return {key: (float(means[key]), int(counts[key])) for key in means.index}


def above_on_each_dnn(high: str, low: str):
    """Claim check: ``high`` ends above ``low`` (mean networks) on every DNN both were run on."""
    def check(df, cfg):
        acc = mean_network_accuracy(df)
        models = [m for m in MODELS if (high, m) in acc and (low, m) in acc]
        if not models:
            return f"series {high} or {low} missing on every DNN", None
        hi_name, lo_name = METHODS[high][0], METHODS[low][0]
        parts = []
        for m in models:
            i = MODELS.index(m)
            rep_h, rep_l = REPORTED.get((high, "mean")), REPORTED.get((low, "mean"))
            paper = f" [K&S {rep_h[i]:.4f} vs {rep_l[i]:.4f}]" if rep_h and rep_l else ""
            parts.append(f"DNN {i + 1}: {hi_name} {acc[(high, m)][0]:.4f} vs {lo_name} {acc[(low, m)][0]:.4f}{paper}")
        runs = sum(acc[(h, m)][1] for m in models for h in (high, low))
        where = (f" (final test accuracy of the mean network: metric test_error at each run's last evaluation, "
                 f"series dnnK-{high} / dnnK-{low}, {runs} runs)")
        return "; ".join(parts) + where, all(acc[(high, m)][0] > acc[(low, m)][0] for m in models)

    return check


UNIT = "the end of each run (Kovachki & Stuart do not give their number of epochs; 10 here)"

register(Figure(
    id="eki_table", config="eki_table", settings=EKITableSettings,
    title="EKI family vs SGD on dense networks DNN 1-4 (Kovachki & Stuart's table)",
    description="DNN 1-4 x {SGD, momentum SGD, EKI, MEKI, EKI(R), MEKI(R)}, J=2000, MNIST: final accuracy table",
    variants=variants, plot=plot, varies=("model", "optimizer"), tables=tables,
    paper_numbers=tuple(
        PaperNumber(f"test accuracy, {METHODS[meth][0]}{' (mean)' if meth != 'sgd' else ''}, DNN {i + 1}",
                    vals[i], _measure(meth, MODELS[i]))
        for (meth, _), vals in REPORTED.items() for i in range(4)),
    claims=(
        Claim("EKI(R) ends above EKI (mean networks) on each DNN", above_on_each_dnn("eki_r", "eki"),
              sentence="EKI(R) 0.9252 / 0.9721 / 0.9738 / 0.9741 against EKI 0.9092 / 0.9398 / 0.9424 / 0.9404 on "
              "DNN 1-4 (Kovachki & Stuart's table)", unit=UNIT, threshold="higher test accuracy on every DNN"),
        Claim("SGD ends above EKI (mean network) on each DNN", above_on_each_dnn("sgd", "eki"),
              sentence="SGD 0.9199 / 0.9735 / 0.9798 / 0.9818 against EKI 0.9092 / 0.9398 / 0.9424 / 0.9404 on "
              "DNN 1-4 (Kovachki & Stuart's table)", unit=UNIT, threshold="higher test accuracy on every DNN"),
    ),
))
