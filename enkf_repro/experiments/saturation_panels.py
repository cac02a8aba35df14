"""The drawing panels of the saturation study (Figures 3, 4, 6 and 7), shared by their modules:
per-layer activation curves, gradient histograms (the published statistic, grad.mean(0), or all
entries), per-iteration gradient curves of the iteration epochs and distributions of the mean
activation per epoch, and the two layouts (one epoch; many epochs). The paper's numbers are
drawn from what each figure module passes in (:class:`LayerMarks`); nothing here knows a figure.
The rows are those of optim/instrument.py, read by instrument_rows.py."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm

from ..config.schema import FigureSettings
from ..optim.instrument import PERCENTILES
from .common import curve, value_at
from .draw import COLORS, PASS_LABEL, caption, metric
from .instrument_rows import epoch_index, iteration_epoch_rows, layer_rows, seed_mean

ACT_TITLES = {1: "layer 1: conv1 + activation (before pooling)", 2: "layer 2: conv2 + activation",
              3: "layer 3: softmax output (mean 1/10 by construction)"}
GRAD_TITLES = {1: "conv1 weights (layer 1)", 2: "conv2 weights (layer 2)", 3: "fc weights (layer 3)"}
LABELS = {"sgd": "SGD", "adam": "Adam"}


class GradientView(str, Enum):
    iteration = "iteration"  # per-iteration curves of the iteration epochs, grad.mean(0) histograms
    epoch = "epoch"          # pooled per epoch, histograms of all weight-gradient entries


@dataclass
class ManyEpochsSettings(FigureSettings):
    """Figures 4 and 7: how the gradients are drawn. ``iteration``: the paper's panels, gradient
    mean +/- std at every iteration of ``instrument.iteration_epochs`` and the histograms of the
    gradient averaged over output units (the pooled view when a run has no per-iteration rows);
    ``epoch``: mean +/- std pooled per epoch and histograms of all weight-gradient entries."""

    gradient_view: GradientView = GradientView.iteration


@dataclass(frozen=True)
class LayerMarks:
    """The paper's numbers drawn on one layer's activation panel: ``level`` (mean, std) as a dashed
    line at the mean and dotted ones at +/- std, labelled ``level_label``; ``path`` (first, last)
    as squares at the run's first and last iteration."""

    level: tuple[float, float] | None = None
    level_label: str = "paper (MNIST)"
    path: tuple[float, float] | None = None


def final_error_text(df: pd.DataFrame, by: str = "optimizer") -> str:
    err = curve(df, "test_error")
    parts = []
    for key, d in err.groupby(by):
        v = value_at(d, "test_error", "last")
        if v is not None:
            parts.append(f"{LABELS.get(str(key), key)} {v:.1f} %")
    return "final test error " + ", ".join(parts) if parts else ""


def activation_panel(ax, df: pd.DataFrame, layer: int, color: str) -> None:
    """Mean over the layer's activations against iteration, shaded +/- their std."""
    mean = seed_mean(layer_rows(df, "act_mean", layer))
    std = seed_mean(layer_rows(df, "act_std", layer)).reindex(mean.index)
    if mean.empty:
        return
    ax.plot(mean.index, mean.values, color=color, label="mean")
    ax.fill_between(mean.index, mean - std, mean + std, color=color, alpha=0.25, linewidth=0, label="\u00b1 std")
    ax.set_title(ACT_TITLES.get(layer, f"layer {layer}"), fontsize=9)
    ax.set_xlabel("iteration (SGD/Adam step)")
    ax.set_ylabel("activation")


