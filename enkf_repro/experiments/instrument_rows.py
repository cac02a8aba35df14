"""Reading the backprop instrumentation off the tidy rows (Figures 3, 4, 6 and 7): the per-layer
activation and gradient statistics that ``optim/instrument.py`` writes (its docstring is the CSV
contract: the ``layer`` column is the paper's layer number, ``bin`` a histogram bin's lower edge
or a percentile). With several seeds, per-iteration curves are averaged over runs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .draw import metric


def layer_rows(df: pd.DataFrame, name: str, layer: int) -> pd.DataFrame:
    d = metric(df, name)
    return d[pd.to_numeric(d["layer"], errors="coerce") == layer]


def seed_mean(df: pd.DataFrame, x: str = "iteration") -> pd.Series:
    """``value`` averaged over runs at each ``x``."""
    return df.groupby(x)["value"].mean().sort_index()


def epoch_index(df: pd.DataFrame) -> pd.Series:
    """The 0-based epoch a row's iteration belongs to (a pooled row sits at its epoch's end)."""
    return (np.ceil(pd.to_numeric(df["pass"]) - 1e-9) - 1).clip(lower=0).astype(int)


def within_epoch(df: pd.DataFrame) -> pd.Series:
    """The iteration's number inside its epoch (1, 2, ...): iteration - epoch index x iterations per epoch."""
    per_epoch = pd.to_numeric(df["iteration"]) / pd.to_numeric(df["pass"])
    return (pd.to_numeric(df["iteration"]) - epoch_index(df) * per_epoch).round().astype(int)


def iteration_epoch_rows(df: pd.DataFrame, name: str, layer: int) -> pd.DataFrame:
    """The per-iteration rows ``<name>_iter`` of the iteration epochs of a per-epoch run, with the
    0-based epoch (``ep``) and the iteration inside it (``within``)."""
    d = layer_rows(df, f"{name}_iter", layer)
    if d.empty:
        return d.assign(ep=pd.Series(dtype=int), within=pd.Series(dtype=int))
    return d.assign(ep=epoch_index(d), within=within_epoch(d))


def per_epoch(df: pd.DataFrame, name: str, layer: int) -> pd.DataFrame:
    """Per run and 0-based epoch, the epoch's value of ``name``: the pooled row of a per-epoch run,
    the mean over the epoch's iterations of a per-iteration run; columns run_dir, ep, end, value
    (``end``: the pass at the epoch's last row, 1.0 for the first)."""
    d = layer_rows(df, name, layer)
    d = d[d["iteration"] > 0]
    if d.empty:
        return pd.DataFrame(columns=["run_dir", "ep", "end", "value"])
    d = d.assign(ep=epoch_index(d))
    return (d.groupby(["run_dir", "ep"]).agg(end=("pass", "max"), value=("value", "mean"))
            .reset_index())


def epoch_value(df: pd.DataFrame, name: str, layer: int, epoch: int | str) -> tuple[float, str] | None:
    """Mean over runs of ``name``'s value in the 0-based ``epoch`` of each run (``"first"``,
    ``"last"`` or a number; None when a run has no such epoch), with where it was read."""
    e = per_epoch(df, name, layer)
    if e.empty:
        return None
    picked = []
    for _, run in e.groupby("run_dir"):
        run = run.sort_values("ep")
        if epoch == "first":
            picked.append(run.iloc[0])
        elif epoch == "last":
            picked.append(run.iloc[-1])
        else:
            hit = run[run["ep"] == int(epoch)]
            if hit.empty:
                return None
            picked.append(hit.iloc[0])
    eps = sorted({int(p["ep"]) for p in picked})
    total = sorted({f"{run['end'].max():g}" for _, run in e.groupby("run_dir")})
    return (float(np.mean([p["value"] for p in picked])),
            f"epoch {'/'.join(str(x) for x in eps)} (0-based) of {'/'.join(total)}")


