"""The paper's units. Its statements are in optimiser steps ("saturate close to 200 iterations",
the EnKF "after 500 iterations"), in its epochs of 60,000 MNIST images ("learns after epoch 28",
"within 10 epochs") or in images seen; the checks and numbers of the figures read a run in those
units, never as a fraction of a shorter run. A run that does not reach the point a statement
speaks of gives "not decided" and says how far it got. An epoch of the paper is 60,000 images in
mini-batches, the last one partial: ceil(60,000 / B) batches (938 of 64, 7,504 EnKF iterations
at r = 8), which is how a run on the full MNIST counts its own.

"Learns" is sustained: the test error below :data:`LEARNED` at :data:`SUSTAIN` consecutive
evaluations, so that one dip of a noisy curve does not decide it; the first of those evaluations
is when the run learned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .draw import metric

PAPER_IMAGES = 60000   # images in one of the paper's epochs (the MNIST training set)
PAPER_BATCH = 64       # the paper's mini-batch: 938 optimiser steps per epoch
LEARNED = 80.0         # test error (%) below which a run learns (chance: 90 %)
SUSTAIN = 3            # consecutive evaluations below LEARNED that make "learns"
LEARNS = f"test error < {LEARNED:g} % at {SUSTAIN} consecutive evaluations (chance: 90 %)"


def images_seen(rows: pd.DataFrame) -> pd.Series:
    """Training images seen at each row: iteration x batch size / r (an EnKF batch is presented r
    times; r = 1 for the other methods)."""
    r = pd.to_numeric(rows["repetitions"], errors="coerce").fillna(1.0) if "repetitions" in rows else 1.0
    return pd.to_numeric(rows["iteration"]) * pd.to_numeric(rows["batch_size"]) / r


def paper_epochs(rows: pd.DataFrame) -> pd.Series:
    """Each row's place on the paper's epochs: batches seen / ceil(60,000 / B) (module docstring)."""
    batch = pd.to_numeric(rows["batch_size"])
    return images_seen(rows) / (np.ceil(PAPER_IMAGES / batch) * batch)


def by_run(rows: pd.DataFrame):
    """(run folder, its rows sorted by iteration) for each run."""
    for run_dir, run in rows.groupby("run_dir", sort=True):
        yield run_dir, run.sort_values("iteration")


def errors(df: pd.DataFrame, **cols) -> pd.DataFrame:
    """The ``test_error`` rows of the runs whose columns equal ``cols`` (as strings), with their
    paper epoch (``pe``)."""
    err = metric(df, "test_error")
    for k, v in cols.items():
        if v is not None:
            err = err[err[k].astype(str) == str(v)]
    return err.assign(pe=paper_epochs(err)) if not err.empty else err.assign(pe=pd.Series(dtype=float))


@dataclass(frozen=True)
class Learning:
    """When one run learned: ``at`` the paper epoch of the first evaluation of a sustained streak
    (None: it never did), ``iteration`` its step, ``ends`` the paper epoch of the run's last
    evaluation, ``best`` its lowest test error (%) and ``dips`` the evaluations below LEARNED that
    did not last."""

    at: float | None
    iteration: int | None
    ends: float
    best: float
    dips: int


def learning(err: pd.DataFrame, until: float | None = None, threshold: float = LEARNED) -> list[Learning]:
    """Per run of the test-error rows ``err`` (with ``pe``): when it learned (module docstring:
    below ``threshold`` at SUSTAIN consecutive evaluations), considering the evaluations up to
    the paper's epoch ``until`` (None: all of them)."""
    out = []
    for _, run in by_run(err):
        run = run[run["iteration"] > 0]
        if until is not None:
            run = run[run["pe"] <= until + 1e-9]
        if run.empty:
            continue
        below = (run["value"] < threshold).to_numpy()
        first = next((k for k in range(len(below) - SUSTAIN + 1) if below[k:k + SUSTAIN].all()), None)
        dips = int(below.sum()) - (int(below[first:].sum()) if first is not None else 0)
        out.append(Learning(None if first is None else float(run["pe"].iloc[first]),
                            None if first is None else int(run["iteration"].iloc[first]),
                            float(run["pe"].iloc[-1]), float(run["value"].min()), dips))
    return out


