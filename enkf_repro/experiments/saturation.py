"""Figures 3-7: the saturation study of the backprop baselines at sigma = 1 (and 3).

* Figure 3 (SGD) and 6 (Adam), one epoch: per-layer activation mean +/- std (the spread of the
  layer's activations, not over seeds) against iteration, and the weight-gradient histograms
  every 200 iterations. Paper: SGD saturates by ~200 iterations, layer means / stds
  0.4597 / 0.2976, 0.3178 / 0.4624, 0.1 / 0.2908; Adam's layer-1 mean goes 0.49 -> 0.53.
* Figure 4 (SGD) and 7 (Adam), 50 epochs: per-layer weight-gradient mean +/- std per epoch,
  the distribution (percentiles over the epoch's iterations) of the mean activation per epoch,
  and the gradient histograms once per epoch. Paper: SGD still does not learn.
* Figure 5: test error once per epoch over 50 epochs, SGD and Adam at sigma = 1 and 3. Paper:
  Adam at sigma = 1 passes 95 % accuracy within 10 epochs; at sigma = 3 it learns only after
  ~28-30 epochs, up to 84 %.

The statistics come from backprop.py's instrumentation (its docstring describes the rows; the
``layer`` column is the paper's layer number, the ``bin`` column a histogram bin's lower edge or
a percentile). With several seeds, per-iteration curves are averaged over seeds and histogram
counts summed.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm

from ..optim.instrument import PERCENTILES
from .base import Figure, PaperNumber, Variant, register
from .common import at_fraction, curve, series_overrides, value_at
from .draw import COLORS, band, caption, metric

ACT_TITLES = {1: "layer 1: conv1 + activation (before pooling)", 2: "layer 2: conv2 + activation",
              3: "layer 3: softmax output (mean 1/10 by construction)"}
GRAD_TITLES = {1: "conv1 weights (layer 1)", 2: "conv2 weights (layer 2)", 3: "fc weights (layer 3)"}
LABELS = {"sgd": "SGD", "adam": "Adam"}
# Figure 3's reported end-of-epoch layer statistics (mean, std), SGD at sigma = 1.
FIG3_PAPER = {1: (0.4597, 0.2976), 2: (0.3178, 0.4624), 3: (0.1, 0.2908)}
LEARNED = 80.0  # test error (%) below which a run counts as learning (chance is 90 %)


# -- variants --------------------------------------------------------------------------------
def single_variant(cfg, s) -> list[Variant]:
    """Figures 3, 4, 6, 7: one series, the optimizer of the figure's preset."""
    name = str(cfg.optimizer.name)
    return [Variant(name, series_overrides(s, name))]


def sigma_variants(cfg, s) -> list[Variant]:
    """Figure 5: every optimizer at every sigma."""
    out = []
    for opt in s.optimizers:
        for sigma in s.sigmas:
            series = f"{opt}-sigma{float(sigma):g}"
            out.append(Variant(series, (f"optimizer={opt}", f"init.sigma={float(sigma)}")
                               + series_overrides(s, series)))
    return out


# -- reading the instrumentation -------------------------------------------------------------
def layer_rows(df: pd.DataFrame, name: str, layer: int) -> pd.DataFrame:
    d = metric(df, name)
    return d[pd.to_numeric(d["layer"], errors="coerce") == layer]


def seed_mean(df: pd.DataFrame, x: str = "iteration") -> pd.Series:
    """``value`` averaged over runs at each ``x``."""
    return df.groupby(x)["value"].mean().sort_index()


def end_window(df: pd.DataFrame, name: str, layer: int, tail: float = 0.1) -> float | None:
    """Mean over runs of ``name`` at ``layer`` averaged over each run's last ``tail`` of iterations."""
    d = layer_rows(df, name, layer)
    if d.empty:
        return None
    vals = []
    for _, run in d.groupby("run_dir"):
        last = run["iteration"].max()
        vals.append(run.loc[run["iteration"] > last * (1 - tail), "value"].mean())
    return float(np.mean(vals))


