"""Figures 3-7, the numbers and the findings: reading the instrumentation rows and the test error
of the saturation study, the paper's numbers as measures (``PaperNumber``) and its findings as
checks (``Claim``). saturation.py draws the figures and registers them with these.

Where the paper says "epoch 10 of 50" of its 60,000-image MNIST, the test-error numbers and checks
place each evaluation on the paper's 50 epochs (``paper_epoch``): at paper scale by the training
images seen (iteration x batch / 60,000, so on the 8,000-image proxy one epoch is 0.133 of the
paper's and a 50-epoch run reaches the paper's epoch 6.7; a point beyond the run is reported as
such); at smoke scale, where the runs are shortened to a few batches per epoch, at the same
fraction of the run (0.2 of its epochs). The activation and gradient statistics of Figures 4 and 7
are read per epoch of the run's own data at the same fraction of the run. Every check compares
quantities within the run (early against late, one series against another).
The rows are those of optim/instrument.py (its docstring is the CSV contract).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..config.schema import name_of
from .draw import metric

LEARNED = 80.0      # test error (%) below which a run counts as learning (chance is 90 %)
SETTLE_IT = 200     # "saturation by ~200 iterations" (Figure 3) of the paper's 938-iteration epoch
EPOCH_IT = 938      # iterations of the paper's one-epoch runs (60000 / 64)
BLOCK = 20          # iterations per block mean when judging whether a statistic still moves
SETTLE_RATIO = 0.25  # settled: the later drift is at most this fraction of the early change ...
SETTLE_ABS = 0.01    # ... or at most this much (activations lie in [0, 1])
LABELS = {"sgd": "SGD", "adam": "Adam"}
PAPER_EPOCHS = 50     # length of the paper's Figure 4, 5 and 7 runs
PAPER_IMAGES = 60000  # training images in one of the paper's epochs (MNIST)


# -- rows ------------------------------------------------------------------------------------
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
    (``end``: the epoch at the epoch's last row, 1.0 for the first)."""
    d = layer_rows(df, name, layer)
    d = d[d["iteration"] > 0]
    if d.empty:
        return pd.DataFrame(columns=["run_dir", "ep", "end", "value"])
    d = d.assign(ep=epoch_index(d))
    return (d.groupby(["run_dir", "ep"]).agg(end=("pass", "max"), value=("value", "mean"))
            .reset_index())


def epoch_value(df: pd.DataFrame, name: str, layer: int, where: str | float) -> tuple[float, str] | None:
    """Mean over runs of ``name``'s epoch value in the first epoch (``"first"``), the last
    (``"last"``) or the epoch ending nearest ``where`` x the run's epochs; with where it was read."""
    e = per_epoch(df, name, layer)
    if e.empty:
        return None
    picked = []
    for _, run in e.groupby("run_dir"):
        run = run.sort_values("ep")
        if where == "first":
            picked.append(run.iloc[0])
        elif where == "last":
            picked.append(run.iloc[-1])
        else:
            target = float(where) * run["end"].max()
            picked.append(run.loc[(run["end"] - target).abs().idxmin()])
    ends = sorted({f"{p['end']:g}" for p in picked})
    total = sorted({f"{run['end'].max():g}" for _, run in e.groupby("run_dir")})
    return (float(np.mean([p["value"] for p in picked])),
            f"epoch ending at {'/'.join(ends)} of {'/'.join(total)}")


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