def at_paper_epoch(err: pd.DataFrame, epoch: float) -> tuple[float, float, bool] | None:
    """(mean over runs of the test error at each run's evaluation nearest the paper's ``epoch``,
    the paper epoch read, whether every run got that far: within 5 % of it); None without rows."""
    if err.empty:
        return None
    vals, where, reached = [], [], True
    for _, run in by_run(err):
        row = run.loc[(run["pe"] - epoch).abs().idxmin()]
        reached &= bool(run["pe"].max() >= epoch * 0.95)
        vals.append(float(row["value"]))
        where.append(float(row["pe"]))
    return float(np.mean(vals)), float(np.mean(where)), reached


def at_step(rows: pd.DataFrame, step: int) -> tuple[float, int, bool] | None:
    """(mean over runs of ``value`` at each run's evaluation nearest optimiser step ``step``, the
    step read, whether every run got that far); None without rows."""
    rows = rows[rows["iteration"] > 0]
    if rows.empty:
        return None
    vals, where, reached = [], [], True
    for _, run in by_run(rows):
        row = run.loc[(run["iteration"] - step).abs().idxmin()]
        reached &= bool(run["iteration"].max() >= step)
        vals.append(float(row["value"]))
        where.append(int(row["iteration"]))
    return float(np.mean(vals)), int(round(np.mean(where))), reached


def epochs_text(pe: float) -> str:
    """``epoch 6.7`` of the paper (60,000 images each)."""
    return f"the paper's epoch {pe:.3g}"


# -- the paper's statements about learning, as checks --------------------------------------------
def _name(select: dict) -> str:
    if select.get("series") is not None:
        return str(select["series"])
    opt, sigma = select.get("optimizer"), select.get("init_sigma")
    name = {"sgd": "SGD", "adam": "Adam", "enkf": "EnKF"}.get(opt, opt or "the run")
    return f"{name} sigma={float(sigma):g}" if sigma is not None else name


def _reach(ls: list[Learning]) -> str:
    return "the run" + ("s end" if len(ls) > 1 else " ends") + " at " + \
        "/".join(f"{epochs_text(x.ends)}" for x in ls)


def _firsts(ls: list[Learning]) -> str:
    return "; ".join(f"first sustained at {epochs_text(x.at)} (it {x.iteration})" if x.at is not None
                     else f"never (lowest {x.best:.1f} %" + (f", {x.dips} dip(s) below {LEARNED:g} % that did not last"
                                                               if x.dips else "") + ")" for x in ls)


def check_learning(select: dict, until: float, learns: bool, rows=None):
    """"Learns" (``learns``) or "does not learn" within the paper's first ``until`` epochs:
    sustained learning that starts by then, or none (``rows(df, cfg)`` picks the test-error rows;
    default: ``errors(df, **select)``). Decided once the runs reach ``until`` or, before, once one
    of them has learned."""
    def check(df, cfg):
        err = rows(df, cfg) if rows else errors(df, **select)
        ls = learning(err, until)
        if not ls:
            return f"no test-error rows of {_name(select)}", None
        text = f"{_name(select)} up to {epochs_text(until)}: {_firsts(ls)}; {_reach(ls)}"
        learned = [x.at is not None for x in ls]
        if (all(learned) if learns else any(learned)):
            return text, learns
        if all(x.ends >= until * 0.95 for x in ls):
            return text, not learns
        return text + " (not decided: the run does not reach that point)", None

    return check


def check_no_learning(select: dict, until: float, rows=None):
    return check_learning(select, until, False, rows)


def check_learns_by(select: dict, until: float, rows=None):
    return check_learning(select, until, True, rows)