def start_value(df: pd.DataFrame, name: str, layer: int) -> float | None:
    d = layer_rows(df, name, layer)
    if d.empty:
        return None
    return float(d[d["iteration"] == d["iteration"].min()]["value"].mean())


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
    edges = list(counts.columns)  # lower edges; -inf first
    ticks, labels = [], []
    for k, e in enumerate(edges):
        if math.isfinite(e) and e != 0 and round(math.log10(abs(e)), 6) in (-8.0, -4.0, 0.0):
            ticks.append(k - 0.5)  # the bin's left boundary
            labels.append(("\u2212" if e < 0 else "") + f"1e{int(round(math.log10(abs(e))))}")
        elif math.isclose(e, -1e-10, rel_tol=1e-6):  # the middle bin [-1e-10, 1e-10): zero
            ticks.append(k)
            labels.append("0")
    ax.set_xticks(ticks, labels, fontsize=7, rotation=60)
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


def gradient_epoch_panel(ax, df: pd.DataFrame, layer: int, color: str) -> None:
    mean = seed_mean(layer_rows(df, "grad_mean", layer), "epoch")
    std = seed_mean(layer_rows(df, "grad_std", layer), "epoch").reindex(mean.index)
    if mean.empty:
        return
    ax.plot(mean.index, mean.values, color=color, marker="o" if len(mean) <= 60 else None, label="mean")
    ax.fill_between(mean.index, mean - std, mean + std, color=color, alpha=0.25, linewidth=0, label="\u00b1 std")
    ax.axhline(0, color="0.4", linewidth=0.6)
    ax.set_title(GRAD_TITLES.get(layer, f"layer {layer}"), fontsize=9)
    ax.set_xlabel("epoch")
    ax.set_ylabel("weight gradient")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))


def act_percentiles(df: pd.DataFrame, layer: int) -> pd.DataFrame:
    """Percentiles (columns) per epoch (index) of the per-iteration mean activation: the logged
    ``act_mean_pct`` rows, averaged over seeds, or computed from per-iteration ``act_mean`` rows."""
    d = layer_rows(df, "act_mean_pct", layer)
    if not d.empty:
        d = d.assign(bin=pd.to_numeric(d["bin"]))
        return d.pivot_table(index="epoch", columns="bin", values="value", aggfunc="mean").sort_index()
    d = layer_rows(df, "act_mean", layer)
    if d.empty:
        return pd.DataFrame()
    ep = np.ceil(d["epoch"].to_numpy() - 1e-9)
    g = d.assign(ep=ep).groupby("ep")["value"]
    return pd.DataFrame({p: g.quantile(p / 100) for p in PERCENTILES})


def distribution_panel(ax, df: pd.DataFrame, layer: int, color: str) -> None:
    """Nested percentile bands (min-max, 10-90, 25-75) and the median of the mean activation."""
    p = act_percentiles(df, layer)
    if p.empty:
        return
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
    ax.set_xlabel("epoch")
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
        elif paper == "fig6" and l == 1:
            ax.plot([it.min(), it.max()], [0.49, 0.53], "s", color="0.2", label="paper (MNIST) 0.49 \u2192 0.53")
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


def plot_many_epochs(df: pd.DataFrame, cfg, number: str):
    fig, axes = plt.subplots(3, 3, figsize=(11, 9.2))
    for l in (1, 2, 3):
        gradient_epoch_panel(axes[0, l - 1], df, l, COLORS[l - 1])
        distribution_panel(axes[1, l - 1], df, l, COLORS[l - 1])
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    img = None
    for l in (1, 2, 3):
        img = histogram_panel(axes[2, l - 1], df, l, y="epoch") or img
    if img is not None:
        fig.colorbar(img, ax=axes[2, :].tolist(), label="fraction of weights", shrink=0.9)
    epochs = df["epoch"].max()
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
                 COLORS[i], x="epoch", marker=None, linestyle=styles[j % len(styles)])
    ax.axhline(90, color="0.5", linestyle=":", linewidth=1, label="chance (90 %)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Figure 5: test error per epoch, SGD and Adam at two initial scales")
    ax.legend(loc="best")
    caption(fig, cfg, df, "SGD lr 0.1, momentum 0.9; Adam lr 1e-3; weights ~ N(0, \u03c3\u00b2); batch 64")
    return fig


# -- paper numbers ---------------------------------------------------------------------------
def _end(name: str, layer: int):
    return lambda df, cfg: end_window(df, name, layer)


def _start(name: str, layer: int):
    return lambda df, cfg: start_value(df, name, layer)


def _err(opt: str | None = None, sigma: float | None = None):
    def select(df):
        err = metric(df, "test_error")
        if opt is not None:
            err = err[err["optimizer"] == opt]
        if sigma is not None:
            err = err[pd.to_numeric(err["init_sigma"]) == sigma]
        return err

    return select


