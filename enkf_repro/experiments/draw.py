"""Drawing primitives shared by the figures: one style, one palette, mean +/- std bands over
seeds, a provenance caption, PNG + PDF output."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ..config.schema import name_of  # noqa: E402

STYLE = Path(__file__).resolve().parents[1] / "style" / "enkf_repro.mplstyle"
# x-axis of the multi-epoch figures: passes over the run's training batches (epochs when, as at
# paper scale, the run uses the whole training set; the CSV's ``epoch`` is the fraction seen)
PASS_LABEL = "epoch (pass over the run's training batches)"
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


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