def check_accuracy_within(select: dict, until: float, accuracy: float):
    """"Passes ``accuracy`` % test accuracy within ``until`` epochs": some evaluation up to the
    paper's epoch ``until`` above it (every run)."""
    def check(df, cfg):
        err = errors(df, **select)
        if err.empty:
            return f"no test-error rows of {_name(select)}", None
        best, ends = [], []
        for _, run in by_run(err):
            upto = run[(run["iteration"] > 0) & (run["pe"] <= until + 1e-9)]
            best.append(100.0 - float(upto["value"].min()) if not upto.empty else float("nan"))
            ends.append(float(run["pe"].max()))
        text = (f"{_name(select)}: best test accuracy up to {epochs_text(until)} "
                + "/".join(f"{b:.2f} %" for b in best) + f" (needs > {accuracy:g} %); "
                + "/".join(epochs_text(e) for e in ends) + " reached")
        if all(b > accuracy for b in best):
            return text, True
        if all(e >= until * 0.95 for e in ends):
            return text, False
        return text + " (not decided: the run does not reach that point)", None

    return check


def check_learns_late(select: dict, after: float, until: float):
    """"Learns only late": no sustained learning before the paper's epoch ``after``, and sustained
    learning by its epoch ``until``."""
    def check(df, cfg):
        err = errors(df, **select)
        ls = learning(err, until)
        if not ls:
            return f"no test-error rows of {_name(select)}", None
        text = (f"{_name(select)}: {_firsts(ls)}; needs to start after {epochs_text(after)} and by "
                f"{epochs_text(until)}; {_reach(ls)}")
        if any(x.at is not None and x.at < after for x in ls):
            return text, False
        if all(x.at is not None for x in ls):
            return text, True
        if all(x.ends >= until * 0.95 for x in ls):
            return text, False
        return text + " (not decided: the run does not reach that point)", None

    return check


def check_learns_sooner(fast: dict, slow: dict, until: float):
    """Sustained learning starts sooner (in the paper's epochs) with ``fast`` than with ``slow``;
    a run that never learns within ``until`` counts as later than any that does."""
    def check(df, cfg):
        a, b = learning(errors(df, **fast), until), learning(errors(df, **slow), until)
        if not a or not b:
            return f"needs both {_name(fast)} and {_name(slow)}", None
        text = f"{_name(fast)}: {_firsts(a)}; {_name(slow)}: {_firsts(b)}"
        inf = float("inf")
        ta = np.mean([x.at if x.at is not None else inf for x in a])
        tb = np.mean([x.at if x.at is not None else inf for x in b])
        if ta == inf and tb == inf:
            reached = all(x.ends >= until * 0.95 for x in a + b)
            return text + ("" if reached else " (not decided: neither learned and the runs end early)"), \
                (False if reached else None)
        return text, bool(ta < tb)

    return check


# -- the paper's numbers about the test error, as measures ---------------------------------------
def measure_error_at(select: dict, epoch: float, accuracy: bool = False):
    """A measure: the test error (or accuracy, %) at the paper's ``epoch``; not read beyond a run."""
    def f(df, cfg):
        got = at_paper_epoch(errors(df, **select), epoch)
        if got is None:
            return None
        value, pe, reached = got
        if not reached:
            return None, f"not reached: the run ends at {epochs_text(errors(df, **select)['pe'].max())}"
        return (100.0 - value if accuracy else value), f"at {epochs_text(pe)}"

    return f


def measure_first_learning(select: dict, until: float, threshold: float = LEARNED):
    """A measure: the paper's epoch at which the test error falls below ``threshold`` for SUSTAIN
    consecutive evaluations (by default: sustained learning starts), mean over the runs that do."""
    def f(df, cfg):
        ls = learning(errors(df, **select), until, threshold)
        if not ls:
            return None
        got = [x for x in ls if x.at is not None]
        if not got:
            return None, f"never within {epochs_text(min(until, max(x.ends for x in ls)))}"
        rule = LEARNS if threshold == LEARNED else f"test error < {threshold:g} % at {SUSTAIN} consecutive evaluations"
        return float(np.mean([x.at for x in got])), f"{rule}; step {got[0].iteration}"

    return f


def measure_best_accuracy(select: dict, until: float):
    """A measure: the best test accuracy (%) within the paper's first ``until`` epochs."""
    def f(df, cfg):
        err = errors(df, **select)
        err = err[err["pe"] <= until + 1e-9]
        if err.empty:
            return None
        best = err.groupby("run_dir")["value"].min()
        row = err.loc[err.groupby("run_dir")["value"].idxmin()]
        return float(100.0 - best.mean()), "at " + ", ".join(epochs_text(p) for p in row["pe"])

    return f


