"""Figures 3-7: the saturation study of the backprop baselines, SGD at sigma = 1 and Adam at
sigma = 3 (Figure 5 compares both optimizers at both scales).

* Figure 3 (SGD, sigma = 1) and 6 (Adam, sigma = 3), one epoch: per-layer activation mean +/- std
  (the spread of the layer's activations, not over seeds) against iteration, and the
  weight-gradient histograms every 200 iterations. Paper: SGD saturates by ~200 iterations,
  layer means / stds 0.4597 / 0.2976, 0.3178 / 0.4624, 0.1 / 0.2908; Adam's layer-1 mean goes
  0.49 -> 0.53 (0.5124 / 0.2860 over the epoch), layer 2 0.47 -> 0.5 (0.4957 / 0.4965).
* Figure 4 (SGD, sigma = 1) and 7 (Adam, sigma = 3), 50 epochs, as the paper draws them: per
  layer the weight-gradient mean +/- std at every iteration of epochs 0, 10, 20, 30, 40 (one
  line per epoch), the histograms of the per-unit mean gradient in those epochs, and the
  distribution (percentiles over the epoch's iterations) of the mean activation per epoch.
  ``figure.<scale>.gradient_view=epoch`` (or runs without per-iteration rows) draws the
  gradients pooled per epoch and the histograms of all gradient entries instead. Paper: SGD
  still does not learn; Adam at sigma = 3 learns only after epoch 28, up to 84 %.
* Figure 5: test error once per epoch over 50 epochs, SGD and Adam at sigma = 1 and 3. Paper:
  Adam at sigma = 1 passes 95 % accuracy within 10 epochs; at sigma = 3 it learns only after
  ~28-30 epochs, up to 84 %.

The statistics come from the backprop instrumentation (optim/instrument.py's docstring
describes the rows; the ``layer`` column is the paper's layer number, the ``bin`` column a
histogram bin's lower edge or a percentile). With several seeds, per-iteration curves are
averaged over seeds and histogram counts summed. The paper's numbers and findings are read by
saturation_checks.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import List

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm

from ..config.schema import FigureSettings, name_of
from ..optim.instrument import PERCENTILES
from . import saturation_checks as sc
from .base import Claim, Figure, PaperNumber, Variant, register
from .common import curve, value_at
from .draw import COLORS, PASS_LABEL, band, caption, metric
from .saturation_checks import LABELS, LEARNED, iteration_epoch_rows, layer_rows, seed_mean

ACT_TITLES = {1: "layer 1: conv1 + activation (before pooling)", 2: "layer 2: conv2 + activation",
              3: "layer 3: softmax output (mean 1/10 by construction)"}
GRAD_TITLES = {1: "conv1 weights (layer 1)", 2: "conv2 weights (layer 2)", 3: "fc weights (layer 3)"}
# Figure 3's reported end-of-epoch layer statistics (mean, std), SGD at sigma = 1.
FIG3_PAPER = {1: (0.4597, 0.2976), 2: (0.3178, 0.4624), 3: (0.1, 0.2908)}
# Figure 6's: each layer's mean at the start and the end of the epoch and (mean, std) over it.
FIG6_PAPER = {1: ((0.49, 0.53), (0.5124, 0.2860)), 2: ((0.47, 0.5), (0.4957, 0.4965))}
# Figures 4 and 7: layer-1 mean activation, first epoch -> last (4) / epoch 40 of 50 (7).
MANY_EPOCHS_PAPER = {"4": ((0.475, "first"), (0.5, "last")), "7": ((0.49, "first"), (0.56, 40 / 50))}


# -- settings and variants --------------------------------------------------------------------
class GradientView(str, Enum):
    iteration = "iteration"  # per-iteration curves of the iteration epochs, grad.mean(0) histograms
    epoch = "epoch"          # pooled per epoch, histograms of all weight-gradient entries


@dataclass
class ManyEpochsSettings(FigureSettings):
    """Figures 4 and 7: how the gradients are drawn. ``iteration``: the paper's panels, gradient
    mean +/- std at every iteration of ``instrument.iteration_epochs`` and the histograms of the
    gradient averaged over output units (falls back to ``epoch`` when a run has no per-iteration
    rows); ``epoch``: mean +/- std pooled per epoch and histograms of all weight-gradient entries."""

    gradient_view: GradientView = GradientView.iteration


@dataclass
class Fig5Settings(FigureSettings):
    optimizers: List[str] = field(default_factory=lambda: ["sgd", "adam"])
    sigmas: List[float] = field(default_factory=lambda: [1.0, 3.0])
    # also Adam at the largest sigma from the final state of Adam at the smallest (the published
    # script's shared optimizer)
    shared_optimizer: bool = True


def single_variant(cfg, s) -> list[Variant]:
    """Figures 3, 4, 6, 7: one series, the optimizer of the figure's preset."""
    return [Variant(str(cfg.optimizer.name))]