def unit_mean_extent(df: pd.DataFrame, layer: int, lo: float, hi: float) -> tuple[float, str] | None:
    """The largest |per-unit mean gradient| of ``layer`` in the iteration epochs whose start lies
    in [lo, hi) x the run's epochs, read off the ``grad_outmean_hist`` rows as the outer edge of
    the outermost non-empty bin (so within a factor 10^(1/4) of the value); max over runs."""
    d = layer_rows(df, "grad_outmean_hist", layer)
    d = d[d["value"] > 0]
    if d.empty:
        return None
    edges = sorted(pd.to_numeric(layer_rows(df, "grad_outmean_hist", layer)["bin"]).unique())
    upper = {e: (edges[i + 1] if i + 1 < len(edges) else math.inf) for i, e in enumerate(edges)}
    d = d.assign(ep=epoch_index(d), bin=pd.to_numeric(d["bin"]))
    total = df.groupby("run_dir")["pass"].max()
    out, eps = [], set()
    for run_dir, run in d.groupby("run_dir"):
        epochs = float(total[run_dir])
        sel = run[(run["ep"] >= lo * epochs - 1e-9) & (run["ep"] < hi * epochs - 1e-9)]
        if sel.empty:
            continue
        eps |= set(sel["ep"])
        # bin [b, upper): its values' magnitudes reach |b| when b < 0, upper otherwise
        out.append(max(abs(b) if b < 0 else upper[b] for b in sel["bin"]))
    if not out:
        return None
    return float(max(out)), "epochs " + ", ".join(str(e) for e in sorted(eps)) + " (0-based), bin edge"


# -- test error --------------------------------------------------------------------------------
def errors(df: pd.DataFrame, opt: str | None = None, sigma: float | None = None) -> pd.DataFrame:
    err = metric(df, "test_error")
    if opt is not None:
        err = err[err["optimizer"] == opt]
    if sigma is not None:
        err = err[pd.to_numeric(err["init_sigma"]) == sigma]
    return err


def series_name(opt: str | None, sigma: float | None) -> str:
    name = LABELS.get(opt, opt or "the run")
    return f"{name} sigma={sigma:g}" if sigma is not None else name


def by_images(cfg) -> bool:
    """Place runs on the paper's epochs by training images seen (paper scale) rather than by the
    fraction of the run (smoke scale, or no config)."""
    return cfg is not None and name_of(cfg.scale.name) == "paper"


def paper_epoch(err: pd.DataFrame, cfg) -> pd.Series:
    """Each row's position on the paper's 50 epochs (module docstring)."""
    if by_images(cfg):
        return pd.to_numeric(err["iteration"]) * int(cfg.train.batch_size) / PAPER_IMAGES
    passes = pd.to_numeric(err["pass"])
    return passes / passes.groupby(err["run_dir"]).transform("max") * PAPER_EPOCHS


def where_read(p: float, n: float, pe: float, cfg) -> str:
    """"epoch p of n", with its place among the paper's epochs when that is not the same fraction."""
    return f"epoch {p:g} of {n:g}" + (f" = {pe:.2g} of the paper's epochs by images seen" if by_images(cfg) else "")


def error_at(err: pd.DataFrame, cfg, at: float) -> tuple[float, float, float, float, bool] | None:
    """At each run's evaluation nearest the paper's epoch ``at``, averaged over runs: (error, epoch,
    run epochs, paper epoch, reached) where ``reached`` says whether every run got that far (at
    images-seen placement a run on a smaller dataset may end before it; then its last evaluation)."""
    if err.empty:
        return None
    err = err.assign(pe=paper_epoch(err, cfg))
    vals, reached = [], True
    for _, run in err.groupby("run_dir"):
        row = run.loc[(run["pe"] - at).abs().idxmin()]
        reached &= bool(run["pe"].max() >= at * 0.95)
        vals.append((float(row["value"]), float(row["pass"]), float(run["pass"].max()), float(row["pe"])))
    return (*(float(np.mean(v)) for v in zip(*vals)), reached)


def first_learning(err: pd.DataFrame, cfg=None) -> list[tuple[float | None, float, float | None, float]]:
    """Per run: (epoch of the first evaluation with test error < LEARNED or None, run epochs, the
    same as the paper's epoch or None, the paper's epoch the run ends at)."""
    err = err.assign(pe=paper_epoch(err, cfg))
    out = []
    for _, run in err.groupby("run_dir"):
        below = run[run["value"] < LEARNED].sort_values("iteration")
        first = below.iloc[0] if not below.empty else None
        out.append((None if first is None else float(first["pass"]), float(run["pass"].max()),
                    None if first is None else float(first["pe"]), float(run["pe"].max())))
    return out