def bin_ticks(ax, edges: list[float], decades: tuple[float, ...] = (-8.0, -4.0, 0.0)) -> None:
    """x ticks of a histogram drawn over bin positions 0, 1, ... (lower edges ``edges``, -inf
    first): +/-10^d at the bins' left boundaries for d in ``decades``, and 0 at the middle bin."""
    ticks, labels = [], []
    for k, e in enumerate(edges):
        if math.isfinite(e) and e != 0 and round(math.log10(abs(e)), 6) in decades:
            ticks.append(k - 0.5)  # the bin's left boundary
            labels.append(("\u2212" if e < 0 else "") + f"1e{int(round(math.log10(abs(e))))}")
        elif math.isclose(e, -1e-10, rel_tol=1e-6):  # the middle bin [-1e-10, 1e-10): zero
            ticks.append(k)
            labels.append("0")
    ax.set_xticks(ticks, labels, fontsize=7, rotation=60)


def histogram_panel(ax, df: pd.DataFrame, layer: int, y: str = "iteration", name: str = "grad_hist"):
    """Gradient histograms (``name``: ``grad_hist``, every weight-gradient entry, or
    ``grad_outmean_hist``, the gradient averaged over the layer's output units) as a heat map: one
    row per snapshot, one column per fixed bin, colour = fraction of the values (log scale; empty
    bins blank)."""
    d = layer_rows(df, name, layer)
    if d.empty:
        ax.set_visible(False)
        return None
    d = d.assign(bin=pd.to_numeric(d["bin"]))
    counts = d.pivot_table(index=y, columns="bin", values="value", aggfunc="sum").sort_index()
    counts = counts.reindex(sorted(counts.columns), axis=1).fillna(0)
    frac = counts.div(counts.sum(axis=1), axis=0).to_numpy()
    total = float(counts.sum(axis=1).max())
    img = ax.imshow(np.ma.masked_equal(frac, 0), aspect="auto", origin="lower", interpolation="nearest",
                    cmap="viridis", norm=LogNorm(vmin=max(1e-5, 0.5 / max(total, 1)), vmax=1))
    bin_ticks(ax, list(counts.columns))
    rows = list(counts.index)
    first_it = d.groupby(y)["iteration"].min()
    step = max(1, len(rows) // 6)
    labels = [f"{r:g}" if y == "iteration" or float(r).is_integer() else f"it {first_it[r]}" for r in rows]
    ax.set_yticks(range(0, len(rows), step), labels[::step], fontsize=7)
    ax.set_ylabel(y)
    what = "weight gradient" if name == "grad_hist" else "weight gradient averaged over output units"
    ax.set_xlabel(f"{what} (bins: 4 per decade)")
    ax.set_title(GRAD_TITLES.get(layer, f"layer {layer}"), fontsize=9)
    ax.grid(False)
    return img


def epoch_colors(epochs) -> dict[int, tuple]:
    """One colour per (0-based) epoch, dark (early) to light (late)."""
    epochs = sorted(epochs)
    cmap = plt.get_cmap("viridis")
    return {e: cmap(0.85 * i / max(1, len(epochs) - 1)) for i, e in enumerate(epochs)}


def gradient_iteration_panel(ax, df: pd.DataFrame, layer: int) -> bool:
    """Weight-gradient mean against the iteration inside the epoch, one line per iteration epoch
    (the ``grad_*_iter`` rows), shaded +/- the std over the layer's gradient entries."""
    mean = iteration_epoch_rows(df, "grad_mean", layer)
    std = iteration_epoch_rows(df, "grad_std", layer)
    if mean.empty:
        return False
    colors = epoch_colors(mean["ep"].unique())
    for ep, d in mean.groupby("ep"):
        m = d.groupby("within")["value"].mean().sort_index()
        sd = std[std["ep"] == ep].groupby("within")["value"].mean().reindex(m.index)
        ax.fill_between(m.index, m - sd, m + sd, color=colors[ep], alpha=0.15, linewidth=0)
        ax.plot(m.index, m.values, color=colors[ep], linewidth=1, label=f"epoch {ep}")
    ax.axhline(0, color="0.4", linewidth=0.6)
    ax.set_title(GRAD_TITLES.get(layer, f"layer {layer}"), fontsize=9)
    ax.set_xlabel("iteration within the epoch")
    ax.set_ylabel("weight gradient (mean \u00b1 std)")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    return True


def outmean_hist_panel(ax, df: pd.DataFrame, layer: int, most: int = 6) -> bool:
    """Histograms of the layer's gradient averaged over its output units (``grad_outmean_hist``,
    the published statistic), one step line per iteration epoch (at most ``most``, evenly spaced),
    as the fraction of the values per bin; the x axis spans the non-empty bins."""
    d = layer_rows(df, "grad_outmean_hist", layer)
    if d.empty:
        ax.set_visible(False)
        return False
    d = d.assign(bin=pd.to_numeric(d["bin"]), ep=epoch_index(d))
    counts = d.pivot_table(index="ep", columns="bin", values="value", aggfunc="sum").sort_index().fillna(0)
    counts = counts.reindex(sorted(counts.columns), axis=1)
    rows = list(counts.index)
    if len(rows) > most:
        rows = [rows[round(i * (len(rows) - 1) / (most - 1))] for i in range(most)]
    frac = counts.loc[rows].div(counts.loc[rows].sum(axis=1), axis=0)
    used = np.flatnonzero(frac.to_numpy().sum(0) > 0)
    lo, hi = max(0, used.min() - 2), min(frac.shape[1] - 1, used.max() + 2)
    colors = epoch_colors(rows)
    x = np.arange(frac.shape[1])
    for ep in rows:
        ax.step(x[lo:hi + 1], frac.loc[ep].to_numpy()[lo:hi + 1], where="mid", color=colors[ep],
                linewidth=1.1, label=f"epoch {ep}")
    shown = [abs(e) for e in list(frac.columns)[lo:hi + 1] if math.isfinite(e) and e != 0]
    exps = sorted({round(math.log10(e)) for e in shown if abs(math.log10(e) - round(math.log10(e))) < 1e-6} - {-10})
    step = max(1, math.ceil(len(exps) / 4))  # at most about 4 labelled decades per sign
    bin_ticks(ax, list(frac.columns), decades=tuple(float(d) for d in exps if d % step == 0))
    ax.set_xlim(lo - 0.5, hi + 0.5)
    ax.set_ylim(0, None)
    ax.set_title(f"{GRAD_TITLES.get(layer, f'layer {layer}')}: gradient averaged over output units", fontsize=9)
    ax.set_xlabel("grad.mean(0) (bins: 4 per decade)")
    ax.set_ylabel("fraction of the values")
    return True


def gradient_epoch_panel(ax, df: pd.DataFrame, layer: int, color: str) -> None:
    mean = seed_mean(layer_rows(df, "grad_mean", layer), "pass")
    std = seed_mean(layer_rows(df, "grad_std", layer), "pass").reindex(mean.index)
    if mean.empty:
        return
    ax.plot(mean.index, mean.values, color=color, marker="o" if len(mean) <= 60 else None, label="mean")
    ax.fill_between(mean.index, mean - std, mean + std, color=color, alpha=0.25, linewidth=0, label="\u00b1 std")
    ax.axhline(0, color="0.4", linewidth=0.6)
    ax.set_title(GRAD_TITLES.get(layer, f"layer {layer}"), fontsize=9)
    ax.set_xlabel(PASS_LABEL)
    ax.set_ylabel("weight gradient")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))


