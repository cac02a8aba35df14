"""The drawing primitives of every plot the package makes (the figures and ``compare``): one
style, one palette, mean +/- std bands over seeds, a provenance caption, groups of runs side by
side with a heat map of their final values, PNG + PDF output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ..config.schema import name_of  # noqa: E402

STYLE = Path(__file__).resolve().parents[1] / "style" / "enkf_repro.mplstyle"
# x-axis of the multi-epoch figures: passes over the run's training batches (epochs when, as at
# paper scale, the run uses the whole training set; the CSV's ``epoch`` is the fraction seen)
PASS_LABEL = "epoch (pass over the run's training batches)"
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P"]


def use_style() -> None:
    plt.style.use(str(STYLE))


def metric(df: pd.DataFrame, name: str) -> pd.DataFrame:
    return df[df["metric"] == name]


def mean_std(df: pd.DataFrame, x: str = "iteration") -> pd.DataFrame:
    """Mean and std over seeds of ``value`` per ``x`` (std 0 with one seed)."""
    g = df.groupby(x)["value"]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0), "n": g.count()})
    return out.reset_index().sort_values(x)


def band(ax, df: pd.DataFrame, label: str, color: str, x: str = "iteration", marker: str | None = "o",
         xscale: float = 1.0, **kw) -> None:
    """Line of the mean over seeds with a +/- std band, over thin lines of the single seeds (a
    band alone hides a seed that went its own way)."""
    s = mean_std(df, x)
    if s.empty:
        return
    xs = s[x].to_numpy() * xscale
    if "run_dir" in df and df["run_dir"].nunique() > 1:
        for _, run in df.groupby("run_dir"):
            r = run.groupby(x)["value"].mean().sort_index()
            ax.plot(r.index.to_numpy() * xscale, r.to_numpy(), color=color, linewidth=0.6, alpha=0.45,
                    linestyle=kw.get("linestyle", "-"))
    ax.plot(xs, s["mean"], label=label, color=color, marker=marker, **kw)
    if (s["n"] > 1).any():
        ax.fill_between(xs, s["mean"] - s["std"], s["mean"] + s["std"], color=color, alpha=0.2, linewidth=0)


def differences_from_paper(cfg: DictConfig, datasets) -> list[str]:
    """What in these runs is not the paper's setting: the scale, the data (a stand-in dataset,
    or a split of the test files)."""
    from omegaconf import OmegaConf

    from .base import FIGURES

    def get(key, default=None):
        return OmegaConf.select(cfg, key, default=default)

    notes = []
    if name_of(get("scale.name", "")) == "smoke":
        notes.append("smoke scale: smaller J, fewer batches and seeds than the paper")
    fig = FIGURES.get(str(get("figure.id", "none")))
    paper = fig.datasets if fig is not None else ("mnist",)
    others = sorted(set(datasets) - set(paper))
    if others:
        notes.append(f"{', '.join(others)} instead of {' and '.join(paper)}")
    if get("dataset.test_only", False):
        n = get("dataset.test_only_train_size", 8000)
        notes.append(f"trained on {n} of the 10,000 test images, tested on the rest (the paper: 60,000 / 10,000)")
    return notes


def caption(fig, cfg: DictConfig, df: pd.DataFrame, extra: str = "") -> None:
    """Small provenance line under a figure: scale, dataset, runs, finished or not."""
    runs = df["run_dir"].nunique() if not df.empty else 0
    done = df.groupby("run_dir")["finished"].first().sum() if not df.empty else 0
    ds = ", ".join(sorted(df["dataset"].astype(str).unique())) if not df.empty else "-"
    text = f"scale={name_of(cfg.scale.name)}, dataset={ds}, {runs} runs ({done} finished)"
    if extra:
        text += "; " + extra
    diffs = differences_from_paper(cfg, df["dataset"].astype(str).unique() if not df.empty else ())
    if diffs:
        text += "\nnot the paper's setting: " + "; ".join(diffs)
    fig.text(0.01, -0.02, text, fontsize=7, color="0.35", ha="left", va="top")


def metric_label(metric: str) -> str:
    """Axis label of a metric: ``test_error`` -> ``test error (%)``."""
    return metric.replace("_", " ") + (" (%)" if metric.startswith("test_error") else "")


def group_style(i: int, group: tuple, values: Sequence[Sequence]) -> tuple[str, str, str]:
    """Colour, line style and marker of the ``i``-th group of runs, ``group`` its values of the
    grouping keys and ``values`` every value of each key: with two keys, the colour follows the
    first key's value and the line style and marker the second's (while it has few values)."""
    if len(group) == 2 and len(values[1]) <= len(LINESTYLES):
        a, b = list(values[0]).index(group[0]), list(values[1]).index(group[1])
        return COLORS[a % len(COLORS)], LINESTYLES[b], MARKERS[b]
    return COLORS[i % len(COLORS)], LINESTYLES[(i // len(COLORS)) % len(LINESTYLES)], "o"


def heatmap(ax, mean: np.ndarray, std: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
            ylabel: str, xlabel: str, label: str) -> None:
    """Mean (and std) of a value per pair of settings, ``mean[i, j]`` for row ``i`` and column
    ``j`` (NaN: no runs there), each cell written in, the colour bar labelled ``final <label>``."""
    im = ax.imshow(np.ma.masked_invalid(mean), cmap="viridis", aspect="auto")
    ax.figure.colorbar(im, ax=ax, label=f"final {label}")
    lo, hi = np.nanmin(mean), np.nanmax(mean)
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            if np.isnan(mean[i, j]):
                continue
            light = hi > lo and (mean[i, j] - lo) / (hi - lo) > 0.6
            ax.text(j, i, f"{mean[i, j]:.3g}\n+/- {std[i, j]:.2g}", ha="center", va="center", fontsize=8,
                    color="black" if light else "white")
    ax.set_xticks(range(len(col_labels)), list(col_labels))
    ax.set_yticks(range(len(row_labels)), list(row_labels))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(False)
    ax.set_title("final value: mean +/- std over the runs")


def groups_figure(rows: pd.DataFrame, groups: Mapping[tuple, Sequence[str]], labels: Mapping[tuple, str],
                  values: Sequence[Sequence], value_labels: Sequence[Sequence[str]], keys: Sequence[str],
                  metric: str, final: tuple[np.ndarray, np.ndarray] | None = None):
    """A metric of groups of runs against iteration: per group (``groups``: its values of the
    grouping ``keys`` -> its runs' folders) the mean +/- std band over its runs' ``rows``,
    labelled ``labels[group]`` and styled by :func:`group_style` (``values``: each key's values in
    order); with ``final`` (mean, std over the first key's values x the second's), a heat map of
    the final values beside it, ticked with ``value_labels``."""
    use_style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2)) if final is not None else plt.subplots(figsize=(6.5, 4.2))
    ax = axes[0] if final is not None else axes
    ylabel = metric_label(metric)
    for i, (g, dirs) in enumerate(groups.items()):
        color, linestyle, marker = group_style(i, g, values)
        band(ax, rows[rows["run_dir"].isin(dirs)], labels[g], color, marker=marker, linestyle=linestyle)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{metric} by {', '.join(keys)}")
    if len(groups) > 8:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    else:
        ax.legend()
    if final is not None:
        heatmap(axes[1], final[0], final[1], value_labels[0], value_labels[1], keys[0], keys[1], ylabel)
    return fig


def save(fig, stem: Path) -> list[Path]:
    """``stem``.png and .pdf, each written to a temporary name and moved into place (an
    interrupted save leaves the previous file, never a truncated one)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    try:
        for p in paths:
            tmp = p.with_name(p.name + ".tmp")
            fig.savefig(tmp, format=p.suffix[1:])
            os.replace(tmp, p)
    finally:
        plt.close(fig)
    return paths
