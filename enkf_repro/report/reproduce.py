"""``enkf-repro reproduce``: run every figure's experiments, plot them, and write REPORT.md.

    enkf-repro reproduce [scale=smoke|paper] [figures=1,8,...] [out_dir=DIR] [time_budget=8m]
                         [dry_run=true] [overrides...]

Finished runs are skipped (their folders are keyed by the resolved config), so a rerun right
after a finished one only re-plots and rewrites the report. Before starting it prints the plan
and a cost estimate at the rate measured on this machine (``dry_run=true`` prints the plan per
figure and stops); while it works, an overall progress line with an ETA weighted by each run's
FLOPs. Runs go figure by figure, the cheapest figure first, so that a ``time_budget`` (or a
SLURM time limit) that runs out leaves as many complete figures as possible: the running run
checkpoints, the report is written from what is finished, and a rerun continues. ``REPORT.md``
leads with the paper's claims judged on these runs, then tabulates, for every number the paper
(or a related work) reports, what this rerun got: those numbers live in the figure modules as
data (``experiments/*.py``, ``PaperNumber``, ``Claim``), not in prose.
"""

from __future__ import annotations

import datetime
import math
import platform
import sys
from pathlib import Path

import torch

from ..config.compose import compose
from ..config.overrides import normalize_figure_args, override_key, split_flags
from ..config.schema import name_of
from ..errors import ConfigError
from ..experiments.base import FIGURES, figure_ids, get_figure
from ..experiments.draw import differences_from_paper
from ..runs.cost import describe, estimate_flops, estimate_seconds, measured_rate
from ..runs.folder import figure_dir, read_runs
from ..runs.progress import duration
from ..runs.results import write_text_atomic
from ..runs.runner import check_runs, execute, plan
from .render import plot_figure


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(args: list[str]) -> tuple[str, list[str] | None, list[str], bool]:
    scale, figures, rest, dry = "paper", None, [], False
    for a in args:
        key, _, value = a.partition("=")
        if key == "dry_run":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ConfigError("dry_run", value, "true or false")
            dry = value.lower() in ("true", "1")
        elif key == "scale":
            scale = value
            rest.append(a)
        elif key == "figures":
            figures = [f.strip() for f in value.replace("[", "").replace("]", "").split(",") if f.strip()]
        elif key.lstrip("+") == "figure":
            raise ConfigError("figure", value, "reproduce takes figures=ID,ID,... (or nothing for all)")
        else:
            rest.append(a)
    if scale not in ("paper", "smoke"):
        raise ConfigError("scale", scale, "paper or smoke")
    if not any(a.startswith("scale=") for a in rest):
        rest.append(f"scale={scale}")
    return scale, figures, rest, dry


def _fmt_number(v) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    return f"{v:.4g}"


def _machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    return f"{describe(torch.device('cpu'))}, torch {torch.__version__}, {platform.system()}"


def reproduce_main(args: list[str]) -> int:
    _, overrides = split_flags(normalize_figure_args(args))
    scale, figures, overrides, dry_run = parse_args(overrides)
    ids = [get_figure(f).id for f in figures] if figures else figure_ids()
    figs = [FIGURES[i] for i in ids]

    # plan everything first: bad config or missing data fails before any work
    plans = {}
    for fig in figs:
        if not fig.needs_runs:
            plans[fig.id] = []
            continue
        cfg = compose(fig.applicable(overrides) + [f"figure={fig.config}"])
        specs = plan(cfg)
        for spec in specs:
            spec.cfg.progress = False
        plans[fig.id] = specs
    check_runs(s for specs in plans.values() for s in specs)
    all_specs = [s for fid in ids for s in plans[fid]]
    pending = [s for s in all_specs if not s.folder.done]
    flops = sum(estimate_flops(s.cfg) for s in pending)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rate, source = measured_rate(device) if pending else (1.0, "")
    cost = {id(s): estimate_seconds(s.cfg, rate, device.type) for s in pending}   # ETA weights
    total = sum(cost.values())
    # whole figures first: the cheapest unfinished figure before the next, so a time budget that
    # runs out leaves as many complete figures as it can
    by_fig = {fid: sum(cost[id(s)] for s in pending if s.figure == fid) for fid in ids}
    pending.sort(key=lambda s: (by_fig[s.figure], ids.index(s.figure)))
    _say(f"reproduce scale={scale}: {len(figs)} figures, {len(all_specs)} runs "
         f"({len(all_specs) - len(pending)} already finished); to do {flops / 1e12:.3g} TFLOP, "
         f"estimated {duration(total)} on {device.type} (at {rate / 1e9:.0f} GFLOP/s, {source})")
    if dry_run:
        _say(plan_table(figs, plans, pending, cost))
        return 0

    common = compose([o for o in overrides if override_key(o).split(".")[0] != "figure"])   # no figure's settings
    outcome = execute(pending, time_budget=common.get("time_budget"), weights=cost)
    left = outcome.left

    plotted, measured, judged = {}, {}, {}
    for fig in figs:
        cfg = compose(fig.applicable(overrides) + [f"figure={fig.config}"])
        current = _up_to_date_plot(cfg, fig, plans[fig.id])
        try:
            plotted[fig.id] = current or plot_figure(cfg, overrides)
        except Exception as e:  # a figure without runs must not hide the others
            plotted[fig.id] = e
        rows = _rows(plans[fig.id])
        rows = rows[rows["finished"]] if not rows.empty else rows   # a run cut short says nothing yet
        measured[fig.id] = _measure(fig, cfg, plans[fig.id], rows)
        judged[fig.id] = _judge(fig, cfg, rows)
    out = Path(common.out_dir) / scale
    report = write_report(out, scale, figs, plans, plotted, measured, judged, args)
    _say(f"report: {report}" + (f" ({left} runs left)" if left else ""))
    return 0