def sigma_variants(cfg, s: Fig5Settings) -> list[Variant]:
    """Figure 5: every optimizer at every sigma; and Adam at the largest sigma once more, starting
    from the final state of the Adam run at the smallest (``-shared``: the published script built
    each optimizer once and reused it across the sigmas, so its Adam at sigma = 3 probably began
    with the sigma = 1 run's moment estimates and step count)."""
    out = [Variant(f"{opt}-sigma{sigma:g}", {"init.sigma": sigma}, groups={"optimizer": opt})
           for opt in s.optimizers for sigma in s.sigmas]
    if s.shared_optimizer and "adam" in s.optimizers and len(s.sigmas) > 1:
        lo, hi = min(s.sigmas), max(s.sigmas)
        out.append(Variant(f"adam-sigma{hi:g}-shared", {"init.sigma": hi}, groups={"optimizer": "adam"},
                           state_from=f"adam-sigma{lo:g}"))
    return out


# -- reading the instrumentation ----------------------------------------------------------
def final_error_text(df: pd.DataFrame, by: str = "optimizer") -> str:
    err = curve(df, "test_error")
    parts = []
    for key, d in err.groupby(by):
        v = value_at(d, "test_error", "last")
        if v is not None:
            parts.append(f"{LABELS.get(str(key), key)} {v:.1f} %")
    return "final test error " + ", ".join(parts) if parts else ""


# -- panels ----------------------------------------------------------------------------------
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


def histogram_panel(ax, df: pd.DataFrame, layer: int, y: str = "iteration"):
    """Gradient histograms as a heat map: one row per snapshot, one column per fixed bin, colour =
    fraction of the layer's weights (log scale; empty bins blank)."""
    d = layer_rows(df, "grad_hist", layer)
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
    ax.set_xlabel("weight gradient (bins: 4 per decade)")
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