def act_percentiles(df: pd.DataFrame, layer: int) -> pd.DataFrame:
    """Percentiles (columns) per epoch (index) of the per-iteration mean activation: the logged
    ``act_mean_pct`` rows, averaged over seeds, or computed from per-iteration ``act_mean`` rows."""
    d = layer_rows(df, "act_mean_pct", layer)
    if not d.empty:
        d = d.assign(bin=pd.to_numeric(d["bin"]))
        return d.pivot_table(index="pass", columns="bin", values="value", aggfunc="mean").sort_index()
    d = layer_rows(df, "act_mean", layer)
    if d.empty:
        return pd.DataFrame()
    ep = np.ceil(d["pass"].to_numpy() - 1e-9)
    g = d.assign(ep=ep).groupby("ep")["value"]
    return pd.DataFrame({p: g.quantile(p / 100) for p in PERCENTILES})


def distribution_panel(ax, df: pd.DataFrame, layer: int, color: str, paper=None) -> None:
    """Nested percentile bands (min-max, 10-90, 25-75) and the median of the mean activation;
    ``paper``: ((value, epoch), (value, epoch)) marked as squares at those epochs (1-based: the
    epoch's end on the x axis)."""
    p = act_percentiles(df, layer)
    if p.empty:
        return
    if paper is not None:
        ax.plot([e for _, e in paper], [v for v, _ in paper], "s", color="0.2", zorder=5,
                label=f"paper (MNIST) {paper[0][0]:g} \u2192 {paper[1][0]:g}")
    x = p.index.to_numpy()
    for (lo, hi), alpha in (((0, 100), 0.12), ((10, 90), 0.22), ((25, 75), 0.35)):
        if lo in p and hi in p:
            ax.fill_between(x, p[lo], p[hi], color=color, alpha=alpha, linewidth=0, label=f"{lo}-{hi} %")
    if 50 in p:
        ax.plot(x, p[50], color=color, label="median")
    lo, hi = float(np.nanmin(p.to_numpy())), float(np.nanmax(p.to_numpy()))
    if hi - lo < 1e-4:  # constant up to rounding (the softmax layer: mean 1/10 by construction)
        ax.set_ylim((lo + hi) / 2 - 0.05, (lo + hi) / 2 + 0.05)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_title(ACT_TITLES.get(layer, f"layer {layer}"), fontsize=9)
    ax.set_xlabel(PASS_LABEL)
    ax.set_ylabel("mean activation per iteration")


