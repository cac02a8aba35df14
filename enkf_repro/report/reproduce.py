"""``reproduce``: run every figure's experiments, plot them, and write REPORT.md.

``reproduce(cfg, figures, out_dir)`` composes each figure's config once from ``cfg``'s overrides
and uses it to plan the figure's runs, to draw it and to read the paper's numbers and claims off
its runs. Finished runs are skipped (their folders are keyed by the resolved config), so a rerun
right after a finished one only re-plots and rewrites the report. Before starting it prints the
plan and a cost estimate at the rate measured on this machine (``dry_run`` prints the plan per
figure and stops); while it works, an overall progress line with an ETA weighted by each run's
FLOPs. Runs go figure by figure, the cheapest figure first, so that a ``time_budget`` (or a
SLURM time limit) that runs out leaves as many complete figures as possible: the running run
checkpoints, the report is written from what is finished, and a rerun continues. ``REPORT.md``
leads with the paper's claims judged on these runs, then tabulates, for every number the paper
(or a related work) reports, what this rerun got (``report/findings.py`` reads them off the runs,
``report/markdown.py`` writes them): those numbers live in the figure modules as data
(``experiments/*.py``, ``PaperNumber``, ``Claim``), not in prose.
"""

from __future__ import annotations

import datetime
import platform
import sys
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import DictConfig

from ..config.compose import compose
from ..config.overrides import override_key
from ..config.schema import name_of
from ..errors import ConfigError, WriteFailed
from ..experiments.base import FIGURES, Figure, figure_ids, get_figure
from ..runs import budget
from ..runs.cost import describe, device_rate, estimate_flops, estimate_seconds
from ..runs.folder import figure_dir
from ..runs.memory import estimate_memory
from ..runs.progress import duration
from ..runs.results import human_bytes, write_text_atomic
from ..runs.runner import RunSpec, check_runs, execute, plan
from .findings import dataset_names, figure_findings
from .markdown import report_markdown
from .render import plot_figure


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> str:
    """This machine as the report names it: the GPU, or the CPU and the system; with torch's version."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    return f"{describe(torch.device('cpu'))}, torch {torch.__version__}, {platform.system()}"


def command_line(overrides: Sequence[str], figures: Sequence[str] | None) -> str:
    """The ``enkf-repro reproduce`` command that does what a call with these overrides and figures
    does (``figures=`` after ``scale=``, or first)."""
    args = list(overrides)
    if figures:
        at = next((i + 1 for i, a in enumerate(args) if a.startswith("scale=")), 0)
        args.insert(at, "figures=" + ",".join(str(f) for f in figures))
    return " ".join(["enkf-repro reproduce", *args])


def _up_to_date_plot(cfg: DictConfig, fig: Figure, specs: list[RunSpec]) -> list[Path] | None:
    """The figure's PNG and PDF when they are newer than every CSV they draw (nothing to redo)."""
    stem = figure_dir(cfg.out_dir, name_of(cfg.scale.name), fig.config) / fig.config
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    if not specs or not all(p.exists() for p in paths):
        return None
    if not all(s.folder.done for s in specs):
        return None
    newest = max(s.folder.rows_mtime() for s in specs)
    return paths if min(p.stat().st_mtime for p in paths) >= newest else None


def reproduce_config(overrides: Sequence[str]) -> DictConfig:
    """The config :func:`reproduce` takes: ``overrides`` composed without a figure; the figures'
    own settings among them (``figure.<scale>.*``) stay in ``cfg.overrides``, for each figure
    that has them."""
    cfg = compose([o for o in overrides if override_key(o).split(".")[0] != "figure"])
    cfg.overrides = list(overrides)
    return cfg


def plan_text(rows: list[tuple[str, int, int, float, float, float]], device: str) -> str:
    """The plan of a dry run: per figure (id, runs, to do, FLOPs to do, estimated seconds on
    ``device``, the largest run's memory there), then the total."""
    lines = [f"figure | runs | to do | TFLOP to do | estimated on {device} | memory per run (largest)",
             "--- | --- | --- | --- | --- | ---"]
    total = ["total", 0, 0, 0.0, 0.0, 0.0]
    for r in rows:
        lines.append(f"{r[0]} | {r[1]} | {r[2]} | {r[3] / 1e12:.3g} | {duration(r[4])} | {human_bytes(r[5])}")
        total = ["total", total[1] + r[1], total[2] + r[2], total[3] + r[3], total[4] + r[4], max(total[5], r[5])]
    lines.append(f"total | {total[1]} | {total[2]} | {total[3] / 1e12:.3g} | {duration(total[4])} | "
                 f"{human_bytes(total[5])}")
    return "\n".join(lines)