def unit_hist_panel(ax, df: pd.DataFrame, layer: int, most: int = 6) -> bool:
    """Histograms of the layer's per-unit mean gradient (``grad_outmean_hist``), one step line
    per snapshot (at most ``most``, evenly spaced), as the fraction of the unit means per bin;
    the x axis spans the non-empty bins."""
    d = layer_rows(df, "grad_outmean_hist", layer)
    if d.empty:
        ax.set_visible(False)
        return False
    d = d.assign(bin=pd.to_numeric(d["bin"]), ep=sc.epoch_index(d))
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
    ax.set_title(f"{GRAD_TITLES.get(layer, f'layer {layer}')}: per-unit mean gradient", fontsize=9)
    ax.set_xlabel("mean gradient of a unit (bins: 4 per decade)")
    ax.set_ylabel("fraction of unit means")
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
    ``paper``: ((value, "first"), (value, "last" or fraction of the run)) marked as squares."""
    p = act_percentiles(df, layer)
    if p.empty:
        return
    if paper is not None:
        total = float(p.index.max())
        xs = [float(p.index.min()) if w == "first" else total if w == "last" else round(w * total)
              for _, w in paper]
        ax.plot(xs, [v for v, _ in paper], "s", color="0.2", zorder=5,
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
def _opt_label(df: pd.DataFrame) -> str:
    opts = sorted(set(df["optimizer"].astype(str)))
    parts = []
    for o in opts:
        lr = ", ".join(f"{v:g}" for v in sorted(pd.to_numeric(df[df["optimizer"] == o]["lr"]).unique()))
        parts.append(f"{LABELS.get(o, o)} (lr {lr})")
    return " / ".join(parts)


def _sigma(df: pd.DataFrame) -> str:
    return ", ".join(f"{s:g}" for s in sorted(pd.to_numeric(df["init_sigma"]).unique()))


def plot_one_epoch(df: pd.DataFrame, cfg, number: str, paper: str = "fig3"):
    fig, axes = plt.subplots(2, 3, figsize=(11, 6.4))
    for l in (1, 2, 3):
        ax = axes[0, l - 1]
        activation_panel(ax, df, l, COLORS[l - 1])
        it = df["iteration"]
        if paper == "fig3":
            m, s = FIG3_PAPER[l]
            ax.axhline(m, color="0.2", linestyle="--", linewidth=1, label=f"paper (MNIST) {m:g} \u00b1 {s:g}")
            for v in (m - s, m + s):
                ax.axhline(v, color="0.2", linestyle=":", linewidth=0.8)
        elif paper == "fig6" and l in FIG6_PAPER:
            (a, b), (m, s) = FIG6_PAPER[l]
            ax.plot([it.min(), it.max()], [a, b], "s", color="0.2", label=f"paper (MNIST) {a:g} \u2192 {b:g}")
            ax.axhline(m, color="0.2", linestyle="--", linewidth=1,
                       label=f"paper, over the epoch {m:g} \u00b1 {s:g}")
            for v in (m - s, m + s):
                ax.axhline(v, color="0.2", linestyle=":", linewidth=0.8)
        ax.legend(fontsize=7, loc="best")
    img = None
    for l in (1, 2, 3):
        img = histogram_panel(axes[1, l - 1], df, l) or img
    if img is not None:
        fig.colorbar(img, ax=axes[1, :].tolist(), label="fraction of weights", shrink=0.9)
    n = df["run_dir"].nunique()
    fig.suptitle(f"Figure {number}: {_opt_label(df)}, weights ~ N(0, {_sigma(df)}\u00b2): activations per layer "
                 f"(top) and weight-gradient histograms (bottom)", fontsize=11)
    caption(fig, cfg, df, f"activation mean \u00b1 std over each layer's units"
            f"{', averaged over ' + str(n) + ' seeds' if n > 1 else ''}; {final_error_text(df)}")
    return fig


def gradient_view(cfg) -> str:
    """``figure.<scale>.gradient_view`` of the config (``iteration`` when it has none)."""
    node = cfg.figure[name_of(cfg.scale.name)]
    return name_of(node.gradient_view) if "gradient_view" in node else "iteration"


def plot_many_epochs(df: pd.DataFrame, cfg, number: str):
    """Figures 4 and 7: the paper's panels (per-iteration gradients of the iteration epochs,
    per-unit mean gradient histograms) or, with ``gradient_view=epoch`` or without per-iteration
    rows, the per-epoch view."""
    if gradient_view(cfg) == "iteration" and not metric(df, "grad_mean_iter").empty:
        return plot_iteration_epochs(df, cfg, number)
    return plot_pooled_epochs(df, cfg, number)


def plot_iteration_epochs(df: pd.DataFrame, cfg, number: str):
    fig, axes = plt.subplots(3, 3, figsize=(11, 9.6))
    for l in (1, 2, 3):
        gradient_iteration_panel(axes[0, l - 1], df, l)
        unit_hist_panel(axes[1, l - 1], df, l)
        distribution_panel(axes[2, l - 1], df, l, COLORS[l - 1], MANY_EPOCHS_PAPER.get(number) if l == 1 else None)
    axes[0, 0].legend(fontsize=7)
    if axes[1, 0].get_visible():
        axes[1, 0].legend(fontsize=7)
    axes[2, 0].legend(fontsize=7)
    epochs = df["pass"].max()
    fig.suptitle(f"Figure {number}: {_opt_label(df)}, weights ~ N(0, {_sigma(df)}\u00b2), {epochs:g} epochs: "
                 f"gradients per iteration (top), per-unit mean gradients (middle), mean activations (bottom)",
                 fontsize=11)
    caption(fig, cfg, df, "gradient mean \u00b1 std over each layer's weights at every iteration of the epochs "
            "shown (0-based); histograms of the mean gradient of each unit (output channel / neuron) over "
            f"those epochs' iterations; percentiles of the per-iteration mean activation; {final_error_text(df)}")
    return fig


def plot_pooled_epochs(df: pd.DataFrame, cfg, number: str):
    fig, axes = plt.subplots(3, 3, figsize=(11, 9.2))
    for l in (1, 2, 3):
        gradient_epoch_panel(axes[0, l - 1], df, l, COLORS[l - 1])
        distribution_panel(axes[1, l - 1], df, l, COLORS[l - 1], MANY_EPOCHS_PAPER.get(number) if l == 1 else None)
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    img = None
    for l in (1, 2, 3):
        img = histogram_panel(axes[2, l - 1], df, l, y="pass") or img
    if img is not None:
        fig.colorbar(img, ax=axes[2, :].tolist(), label="fraction of weights", shrink=0.9)
    epochs = df["pass"].max()
    fig.suptitle(f"Figure {number}: {_opt_label(df)}, weights ~ N(0, {_sigma(df)}\u00b2), {epochs:g} epochs: "
                 f"gradients (top), mean activations (middle), gradient histograms (bottom)", fontsize=11)
    caption(fig, cfg, df, "per epoch: gradient mean \u00b1 std pooled over the epoch's iterations, "
            f"percentiles of the per-iteration mean activation; {final_error_text(df)}")
    return fig


def plot_fig5(df: pd.DataFrame, cfg):
    err = metric(df, "test_error")
    fig, ax = plt.subplots(figsize=(6.8, 4.0))
    sigmas = sorted(pd.to_numeric(err["init_sigma"]).unique())
    styles = ["-", "--", ":", "-."]
    for i, opt in enumerate([o for o in ("sgd", "adam") if o in set(err["optimizer"])]):
        for j, s in enumerate(sigmas):
            d = err[(err["optimizer"] == opt) & (pd.to_numeric(err["init_sigma"]) == s)]
            if d.empty:
                continue
            seeds = d["seed"].nunique()
            band(ax, d, f"{LABELS[opt]}, \u03c3 = {s:g}" + (f" ({seeds} seeds)" if seeds > 1 else ""),
                 COLORS[i], x="pass", marker=None, linestyle=styles[j % len(styles)])
    ax.axhline(90, color="0.5", linestyle=":", linewidth=1, label="chance (90 %)")
    ax.set_xlabel(PASS_LABEL)
    ax.set_ylabel("test error (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Figure 5: test error per epoch, SGD and Adam at two initial scales")
    ax.legend(loc="best")
    caption(fig, cfg, df, "SGD lr 0.1, momentum 0.9; Adam lr 1e-3; weights ~ N(0, \u03c3\u00b2); batch 64")
    return fig


# -- paper numbers and claims (read by saturation_checks.py) -----------------------------------
FIG3_NUMBERS = tuple(
    PaperNumber(f"layer {l} activation {stat} at the end of the epoch (mean over the last 10 % of iterations)",
                FIG3_PAPER[l][k], sc.m_end(f"act_{stat}", l))
    for l in (1, 2, 3) for k, stat in enumerate(("mean", "std")))

FIG6_NUMBERS = tuple(
    n for l, ((a, b), (m, sd)) in FIG6_PAPER.items() for n in (
        PaperNumber(f"layer {l} mean activation at the first iteration", a, sc.m_start("act_mean", l)),
        PaperNumber(f"layer {l} mean activation at the end of the epoch (last 10 % of iterations)", b,
                    sc.m_end("act_mean", l)),
        PaperNumber(f"layer {l} activation mean over the epoch (all iterations pooled)", m, sc.m_overall(l, 0)),
        PaperNumber(f"layer {l} activation std over the epoch (all iterations pooled)", sd, sc.m_overall(l, 1)),
    ))

SETTLE = (("act_mean", 1), ("act_std", 1), ("act_mean", 2), ("act_std", 2))
LATE = 20  # "no learning up to epoch 10, learns after epoch 28" of 50: learning after the paper's epoch 20

register(Figure(
    id="3", config="fig3",
    title="SGD at sigma = 1: activations saturate (one epoch)",
    description="SGD, sigma=1, 1 epoch: per-layer activation mean/std per iteration, gradient histograms",
    variants=single_variant, plot=lambda df, cfg: plot_one_epoch(df, cfg, "3", "fig3"),
    paper_numbers=FIG3_NUMBERS + (
        PaperNumber("SGD test error (%) after the epoch (paper: does not learn)", "no learning", sc.m_final_error()),
    ),
    claims=(
        Claim("SGD at sigma = 1 does not learn in one epoch", sc.c_no_learning("sgd", 1.0)),
        Claim(f"SGD's activations saturate within ~{sc.SETTLE_IT} iterations: the layer-1 and layer-2 "
              "activation mean and std settle", sc.c_settle(SETTLE, expect=True)),
    ),
))

register(Figure(
    id="4", config="fig4", settings=ManyEpochsSettings,
    title="SGD at sigma = 1 over 50 epochs: gradients per iteration and activations per epoch",
    description="SGD, sigma=1, 50 epochs: gradient mean/std per iteration of epochs 0, 10, .., 40, "
                "per-unit mean gradient histograms, mean-activation distribution per epoch",
    variants=single_variant, plot=lambda df, cfg: plot_many_epochs(df, cfg, "4"),
    paper_numbers=(
        PaperNumber("layer 1 mean activation in the first epoch", 0.475, sc.m_epoch("act_mean", 1, "first")),
        PaperNumber("layer 1 mean activation in the last epoch", 0.5, sc.m_epoch("act_mean", 1, "last")),
        PaperNumber("layer 3 (fc) weight-gradient std, mean over the run's epochs (paper: about 0.1)", 0.1,
                    sc.m_run_mean("grad_std", 3)),
        PaperNumber("SGD test error (%) after 50 epochs (paper: still no learning)", "no learning",
                    sc.m_final_error()),
    ),
    claims=(
        Claim("SGD at sigma = 1 still does not learn after 50 epochs (no evaluation below "
              f"{LEARNED:g} % test error)", sc.c_no_learning("sgd", 1.0, every=True)),
    ),
))

register(Figure(
    id="5", config="fig5", settings=Fig5Settings,
    title="SGD and Adam at sigma = 1 and 3: test error over 50 epochs",
    description="SGD / Adam at sigma=1 and 3, 50 epochs: test error per epoch",
    variants=sigma_variants, plot=plot_fig5, varies=("optimizer", "init.sigma"),
    paper_numbers=(
        PaperNumber("Adam sigma=1 test accuracy (%) at epoch 10 of 50 (the paper's epoch by images seen; the same "
                    "fraction of the run at smoke scale; paper: > 95 %)", 95.0, sc.m_accuracy_at("adam", 1.0, 10)),
        PaperNumber(f"Adam sigma=3 first epoch with test error < {LEARNED:g} %, as the paper's epoch "
                    "(paper: learns only after ~28-30 epochs)", 29.0, sc.m_learning_epoch("adam", 3.0)),
        PaperNumber("Adam sigma=3 best test accuracy (%) over the run (paper: up to 84 %)", 84.0,
                    sc.m_best_accuracy("adam", 3.0)),
        PaperNumber("SGD sigma=1 test error (%) after the run (paper: no learning)", "no learning",
                    sc.m_final_error("sgd", 1.0)),
    ),
    claims=(
        Claim("Adam at sigma = 1 learns: test accuracy > 90 % by epoch 10 of 50 (paper: > 95 %)",
              sc.c_accuracy_by("adam", 1.0, 10, 90.0)),
        Claim("Adam at sigma = 3 learns only late: not before epoch 20 of 50 (paper: after ~28)",
              sc.c_learns_late("adam", 3.0, LATE)),
        Claim("Adam learns sooner at sigma = 1 than at sigma = 3", sc.c_learns_sooner("adam", 1.0, 3.0)),
        Claim("SGD at sigma = 1 does not learn", sc.c_no_learning("sgd", 1.0)),
    ),
))

register(Figure(
    id="6", config="fig6",
    title="Adam at sigma = 3: activations (one epoch)",
    description="Adam, sigma=3, 1 epoch: per-layer activation mean/std per iteration, gradient histograms",
    variants=single_variant, plot=lambda df, cfg: plot_one_epoch(df, cfg, "6", "fig6"),
    paper_numbers=FIG6_NUMBERS,
    claims=(
        Claim(f"Adam's layer 1 does not saturate: its mean activation keeps moving after ~{sc.SETTLE_IT} "
              "iterations (paper: 0.49 -> 0.53 over the epoch)", sc.c_settle((("act_mean", 1),), expect=False)),
    ),
))

register(Figure(
    id="7", config="fig7", settings=ManyEpochsSettings,
    title="Adam at sigma = 3 over 50 epochs: gradients per iteration and activations per epoch",
    description="Adam, sigma=3, 50 epochs: gradient mean/std per iteration of epochs 0, 10, .., 40, "
                "per-unit mean gradient histograms, mean-activation distribution per epoch",
    variants=single_variant, plot=lambda df, cfg: plot_many_epochs(df, cfg, "7"),
    paper_numbers=(
        PaperNumber("layer 1 mean activation in the first epoch", 0.49, sc.m_epoch("act_mean", 1, "first")),
        PaperNumber("layer 1 mean activation in epoch 40 of 50 (the same fraction of the run)", 0.56,
                    sc.m_epoch("act_mean", 1, 40 / 50)),
        PaperNumber("test error (%) at epoch 10 of 50 (paper: no learning yet, chance 90 %)", 90.0,
                    sc.m_error_at(None, None, 10)),
        PaperNumber(f"first epoch with test error < {LEARNED:g} %, as the paper's epoch (paper: "
                    "learns after epoch 28)", 28.0, sc.m_learning_epoch(None, None)),
        PaperNumber("best test accuracy (%) over the run (paper: up to 84 %)", 84.0, sc.m_best_accuracy(None, None)),
        PaperNumber("layer 1 largest |per-unit mean gradient| before epoch 10 of 50 (paper: within [-0.3, 0.2])",
                    0.3, sc.m_unit_extent(1, 0.0, 10 / 50)),
        PaperNumber("layer 1 largest |per-unit mean gradient| after epoch 28 of 50 (paper: within [-0.02, 0.02])",
                    0.02, sc.m_unit_extent(1, 28 / 50, 1.0)),
        PaperNumber("layer 3 (fc) weight-gradient std in the first epoch", 0.16, sc.m_epoch("grad_std", 3, "first")),
        PaperNumber("layer 3 (fc) weight-gradient std in the last epoch", 0.01, sc.m_epoch("grad_std", 3, "last")),
    ),
    claims=(
        Claim("Adam at sigma = 3 learns only late: no learning up to epoch 10 of 50, learning after "
              "epoch ~28 (checked: not before epoch 20 of 50)", sc.c_learns_late("adam", 3.0, LATE)),
        Claim("Adam's layer-1 mean activation rises over the run (paper: 0.49 -> 0.56 by epoch 40 of 50)",
              sc.c_rises("act_mean", 1, "first", 40 / 50, "layer 1 mean activation")),
    ),
))