def finished(df: pd.DataFrame) -> bool:
    return "finished" not in df or bool(df.groupby("run_dir")["finished"].first().astype(bool).all())


# -- paper numbers (measures: (df, cfg) -> value or (value, where read)) ------------------------
def m_end(name: str, layer: int):
    return lambda df, cfg: end_window(df, name, layer)


def m_start(name: str, layer: int):
    return lambda df, cfg: start_value(df, name, layer)


def m_epoch(name: str, layer: int, where: str | float):
    return lambda df, cfg: epoch_value(df, name, layer, where)


def m_run_mean(name: str, layer: int):
    """Mean over the run's epochs of ``name``'s epoch values (mean over runs)."""
    def f(df, cfg):
        e = per_epoch(df, name, layer)
        if e.empty:
            return None
        return float(e.groupby("run_dir")["value"].mean().mean()), f"mean over {e['ep'].nunique()} epochs"

    return f


def m_overall(layer: int, k: int):
    def f(df, cfg):
        o = overall(df, layer)
        return None if o is None else (o[k], "pooled over all iterations")

    return f


def m_unit_extent(layer: int, lo: float, hi: float):
    return lambda df, cfg: unit_mean_extent(df, layer, lo, hi)


def m_final_error(opt: str | None = None, sigma: float | None = None):
    def f(df, cfg):
        err = errors(df, opt, sigma)
        if err.empty:
            return None
        last = err.sort_values("iteration").groupby("run_dir").tail(1)
        return float(last["value"].mean()), f"epoch {last['pass'].max():g}"

    return f


def m_error_at(opt: str | None, sigma: float | None, at: float):
    """Test error at the paper's epoch ``at`` (error_at)."""
    def f(df, cfg):
        r = error_at(errors(df, opt, sigma), cfg, at)
        if r is None:
            return None
        return r[0], where_read(*r[1:4], cfg) + ("" if r[4] else f"; the run ends before epoch {at:g}")

    return f


def m_accuracy_at(opt: str, sigma: float, at: float):
    def f(df, cfg):
        r = m_error_at(opt, sigma, at)(df, cfg)
        return None if r is None else (100.0 - r[0], r[1])

    return f


def m_learning_epoch(opt: str | None, sigma: float | None):
    """The first evaluation with test error < LEARNED as the paper's epoch (paper_epoch), mean
    over the runs that learn; None if none does."""
    def f(df, cfg):
        firsts = [r for r in first_learning(errors(df, opt, sigma), cfg) if r[0] is not None]
        if not firsts:
            return None
        return (float(np.mean([pe for _, _, pe, _ in firsts])),
                "; ".join(where_read(e, n, pe, cfg) for e, n, pe, _ in firsts))

    return f


def m_best_accuracy(opt: str | None, sigma: float | None):
    def f(df, cfg):
        err = errors(df, opt, sigma)
        if err.empty:
            return None
        return float(100.0 - err.groupby("run_dir")["value"].min().mean())

    return f