# -- figures ---------------------------------------------------------------------------------
def opt_label(df: pd.DataFrame) -> str:
    opts = sorted(set(df["optimizer"].astype(str)))
    parts = []
    for o in opts:
        lr = ", ".join(f"{v:g}" for v in sorted(pd.to_numeric(df[df["optimizer"] == o]["lr"]).unique()))
        parts.append(f"{LABELS.get(o, o)} (lr {lr})")
    return " / ".join(parts)


def sigma_text(df: pd.DataFrame) -> str:
    return ", ".join(f"{s:g}" for s in sorted(pd.to_numeric(df["init_sigma"]).unique()))


def plot_one_epoch(df: pd.DataFrame, cfg, title: str, marks: dict[int, LayerMarks]):
    """Figures 3 and 6: per-layer activation mean +/- std against iteration (top) and the
    histograms of the gradient averaged over output units at the snapshot iterations (bottom;
    every gradient entry for runs logged before that statistic existed)."""
    fig, axes = plt.subplots(2, 3, figsize=(11, 6.4))
    it = df["iteration"]
    for l in (1, 2, 3):
        ax = axes[0, l - 1]
        activation_panel(ax, df, l, COLORS[l - 1])
        m = marks.get(l, LayerMarks())
        if m.path is not None:
            a, b = m.path
            ax.plot([it.min(), it.max()], [a, b], "s", color="0.2", label=f"paper (MNIST) {a:g} \u2192 {b:g}")
        if m.level is not None:
            mean, sd = m.level
            ax.axhline(mean, color="0.2", linestyle="--", linewidth=1, label=f"{m.level_label} {mean:g} \u00b1 {sd:g}")
            for v in (mean - sd, mean + sd):
                ax.axhline(v, color="0.2", linestyle=":", linewidth=0.8)
        ax.legend(fontsize=7, loc="best")
    name = "grad_outmean_hist" if not metric(df, "grad_outmean_hist").empty else "grad_hist"
    img = None
    for l in (1, 2, 3):
        img = histogram_panel(axes[1, l - 1], df, l, name=name) or img
    if img is not None:
        fig.colorbar(img, ax=axes[1, :].tolist(), label="fraction of the values", shrink=0.9)
    n = df["run_dir"].nunique()
    fig.suptitle(f"{title}: {opt_label(df)}, weights ~ N(0, {sigma_text(df)}\u00b2): activations per layer "
                 f"(top) and weight-gradient histograms (bottom)", fontsize=11)
    caption(fig, cfg, df, f"activation mean \u00b1 std over each layer's units"
            f"{', averaged over ' + str(n) + ' seeds' if n > 1 else ''}; {final_error_text(df)}")
    return fig