def plan_table(figs, plans, pending, cost) -> str:
    """The plan of a dry run: per figure its runs, what is left, FLOPs and estimated time."""
    lines = ["figure | runs | to do | TFLOP to do | estimated", "--- | --- | --- | --- | ---"]
    for fig in figs:
        todo = [s for s in pending if s.figure == fig.id]
        tflop = sum(estimate_flops(s.cfg) for s in todo) / 1e12
        secs = sum(cost[id(s)] for s in todo)
        lines.append(f"{fig.id} | {len(plans[fig.id])} | {len(todo)} | {tflop:.3g} | {duration(secs)}")
    return "\n".join(lines)


def _up_to_date_plot(cfg, fig, specs) -> list[Path] | None:
    """The figure's PNG and PDF when they are newer than every CSV they draw (nothing to redo)."""
    stem = figure_dir(cfg.out_dir, name_of(cfg.scale.name), fig.config) / fig.config
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    if not specs or not all(p.exists() for p in paths):
        return None
    if not all(s.folder.done for s in specs):
        return None
    newest = max(s.folder.rows_mtime() for s in specs)
    return paths if min(p.stat().st_mtime for p in paths) >= newest else None


def _rows(specs):
    """The tidy rows of the planned runs (those that have rows), with ``run_dir`` and ``finished``."""
    return read_runs([s.dir for s in specs])


def _judge(fig, cfg, df) -> list[tuple[str, str, bool | None]]:
    """(claim, evidence, holds) for every Claim of the figure; a failing check is reported, not raised."""
    out = []
    for claim in fig.claims:
        if df.empty:
            out.append((claim.text, "no runs", None))
            continue
        try:
            evidence, holds = claim.check(df, cfg)
            holds = None if holds is None else bool(holds)
        except Exception as e:  # a check bug must not hide the report
            evidence, holds = f"not checked ({type(e).__name__}: {e})", None
        out.append((claim.text, evidence, holds))
    return out


VERDICT = {True: "yes", False: "**no**", None: "not decided"}


def proxy(specs) -> str | None:
    """Which stand-in for the paper's data the runs used (None when it is the paper's data)."""
    names = set()
    for s in specs:
        d = s.cfg.dataset
        name = name_of(d.name)
        if name == "mnist" and not d.test_only:
            continue
        if name == "mnist":
            names.add(f"MNIST-10k ({d.test_only_train_size} / {10000 - d.test_only_train_size} of the official "
                      f"test split)")
        elif name == "notmnist":
            names.add("letters-10k (a 10,000-image notMNIST sample; the paper used 60,000 of notMNIST_large)"
                      if d.test_only else "notMNIST")
        else:
            names.add("Fashion-MNIST (the paper used MNIST)")
    return "; ".join(sorted(names)) or None


def _measure(fig, cfg, specs, df=None) -> list[tuple[str, object, object, str]]:
    """(quantity, paper, ours, note) for every PaperNumber of the figure."""
    df = _rows(specs) if df is None else df
    rows = []
    for pn in fig.paper_numbers:
        if pn.measure is None:
            rows.append((pn.quantity, pn.paper, None, "qualitative: see the figure"))
            continue
        if df.empty:
            rows.append((pn.quantity, pn.paper, None, "no runs"))
            continue
        try:
            ours = pn.measure(df, cfg)
        except Exception as e:  # a measurement bug must not hide the report
            rows.append((pn.quantity, pn.paper, None, f"not measured ({type(e).__name__}: {e})"))
            continue
        context = ""
        if isinstance(ours, tuple):  # (value, "where it was read: iteration, J, ...")
            ours, context = ours
        rows.append((pn.quantity, pn.paper, (ours, context) if ours is not None else None,
                     "" if ours is not None else "not in these runs"))
    return rows