# -- claims (checks: (df, cfg) -> (evidence, holds)) --------------------------------------------
def c_no_learning(opt: str | None = None, sigma: float | None = None, every: bool = False):
    """Does not learn: the final test error (``every``: every evaluation after the start) >= LEARNED."""
    def check(df, cfg):
        err = errors(df, opt, sigma)
        err = err[err["iteration"] > 0]
        if err.empty:
            return f"no test-error rows of {series_name(opt, sigma)}", None
        # at paper scale on a smaller dataset the run sees fewer images than the paper's epochs
        reach = f"; the run covers the paper's first {paper_epoch(err, cfg).max():.2g} epochs by images seen" \
            if by_images(cfg) else ""
        if every:
            best = err.groupby("run_dir")["value"].min()
            at = err.loc[err.groupby("run_dir")["value"].idxmin(), "pass"]
            text = (f"{series_name(opt, sigma)}: lowest test error {best.min():.1f} % (epoch "
                    f"{', '.join(f'{e:g}' for e in at)} of {err['pass'].max():g}); learning means < {LEARNED:g} %")
            return text + reach, bool(best.min() >= LEARNED)
        last = err.sort_values("iteration").groupby("run_dir").tail(1)
        text = (f"{series_name(opt, sigma)}: final test error {last['value'].mean():.1f} % at epoch "
                f"{last['pass'].max():g} (mean of {len(last)} run{'s' if len(last) > 1 else ''}); "
                f"learning means < {LEARNED:g} %")
        return text + reach, bool(last["value"].mean() >= LEARNED)

    return check


def c_accuracy_by(opt: str, sigma: float, at: float, accuracy: float):
    """Learns fast: test accuracy > ``accuracy`` % at the paper's epoch ``at``; a run that ends
    before it holds when it is already above, and is not decided otherwise."""
    def check(df, cfg):
        r = error_at(errors(df, opt, sigma), cfg, at)
        if r is None:
            return f"no test-error rows of {series_name(opt, sigma)}", None
        acc = 100.0 - r[0]
        point = f"the {at:g}/{PAPER_EPOCHS} point"
        if not r[4]:
            point += ", which lies beyond this run: its last evaluation"
        text = f"{series_name(opt, sigma)}: test accuracy {acc:.1f} % at {where_read(*r[1:4], cfg)} ({point}); " \
               f"needs > {accuracy:g} %"
        return text, bool(acc > accuracy) if r[4] or acc > accuracy else None

    return check


def c_learns_late(opt: str, sigma: float, after: float):
    """Learns only late: test error >= LEARNED at every evaluation up to the paper's epoch
    ``after`` and < LEARNED at some later one (not decided when the run ends before ``after``
    without having learned)."""
    def check(df, cfg):
        err = errors(df, opt, sigma)
        if err.empty:
            return f"no test-error rows of {series_name(opt, sigma)}", None
        firsts = first_learning(err, cfg)
        name = series_name(opt, sigma)
        if by_images(cfg):
            bound = f"the paper's epoch {after:g} by images seen"
        else:
            bound = "epoch " + ", ".join(f"{after / PAPER_EPOCHS * n:g} of {n:g}" for _, n, _, _ in firsts)
        if any(e is None for e, *_ in firsts):
            ends = max(end for *_, end in firsts)
            text = f"{name}: test error never below {LEARNED:g} % (needs to, after {bound})"
            if ends < after * 0.95:
                return text + f"; the run ends at the paper's epoch {ends:.2g}", None
            return text, (False if finished(df) else None)
        paper = "the paper's epoch {:.2g} by images seen" if by_images(cfg) else "{:.1f} of %d" % PAPER_EPOCHS
        when = ", ".join(f"{e:g} of {n:g} (= {paper.format(pe)})" for e, n, pe, _ in firsts)
        holds = all(pe > after + 1e-9 for _, _, pe, _ in firsts)
        return f"{name}: first test error < {LEARNED:g} % at epoch {when}; needs to be after {bound}", holds

    return check