def error_after(d: pd.DataFrame, *, steps: int | None = None, epochs: float | None = None, label: str = ""):
    """The test error (mean over runs) after ``steps`` iterations or after the paper's ``epochs``:
    ``(value, where read)``, ``(None, why)`` when a run ends before, None without rows."""
    d = d[d["iteration"] > 0]
    if d.empty:
        return None
    tail = f", {label}" if label else ""
    if steps is not None:
        value, step, reached = at_step(d, steps)
        if not reached:
            return None, f"not reached: the run ends at iteration {int(d['iteration'].max())}"
        return value, f"it {step}{tail}"
    d = d.assign(pe=paper_epochs(d))
    value, pe, reached = at_paper_epoch(d, float(epochs))
    if not reached:
        return None, f"not reached: the run ends at {epochs_text(d['pe'].max())}"
    return value, f"it {int(d.loc[(d['pe'] - pe).abs().idxmin(), 'iteration'])} = {epochs_text(pe)}{tail}"


def diagnose_learning(select: dict, until: float):
    """Why a run did not learn as the paper says: its best test error and when, where it ended,
    and whether its final test loss is ln 10 (the softmax outputs no longer depend on the input:
    a network that has stopped carrying information, with no numerical failure)."""
    def diagnose(df, cfg):
        err = errors(df, **select)
        if err.empty:
            return None
        loss = metric(df, "test_loss")
        for k, v in select.items():
            if v is not None:
                loss = loss[loss[k].astype(str) == str(v)]
        parts = []
        for run_dir, run in by_run(err[err["pe"] <= until + 1e-9]):
            best = run.loc[run["value"].idxmin()]
            last = run.iloc[-1]
            text = (f"{_name(select)}: best test error {best['value']:.1f} % at {epochs_text(best['pe'])} (step "
                    f"{int(best['iteration'])}), {last['value']:.1f} % at {epochs_text(last['pe'])}")
            for threshold in (LEARNED, 50.0):
                (got,) = learning(run, until, threshold)
                if got.at is not None:
                    text += f"; below {threshold:g} % to stay from {epochs_text(got.at)}"
            lrun = loss[loss["run_dir"] == run_dir].sort_values("iteration")
            if not lrun.empty:
                final = float(lrun["value"].iloc[-1])
                text += f", final test loss {final:.4f}"
                if abs(final - np.log(10)) < 0.01:
                    text += " = ln 10 to 0.01: the outputs no longer depend on the input"
            parts.append(text)
        return "; ".join(parts) or None

    return diagnose


def diagnose_runs_that_learn(select: dict, until: float, rows=None):
    """Why "does not learn" fails over several seeds: which runs learned (their seed, when, and
    their test error at the end), the range the others ended in, and the mean over all of them at
    the end (the number a curve of the mean shows)."""
    def diagnose(df, cfg):
        err = rows(df, cfg) if rows else errors(df, **select)
        if err.empty:
            return None
        learned, stayed, ends = [], [], []
        for _, run in by_run(err[err["pe"] <= until + 1e-9]):
            (got,) = learning(run, until) or (None,)
            if got is None:
                continue
            end = float(run["value"].iloc[-1])
            ends.append(end)
            seed = run["seed"].iloc[0] if "seed" in run else "?"
            if got.at is not None:
                learned.append(f"seed {seed} from {epochs_text(got.at)} (step {got.iteration}), {end:.2f} % at the end")
            else:
                stayed.append(end)
        if not learned:
            return None
        text = f"{_name(select)}: {len(learned)} of {len(ends)} runs learn: " + "; ".join(learned)
        if stayed:
            text += (f"; the other {len(stayed)} end at {min(stayed):.2f}-{max(stayed):.2f} % (chance: 90 %)")
        return text + f"; mean over the {len(ends)} runs at the end {sum(ends) / len(ends):.2f} %"

    return diagnose