def _difference(paper, ours, note: str) -> str:
    if note:
        return note
    if isinstance(paper, (int, float)) and isinstance(ours, (int, float)):
        return f"{ours - paper:+.3g}"
    return "qualitative: see the figure"


def write_report(out: Path, scale: str, figs, plans, plotted, measured, judged, args) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    command = "enkf-repro reproduce " + " ".join(args)
    lines = [f"# enkf-repro report ({scale} scale)", "",
             f"Produced by `{command.strip()}` on {stamp}, {_machine()}.", ""]
    if scale == "smoke":
        lines += ["**Smoke scale**: the paper's protocol with smaller ensembles, fewer batches, a test subset "
                  "and fewer seeds, so every figure runs in minutes on a CPU. The numbers show the effects, "
                  "not the paper's values: expect larger errors than the paper reports.", ""]
    datasets = sorted({name_of(s.cfg.dataset.name) + (f" (t10k split {s.cfg.dataset.test_only_train_size}/"
                                                      f"{10000 - s.cfg.dataset.test_only_train_size})"
                                                      if s.cfg.dataset.test_only else "")
                       for specs in plans.values() for s in specs})
    if datasets:
        lines += [f"Datasets used: {', '.join(datasets)}.", ""]
    verdicts = [(fig.id, *row) for fig in figs for row in judged[fig.id]]
    held = sum(v is True for *_, v in verdicts)
    failed = sum(v is False for *_, v in verdicts)
    lines += ["## The paper's claims, judged on this run", "",
              f"{held} hold, {failed} do not, {len(verdicts) - held - failed} not decided by these runs. Each check "
              "compares quantities within this run (method against method, early against late), so it means "
              "something at any scale.", "",
              "| figure | claim | evidence in this run | holds? |", "| --- | --- | --- | --- |"]
    lines += [f"| {fid} | {text} | {evidence} | {VERDICT[holds]} |" for fid, text, evidence, holds in verdicts]
    lines += ["", "## Paper versus this run", "",
              "| figure | quantity | paper reports | this run | difference |", "| --- | --- | --- | --- | --- |"]
    for fig in figs:
        stand_in = proxy(plans[fig.id])
        for quantity, paper, ours, note in measured[fig.id]:
            if ours is None:
                shown, value = f"- ({note})", None
            else:
                value, context = ours
                shown = _fmt_number(value) + (f" ({context})" if context else "")
            if scale == "smoke" and value is not None and isinstance(paper, (int, float)):
                diff = "smoke: not comparable"
            else:
                diff = _difference(paper, value, note)
                if stand_in and value is not None:
                    diff += f"; on {stand_in}"
            lines.append(f"| {fig.id} | {quantity} | {_fmt_number(paper)} | {shown} | {diff} |")
    lines.append("")
    for fig in figs:
        lines += [f"## Figure {fig.id}: {fig.title}", "", fig.description, ""]
        specs = plans[fig.id]
        if specs:
            diffs = differences_from_paper(specs[0].cfg, {name_of(s.cfg.dataset.name) for s in specs})
            if diffs:
                lines += ["Not the paper's setting: " + "; ".join(diffs) + ".", ""]
        p = plotted[fig.id]
        if isinstance(p, Exception):
            lines += [f"*Not plotted: {p}*", ""]
        else:
            png = next(x for x in p if x.suffix == ".png")
            lines += [f"![Figure {fig.id}]({png.relative_to(out).as_posix()})", ""]
            for table in sorted(png.parent.glob("*.md")):   # the figure's tables (Figure.tables), as written
                lines += [table.read_text().strip(), ""]
        specs = plans[fig.id]
        if specs:
            states = [s.folder.state for s in specs]
            done, diverged = states.count("finished"), states.count("diverged")
            secs = sum(_elapsed(s) for s in specs)
            machines = sorted({m for s in specs if (m := _summary(s).get("machine"))})
            where = f" on {' and '.join(machines)}" if machines else ""
            counts = f"{done} finished" + (f", {diverged} diverged" if diverged else "")
            partial = " The claims and numbers above use the finished runs only." if done < len(specs) else ""
            lines += [f"{len(specs)} runs ({counts}), {secs / 60:.1f} min of training in total{where}.{partial} "
                      f"Rerun: `enkf-repro run figure={fig.id} scale={scale}` (plus the overrides above).", ""]
    path = out / "REPORT.md"
    write_text_atomic(path, "\n".join(lines))
    return path


def _summary(spec) -> dict:
    return spec.folder.summary()


def _elapsed(spec) -> float:
    return float(_summary(spec).get("elapsed_s", 0.0))