def overall(df: pd.DataFrame, layer: int) -> tuple[float, float] | None:
    """Mean and std of all of a layer's activations over the run (mean over runs): the
    per-iteration moments pooled (mean = avg mean, std^2 = avg(std^2 + mean^2) - mean^2)."""
    m, s = layer_rows(df, "act_mean", layer), layer_rows(df, "act_std", layer)
    if m.empty or s.empty:
        return None
    both = m.merge(s, on=["run_dir", "iteration"], suffixes=("_m", "_s"))
    out = []
    for _, run in both.groupby("run_dir"):
        mean = run["value_m"].mean()
        second = (run["value_s"] ** 2 + run["value_m"] ** 2).mean()
        out.append((mean, math.sqrt(max(second - mean ** 2, 0.0))))
    return float(np.mean([o[0] for o in out])), float(np.mean([o[1] for o in out]))


def window_mean(df: pd.DataFrame, name: str, layer: int, lo: int, hi: int) -> float | None:
    """Mean over runs of ``name`` averaged over the iterations lo < it <= hi (None when no row)."""
    d = layer_rows(df, name, layer)
    d = d[(d["iteration"] > lo) & (d["iteration"] <= hi)]
    if d.empty:
        return None
    return float(d.groupby("run_dir")["value"].mean().mean())


def start_value(df: pd.DataFrame, name: str, layer: int) -> float | None:
    d = layer_rows(df, name, layer)
    if d.empty:
        return None
    return float(d[d["iteration"] == d["iteration"].min()]["value"].mean())


def iteration_range(df: pd.DataFrame, name: str, layer: int, epochs: set[int]) -> tuple[float, float] | None:
    """(min, max) over runs of the per-iteration rows ``<name>_iter`` in the 0-based ``epochs``
    (the iteration epochs of a 50-epoch run); None when none of them was logged."""
    d = iteration_epoch_rows(df, name, layer)
    d = d[d["ep"].isin(epochs)]
    if d.empty:
        return None
    return float(d["value"].min()), float(d["value"].max())


# -- "saturates close to N iterations": judged in optimiser steps over the paper's epoch ---------------
EPOCH_STEPS = 938    # optimiser steps of one of the paper's epochs (60,000 images in batches of 64)
BLOCK = 20           # iterations per block mean when judging whether a statistic still moves
SETTLE_RATIO = 0.25  # settled: the later drift is at most this fraction of the early change ...
SETTLE_ABS = 0.01    # ... or at most this much (activations lie in [0, 1])
SETTLE_RULE = (f"settled = the range of {BLOCK}-step means after that step, to the end of the paper's "
               f"epoch ({EPOCH_STEPS} steps), is at most {SETTLE_RATIO:g} x the change up to it, or at most "
               f"{SETTLE_ABS:g}")