def c_learns_sooner(opt: str, fast: float, slow: float):
    """At sigma ``fast`` the optimizer learns sooner (first test error < LEARNED) than at ``slow``."""
    def check(df, cfg):
        a, b = errors(df, opt, fast), errors(df, opt, slow)
        if a.empty or b.empty:
            return f"needs both {series_name(opt, fast)} and {series_name(opt, slow)}", None
        fa = [e for e, *_ in first_learning(a, cfg)]
        fb = [e for e, *_ in first_learning(b, cfg)]

        def show(f):
            return ", ".join("never" if e is None else f"epoch {e:g}" for e in f)

        text = (f"first test error < {LEARNED:g} %: {series_name(opt, fast)} {show(fa)}, "
                f"{series_name(opt, slow)} {show(fb)} of {a['pass'].max():g}")
        if any(e is None for e in fa):
            return text, False
        if any(e is None for e in fb):
            return text, True
        return text, bool(np.mean(fa) < np.mean(fb))

    return check


def drift(series: pd.Series, settle: int = SETTLE_IT, block: int = BLOCK) -> tuple[float, float] | None:
    """(early, late) change of a per-iteration statistic (index: iteration): early = range of
    the first iteration's value and the ``block``-iteration means up to iteration ``settle``, late =
    range of the block means after it. None when the run has fewer than 2 x ``settle`` iterations."""
    s = series.sort_index()
    if s.empty or s.index.max() < 2 * settle:
        return None
    blocks = s.groupby((np.asarray(s.index) - 1) // block).mean()
    first = blocks[blocks.index < settle // block]
    rest = blocks[blocks.index >= settle // block]
    early = max(first.max(), s.iloc[0]) - min(first.min(), s.iloc[0])
    return float(early), float(rest.max() - rest.min())


def settled(early: float, late: float) -> bool:
    return late <= max(SETTLE_RATIO * early, SETTLE_ABS)


SETTLE_RULE = (f"settled = the range of {BLOCK}-iteration means after that iteration is at most "
               f"{SETTLE_RATIO:g} x the change up to it, or at most {SETTLE_ABS:g}")


def settle_point(iterations: int) -> int:
    """The iteration by which a statistic is judged settled: SETTLE_IT, or in a run shorter than
    2 x SETTLE_IT (a smaller training set, e.g. one 125-iteration epoch of the 8,000-image proxy)
    the same fraction of it, SETTLE_IT / EPOCH_IT, rounded to whole blocks (at least one)."""
    if iterations >= 2 * SETTLE_IT:
        return SETTLE_IT
    return max(BLOCK, int(round(iterations * SETTLE_IT / EPOCH_IT / BLOCK)) * BLOCK)


def c_settle(stats: tuple[tuple[str, int], ...], expect: bool):
    """The per-iteration statistics (name, layer) all settle by iteration SETTLE_IT (the same
    fraction of a shorter run: :func:`settle_point`) (``expect`` True) or none of them does
    (False); see :func:`drift`."""
    def check(df, cfg):
        parts, verdicts = [], []
        for name, layer in stats:
            series = seed_mean(layer_rows(df, name, layer))
            n = int(series.index.max()) if not series.empty else 0
            at = settle_point(n)
            d = drift(series, at)
            if d is None:
                return (f"layer {layer} {name}: {n} iterations logged, too few to judge settling by iteration "
                        f"{at}"), None
            verdicts.append(settled(*d))
            parts.append(f"layer {layer} {name.replace('act_', '')} moved {d[0]:.3f} by it {at} of {n}, "
                         f"{d[1]:.3f} after")
        holds = all(verdicts) if expect else not any(verdicts)
        return "; ".join(parts) + f" ({SETTLE_RULE})", holds

    return check


def c_rises(name: str, layer: int, start: str | float, end: str | float, what: str):
    """``name``'s epoch value at layer ``layer`` is higher at ``end`` than at ``start``."""
    def check(df, cfg):
        a, b = epoch_value(df, name, layer, start), epoch_value(df, name, layer, end)
        if a is None or b is None:
            return f"no {name} rows for layer {layer}", None
        if a[1] == b[1]:
            return f"{what}: one epoch only ({a[1]})", None
        return f"{what}: {a[0]:.4f} ({a[1]}) -> {b[0]:.4f} ({b[1]})", bool(b[0] > a[0])

    return check