def plot_many_epochs(df: pd.DataFrame, cfg, title: str, view: str = "iteration", layer1=None):
    """Figures 4 and 7: the paper's panels (per-iteration gradients of the iteration epochs,
    histograms of the gradient averaged over output units) or, with ``view="epoch"`` or without
    per-iteration rows, the per-epoch view. ``layer1``: the paper's first and later layer-1 mean
    activation ((value, epoch), (value, epoch))."""
    if view == "iteration" and not metric(df, "grad_mean_iter").empty:
        return _plot_iteration_epochs(df, cfg, title, layer1)
    return _plot_pooled_epochs(df, cfg, title, layer1)


def _plot_iteration_epochs(df: pd.DataFrame, cfg, title: str, layer1):
    fig, axes = plt.subplots(3, 3, figsize=(11, 9.6))
    for l in (1, 2, 3):
        gradient_iteration_panel(axes[0, l - 1], df, l)
        outmean_hist_panel(axes[1, l - 1], df, l)
        distribution_panel(axes[2, l - 1], df, l, COLORS[l - 1], layer1 if l == 1 else None)
    axes[0, 0].legend(fontsize=7)
    if axes[1, 0].get_visible():
        axes[1, 0].legend(fontsize=7)
    axes[2, 0].legend(fontsize=7)
    epochs = df["pass"].max()
    fig.suptitle(f"{title}: {opt_label(df)}, weights ~ N(0, {sigma_text(df)}\u00b2), {epochs:g} epochs: "
                 f"gradients per iteration (top), gradients averaged over output units (middle), mean activations "
                 f"(bottom)", fontsize=11)
    caption(fig, cfg, df, "gradient mean \u00b1 std over each layer's weights at every iteration of the epochs "
            "shown (0-based); histograms of grad.mean(0) over those epochs' iterations; percentiles of the "
            f"per-iteration mean activation; {final_error_text(df)}")
    return fig


def _plot_pooled_epochs(df: pd.DataFrame, cfg, title: str, layer1):
    fig, axes = plt.subplots(3, 3, figsize=(11, 9.2))
    for l in (1, 2, 3):
        gradient_epoch_panel(axes[0, l - 1], df, l, COLORS[l - 1])
        distribution_panel(axes[1, l - 1], df, l, COLORS[l - 1], layer1 if l == 1 else None)
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    img = None
    for l in (1, 2, 3):
        img = histogram_panel(axes[2, l - 1], df, l, y="pass") or img
    if img is not None:
        fig.colorbar(img, ax=axes[2, :].tolist(), label="fraction of weights", shrink=0.9)
    epochs = df["pass"].max()
    fig.suptitle(f"{title}: {opt_label(df)}, weights ~ N(0, {sigma_text(df)}\u00b2), {epochs:g} epochs: "
                 f"gradients (top), mean activations (middle), gradient histograms (bottom)", fontsize=11)
    caption(fig, cfg, df, "per epoch: gradient mean \u00b1 std pooled over the epoch's iterations, "
            f"percentiles of the per-iteration mean activation; {final_error_text(df)}")
    return fig