def drift(series: pd.Series, at: int, end: int = EPOCH_STEPS, block: int = BLOCK) -> tuple[float, float]:
    """(early, late) change of a per-iteration statistic (index: iteration): early = range of the
    first iteration's value and the ``block``-step means up to step ``at``, late = range of the
    block means after it, up to step ``end``."""
    s = series.sort_index()
    s = s[s.index <= end]
    blocks = s.groupby((np.asarray(s.index) - 1) // block).mean()
    first = blocks[blocks.index < at // block]
    rest = blocks[blocks.index >= at // block]
    early = max(first.max(), s.iloc[0]) - min(first.min(), s.iloc[0])
    return float(early), float(rest.max() - rest.min())


def settled(early: float, late: float) -> bool:
    return late <= max(SETTLE_RATIO * early, SETTLE_ABS)


def check_settles(stats: tuple[tuple[str, int], ...], at: int, expect: bool):
    """The per-iteration statistics (name, layer) all settle by optimiser step ``at`` (``expect``
    True) or none of them does (False), judged over the paper's epoch of 938 steps (see
    :func:`drift`); a run shorter than that epoch is not decided."""
    def check(df, cfg):
        parts, verdicts = [], []
        for name, layer in stats:
            series = seed_mean(layer_rows(df, name, layer))
            n = int(series.index.max()) if not series.empty else 0
            if n < EPOCH_STEPS:
                return (f"layer {layer} {name}: {n} steps logged, fewer than the paper's epoch of {EPOCH_STEPS} "
                        f"over which settling by step {at} is judged (not decided)"), None
            early, late = drift(series, at)
            verdicts.append(settled(early, late))
            parts.append(f"layer {layer} {name.replace('act_', '')} moved {early:.3f} by step {at}, "
                         f"{late:.3f} after")
        holds = all(verdicts) if expect else not any(verdicts)
        return "; ".join(parts) + f" ({SETTLE_RULE})", holds

    return check


def last_move(df: pd.DataFrame, name: str, layer: int, at: int,
              block: int = BLOCK) -> tuple[int, float, float] | None:
    """(the step, the size) of the largest change between consecutive ``block``-step means after
    step ``at`` within the paper's epoch, and the range of those means: where a statistic that does
    not settle still moves, and whether by a jump or a drift."""
    s = seed_mean(layer_rows(df, name, layer))
    s = s[s.index <= EPOCH_STEPS]
    if s.empty:
        return None
    blocks = s.groupby((np.asarray(s.index) - 1) // block).mean()
    late = blocks[blocks.index >= at // block]
    steps = late.diff().abs().dropna()
    if steps.empty:
        return None
    k = int(steps.idxmax())
    return (k + 1) * block, float(steps.max()), float(late.max() - late.min())


# -- per-epoch statistics on the paper's epochs ------------------------------------------------------
def epoch_images(df: pd.DataFrame) -> float | None:
    """Training images in one epoch of the runs (steps per pass x batch size); None without rows."""
    d = df[(pd.to_numeric(df["pass"], errors="coerce") > 0) & (df["iteration"] > 0)]
    if d.empty:
        return None
    steps = (pd.to_numeric(d["iteration"]) / pd.to_numeric(d["pass"])).median()
    return float(round(steps) * pd.to_numeric(d["batch_size"]).iloc[0])


def other_epochs(df: pd.DataFrame) -> tuple[None, str] | None:
    """(None, why) when the runs' epochs are not the paper's (60,000 images), else None: per-epoch
    statistics are read on the paper's epochs only."""
    from .paper_units import PAPER_IMAGES

    images = epoch_images(df)
    if images is not None and abs(images - PAPER_IMAGES) > 64:
        return None, f"not read: the run's epochs hold {images:,.0f} images, the paper's {PAPER_IMAGES:,}"
    return None


def measure_epoch(name: str, layer: int, epoch: int):
    """A measure: ``name``'s value at ``layer`` in the paper's 0-based ``epoch`` (the run's own
    epochs are the paper's when they hold its 60,000 images; otherwise not read)."""
    def f(df, cfg):
        if epoch_images(df) is None:
            return None
        if (other := other_epochs(df)) is not None:
            return other
        got = epoch_value(df, name, layer, epoch)
        if got is None:
            ends = int(pd.to_numeric(df["pass"]).max())
            return None, f"not reached: the run has {ends} epochs"
        return got

    return f


def measure_window(name: str, layer: int, lo: int, hi: int):
    """A measure: ``name`` at ``layer`` averaged over the steps lo < step <= hi."""
    def f(df, cfg):
        v = window_mean(df, name, layer, lo, hi)
        return None if v is None else (v, f"mean over steps {lo + 1}-{hi}")

    return f


def measure_run_mean(name: str, layer: int, epochs: int):
    """A measure: ``name``'s epoch values at ``layer`` averaged over the paper's first ``epochs``."""
    def f(df, cfg):
        e = per_epoch(df, name, layer)
        if e.empty or epoch_images(df) is None:
            return None
        if (other := other_epochs(df)) is not None:
            return other
        e = e[e["ep"] < epochs]
        n = int(e["ep"].nunique())
        return float(e.groupby("run_dir")["value"].mean().mean()), f"mean over {n} of the paper's {epochs} epochs"

    return f


def diagnose_settles(stats: tuple[tuple[str, int], ...], at: int):
    """Where the statistics that do not settle by step ``at`` still move: the largest change
    between consecutive block means after it, and its steps."""
    def diagnose(df, cfg) -> str | None:
        parts = []
        for name, layer in stats:
            move = last_move(df, name, layer, at)
            if move is None or check_settles(((name, layer),), at, True)(df, cfg)[1] is not False:
                continue
            step, size, span = move
            # a jump: one change between neighbouring block means makes at least half the range
            kind = "a jump" if size >= 0.5 * span else "a slow drift, not a jump"
            parts.append(f"layer {layer} {name.replace('act_', '')}: {kind}; its {BLOCK}-step means span "
                         f"{span:.3f} after step {at} and the largest change between consecutive ones is "
                         f"{size:.3f}, at steps {step - BLOCK + 1}-{step}")
        return "; ".join(parts) or None

    return diagnose
