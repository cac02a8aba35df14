"""The Markdown the package writes, from data computed elsewhere: REPORT.md
(``report/findings.py``), the table of ``compare`` (``report/comparison.py``) and the plan of a
dry run of ``reproduce``. Pure functions of their arguments: nothing is read or measured here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from ..runs.progress import duration
from .comparison import Comparison
from .findings import FigureFindings
from .select import value_text

VERDICT = {True: "yes", False: "**no**", None: "not decided"}


def number(v) -> str:
    """A number as the report shows it (4 significant digits); text as it is; None empty."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    return f"{v:.4g}"


def _difference(paper, ours, note: str) -> str:
    if note:
        return note
    if isinstance(paper, (int, float)) and isinstance(ours, (int, float)):
        return f"{ours - paper:+.3g}"
    return "qualitative: see the figure"


def cell(text) -> str:
    """A Markdown table cell: its pipes escaped, on one line."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def report_markdown(scale: str, command: str, stamp: str, machine: str, datasets: Sequence[str],
                    figures: Sequence[FigureFindings]) -> str:
    """REPORT.md: the paper's claims judged on these runs, the paper's numbers beside ours, then
    one section per figure. ``command`` made the report on ``stamp`` (date and time) on
    ``machine``; ``datasets`` the data every run used."""
    lines = [f"# enkf-repro report ({scale} scale)", "",
             f"Produced by `{command.strip()}` on {stamp}, {machine}.", ""]
    if scale == "smoke":
        lines += ["**Smoke scale**: the paper's protocol with smaller ensembles, fewer batches, a test subset "
                  "and fewer seeds, so every figure runs in minutes on a CPU. The numbers show the effects, "
                  "not the paper's values: expect larger errors than the paper reports.", ""]
    if datasets:
        lines += [f"Datasets used: {', '.join(datasets)}.", ""]
    verdicts = [(f.figure.id, j) for f in figures for j in f.judged]
    held = sum(j.holds is True for _, j in verdicts)
    failed = sum(j.holds is False for _, j in verdicts)
    lines += ["## The paper's claims, judged on this run", "",
              f"{held} hold, {failed} do not, {len(verdicts) - held - failed} not decided by these runs. Each claim "
              "is read in the unit the paper states it in (optimiser steps, the paper's epochs of 60,000 images, "
              "images seen); a run that does not reach the point a claim speaks of leaves it not decided and says "
              "how far it got.", "",
              "| figure | the paper | checked here | unit | threshold | evidence in this run | holds? |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(cell(c) for c in (fid, j.sentence, j.claim, j.unit, j.threshold, j.evidence,
                                                  VERDICT[j.holds])) + " |" for fid, j in verdicts]
    whys = [(fid, j) for fid, j in verdicts if j.holds is False and j.why]
    if whys:
        lines += ["", "What the runs show where a claim does not hold:", ""]
        lines += [f"- Figure {fid}, {j.claim}: {j.why}." for fid, j in whys]
    lines += ["", "## Paper versus this run", "",
              "| figure | quantity | paper reports | this run | difference |", "| --- | --- | --- | --- | --- |"]
    for f in figures:
        for m in f.measured:
            if m.value is None:
                shown = f"- ({m.note})"
            else:
                shown = number(m.value) + (f" ({m.context})" if m.context else "")
            if scale == "smoke" and m.value is not None and isinstance(m.paper, (int, float)):
                diff = "smoke: not comparable"
            else:
                diff = _difference(m.paper, m.value, m.note)
                if f.stand_in and m.value is not None:
                    diff += f"; on {f.stand_in}"
            cells = (f.figure.id, m.quantity, number(m.paper), shown, diff)
            lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    lines.append("")
    for f in figures:
        fig = f.figure
        lines += [f"## Figure {fig.id}: {fig.title}", "", fig.description, ""]
        if fig.notes:
            lines += [fig.notes, ""]
        if f.differences:
            lines += ["Not the paper's setting: " + "; ".join(f.differences) + ".", ""]
        if f.image is None:
            lines += [f"*Not plotted: {f.not_plotted}*", ""]
        else:
            lines += [f"![Figure {fig.id}]({f.image})", ""]
            for table in f.tables:
                lines += [table, ""]
        if f.runs is not None:
            r = f.runs
            where = f" on {' and '.join(r.machines)}" if r.machines else ""
            counts = f"{r.finished} finished" + (f", {r.diverged} diverged" if r.diverged else "")
            partial = " The claims and numbers above use the finished runs only." if r.finished < r.runs else ""
            lines += [f"{r.runs} runs ({counts}), {r.seconds / 60:.1f} min of training in total{where}.{partial} "
                      f"Rerun: `enkf-repro run figure={fig.id} scale={scale}` (plus the overrides above).", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class PlannedFigure:
    """A figure's line in the plan of a dry run: its runs, those left to do, their FLOPs and
    estimated seconds."""

    figure: str
    runs: int
    to_do: int
    flops: float
    seconds: float


def plan_table(rows: Sequence[PlannedFigure]) -> str:
    """The plan of a dry run: per figure its runs, what is left, FLOPs and estimated time."""
    lines = ["figure | runs | to do | TFLOP to do | estimated", "--- | --- | --- | --- | ---"]
    lines += [f"{r.figure} | {r.runs} | {r.to_do} | {r.flops / 1e12:.3g} | {duration(r.seconds)}" for r in rows]
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return "nan" if pd.isna(x) else f"{x:.4g}"


def comparison_markdown(c: Comparison) -> str:
    """The table ``compare`` writes and prints: per group the mean and std of each run's last
    value, the runs, how many finished and the last iteration, then the notes."""
    table = c.table
    runs, done = int(table["runs"].sum()), int(table["finished"].sum())
    where = c.where_text
    head = (f"{c.metric} at each run's last logged iteration: mean and std (ddof=0) over the runs of each "
            f"group; {runs} runs ({done} finished) under {c.root}" + (f", where {where}" if where else ""))
    cols = c.by + ["mean", "std", "runs", "finished", "last iteration"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for _, r in table.iterrows():
        it = (str(r["last_iteration"]) if r["last_iteration"] == r["last_iteration_min"]
              else f"{r['last_iteration_min']}-{r['last_iteration']}")
        cells = [value_text(r[k]) for k in c.by] + [_fmt(r["final_mean"]), _fmt(r["final_std"]),
                                                   str(r["runs"]), str(r["finished"]), it]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"Note: {n}; add a key to by= or where= to separate them." for n in c.notes]
    return "\n".join(lines).rstrip() + "\n"