def reproduce(cfg: DictConfig, figures: Sequence[str] | None = None, out_dir: str | Path | None = None, *,
              dry_run: bool = False, rate=None) -> Path:
    """Run (or resume, or skip) the runs of ``figures`` (ids such as ``["1", "8"]``; None or empty:
    every figure), plot each figure and write ``<out_dir>/<scale>/REPORT.md``; returns its path.

    ``cfg`` is a config composed without a figure (``compose(["scale=smoke",
    "dataset.test_only=true"])``): its scale, ``out_dir`` (or ``out_dir`` given here) and
    ``time_budget``, and its overrides (``cfg.overrides``), which every figure's config is
    composed with. ``dry_run``: print the plan and its cost per figure and stop (nothing is run
    or written; the path returned is where the report would go). The estimates are for
    ``cfg.device`` (``auto``: this machine's GPU if any, else its CPU) at ``rate`` FLOP/s (a
    number or ``"60T"``; default: the rate measured here), with each run's memory there."""
    if out_dir is not None:
        cfg = cfg.copy()
        cfg.out_dir = str(out_dir)
        cfg.overrides = [o for o in cfg.overrides if not o.startswith("out_dir=")] + [f"out_dir={out_dir}"]
    if str(cfg.figure.id) != "none":
        raise ConfigError("figure", str(cfg.figure.id), "reproduce takes figures=ID,ID,... (or nothing for all)")
    scale = name_of(cfg.scale.name)
    ids = [get_figure(f).id for f in figures] if figures else figure_ids()
    figs = [FIGURES[i] for i in ids]
    report = Path(cfg.out_dir) / scale / "REPORT.md"

    # each figure's config composed once, all planned first: a bad config or missing data fails
    # before any work
    configs = {fig.id: compose(fig.applicable(list(cfg.overrides)) + [f"figure={fig.config}"]) for fig in figs}
    plans = {fid: plan(fcfg) for fid, fcfg in configs.items()}
    for spec in (s for specs in plans.values() for s in specs):
        spec.cfg.progress = False
    check_runs((s for specs in plans.values() for s in specs), memory=not dry_run)
    all_specs = [s for fid in ids for s in plans[fid]]
    pending = [s for s in all_specs if not s.folder.done]
    flops = sum(estimate_flops(s.cfg) for s in pending)

    device = name_of(cfg.device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    flops_rate, source = device_rate(device, rate) if pending else (1.0, "")
    if flops_rate is None and not dry_run:   # weights of the ETA only: the probe of this machine's device
        flops_rate, source = device_rate("cuda" if torch.cuda.is_available() else "cpu")
    cost = {id(s): estimate_seconds(s.cfg, flops_rate, device) if flops_rate else float("nan") for s in pending}
    total = sum(cost.values())
    # whole figures first: the cheapest unfinished figure before the next, so a time budget that
    # runs out leaves as many complete figures as it can
    by_fig = {fid: sum(cost[id(s)] for s in pending if s.figure == fid) for fid in ids}
    pending.sort(key=lambda s: (by_fig[s.figure], ids.index(s.figure)))
    at = f"at {flops_rate / 1e9:.0f} GFLOP/s, {source}" if flops_rate else source
    todo = (f"to do {flops / 1e12:.3g} TFLOP, estimated {duration(total)} on {device} ({at})" if pending
            else "nothing to train: the report is written from the finished runs")
    _say(f"reproduce scale={scale}: {len(figs)} figures, {len(all_specs)} runs "
         f"({len(all_specs) - len(pending)} already finished); {todo}")
    if dry_run:
        rows = []
        for fig in figs:
            todo = [s for s in pending if s.figure == fig.id]
            rows.append((fig.id, len(plans[fig.id]), len(todo), sum(estimate_flops(s.cfg) for s in todo),
                         sum(cost[id(s)] for s in todo),
                         max((estimate_memory(s.cfg, device) for s in plans[fig.id]), default=0.0)))
        _say(plan_text(rows, device))
        return report

    # this call's deadline ends with it: a later reproduce in the same process (the library) starts its own
    started = budget.start(cfg.get("time_budget"))
    try:
        outcome = execute(pending, time_budget=cfg.get("time_budget"), weights=cost)
    finally:
        if started:
            budget.clear()

    sections = []
    for fig in figs:
        fcfg, specs = configs[fig.id], plans[fig.id]
        try:
            plotted = _up_to_date_plot(fcfg, fig, specs) or plot_figure(fcfg, cfg.overrides)
        except WriteFailed:   # a full disk stops here, with its one line
            raise
        except Exception as e:  # a figure without runs must not hide the others
            plotted = e
        sections.append(figure_findings(fig, fcfg, specs, plotted, report.parent))
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = report_markdown(scale, command_line(cfg.overrides, figures), stamp, machine(),
                           dataset_names(s.cfg for s in all_specs), sections)
    report.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(report, text)
    left = outcome.left
    _say(f"report: {report}" + (f" ({left} run{'s' if left != 1 else ''} left)" if left else ""))
    return report