def _final_error(opt: str | None = None, sigma: float | None = None):
    return lambda df, cfg: value_at(_err(opt, sigma)(df), "test_error", "last")


def _accuracy_at(opt: str, sigma: float, fraction: float):
    def f(df, cfg):
        v = at_fraction(_err(opt, sigma)(df), "test_error", fraction)
        return None if v is None else 100.0 - v

    return f


def _learning_epoch(opt: str, sigma: float):
    """Mean over runs of the first evaluated epoch with test error below LEARNED (None if never)."""
    def f(df, cfg):
        err = _err(opt, sigma)(df)
        firsts = [run.loc[run["value"] < LEARNED, "epoch"].min() for _, run in err.groupby("run_dir")]
        firsts = [e for e in firsts if pd.notna(e)]
        return float(np.mean(firsts)) if firsts else None

    return f


def _best_accuracy(opt: str, sigma: float):
    def f(df, cfg):
        err = _err(opt, sigma)(df)
        if err.empty:
            return None
        return float(100.0 - err.groupby("run_dir")["value"].min().mean())

    return f


FIG3_NUMBERS = tuple(
    PaperNumber(f"layer {l} activation {stat} at the end of the epoch (mean over the last 10 % of iterations)",
                FIG3_PAPER[l][k], _end(f"act_{stat}", l))
    for l in (1, 2, 3) for k, stat in enumerate(("mean", "std")))

register(Figure(
    id="3", config="fig3",
    title="SGD at sigma = 1: activations saturate (one epoch)",
    description="SGD, sigma=1, 1 epoch: per-layer activation mean/std per iteration, gradient histograms",
    variants=single_variant, plot=lambda df, cfg: plot_one_epoch(df, cfg, "3", "fig3"),
    paper_numbers=FIG3_NUMBERS + (
        PaperNumber("SGD test error (%) after the epoch (paper: does not learn)", "no learning", _final_error()),
    ),
))

register(Figure(
    id="4", config="fig4",
    title="SGD at sigma = 1 over 50 epochs: gradients and activations per epoch",
    description="SGD, sigma=1, 50 epochs: gradient mean/std and mean-activation distribution per epoch",
    variants=single_variant, plot=lambda df, cfg: plot_many_epochs(df, cfg, "4"),
    paper_numbers=(
        PaperNumber("SGD test error (%) after 50 epochs (paper: still no learning)", "no learning",
                    _final_error()),
    ),
))

register(Figure(
    id="5", config="fig5",
    title="SGD and Adam at sigma = 1 and 3: test error over 50 epochs",
    description="SGD / Adam at sigma=1 and 3, 50 epochs: test error per epoch",
    variants=sigma_variants, plot=plot_fig5, varies=("optimizer", "init.sigma"),
    paper_numbers=(
        PaperNumber("Adam sigma=1 test accuracy (%) at epoch 10 of 50 (same fraction of the run at smoke "
                    "scale; paper: > 95 %)", 95.0, _accuracy_at("adam", 1.0, 10 / 50)),
        PaperNumber(f"Adam sigma=3 first epoch with test error < {LEARNED:g} % (paper: learns only after "
                    "~28-30 epochs)", 29.0, _learning_epoch("adam", 3.0)),
        PaperNumber("Adam sigma=3 best test accuracy (%) over the run (paper: up to 84 %)", 84.0,
                    _best_accuracy("adam", 3.0)),
        PaperNumber("SGD sigma=1 test error (%) after the run (paper: no learning)", "no learning",
                    _final_error("sgd", 1.0)),
    ),
))

register(Figure(
    id="6", config="fig6",
    title="Adam at sigma = 1: activations (one epoch)",
    description="Adam, sigma=1, 1 epoch: per-layer activation mean/std per iteration, gradient histograms",
    variants=single_variant, plot=lambda df, cfg: plot_one_epoch(df, cfg, "6", "fig6"),
    paper_numbers=(
        PaperNumber("layer 1 mean activation at the first iteration", 0.49, _start("act_mean", 1)),
        PaperNumber("layer 1 mean activation at the end of the epoch (last 10 % of iterations)", 0.53,
                    _end("act_mean", 1)),
    ),
))

register(Figure(
    id="7", config="fig7",
    title="Adam at sigma = 1 over 50 epochs: gradients and activations per epoch",
    description="Adam, sigma=1, 50 epochs: gradient mean/std and mean-activation distribution per epoch",
    variants=single_variant, plot=lambda df, cfg: plot_many_epochs(df, cfg, "7"),
))
