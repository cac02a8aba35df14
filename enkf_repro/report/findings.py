"""What a figure's runs show against the paper: its numbers measured, its claims judged, the
state of its runs. The figure modules hold the paper's numbers and claims as data
(``experiments/*.py``: ``PaperNumber``, ``Claim``); this module reads them off the runs' rows.
A measurement or check that fails is recorded with its error, never raised: one faulty figure
must not hide the others. Nothing is written here (``report/markdown.py`` writes REPORT.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
from omegaconf import DictConfig

from ..config.schema import name_of
from ..experiments.base import Figure
from ..experiments.draw import differences_from_paper
from ..runs.folder import read_runs
from ..runs.runner import RunSpec


@dataclass(frozen=True)
class Measured:
    """A number the paper reports beside the same quantity read off these runs: ``value`` (None
    when there is none, ``note`` then says why) and ``context`` (where it was read: iteration,
    J, ...)."""

    quantity: str
    paper: float | str
    value: object | None = None
    context: str = ""
    note: str = ""


@dataclass(frozen=True)
class Judged:
    """A claim of the paper judged on these runs: the paper's statement, what is checked, in which
    unit and against which threshold, the evidence (one line), whether it holds (None: these runs
    cannot decide it) and, when it does not, what the runs show about why (``why``)."""

    claim: str
    evidence: str
    holds: bool | None
    sentence: str = ""
    unit: str = ""
    threshold: str = ""
    why: str | None = None


@dataclass(frozen=True)
class RunCounts:
    """The state of a figure's planned runs: how many, finished, diverged, their training time
    in seconds and the machines that trained them."""

    runs: int
    finished: int
    diverged: int
    seconds: float
    machines: tuple[str, ...] = ()


@dataclass
class FigureFindings:
    """Everything REPORT.md says about one figure. ``image``: the PNG's path relative to the
    report's folder (None when not plotted; ``not_plotted`` says why). ``tables``: the figure's
    tables (``Figure.tables``) as written beside it. ``differences``: what in these runs is not
    the paper's setting. ``stand_in``: the data that stood in for the paper's (None: the paper's
    data). ``runs``: None for a drawn figure."""

    figure: Figure
    measured: list[Measured] = field(default_factory=list)
    judged: list[Judged] = field(default_factory=list)
    image: str | None = None
    not_plotted: str | None = None
    tables: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    stand_in: str | None = None
    runs: RunCounts | None = None


def measure(fig: Figure, cfg: DictConfig, df: pd.DataFrame) -> list[Measured]:
    """Every ``PaperNumber`` of ``fig`` read off the rows ``df`` of its runs."""
    out = []
    for pn in fig.paper_numbers:
        if pn.measure is None:
            out.append(Measured(pn.quantity, pn.paper, note="qualitative: see the figure"))
            continue
        if df.empty:
            out.append(Measured(pn.quantity, pn.paper, note="no runs"))
            continue
        try:
            ours = pn.measure(df, cfg)
        except Exception as e:  # a measurement bug must not hide the report
            out.append(Measured(pn.quantity, pn.paper, note=f"not measured ({type(e).__name__}: {e})"))
            continue
        context = ""
        if isinstance(ours, tuple):  # (value, "where it was read: iteration, J, ...")
            ours, context = ours
        if ours is None:
            out.append(Measured(pn.quantity, pn.paper, note=context or "not in these runs"))
        else:
            out.append(Measured(pn.quantity, pn.paper, ours, context))
    return out


def judge(fig: Figure, cfg: DictConfig, df: pd.DataFrame) -> list[Judged]:
    """Every ``Claim`` of ``fig`` checked on the rows ``df`` of its runs."""
    out = []
    for claim in fig.claims:
        about = {"sentence": claim.sentence, "unit": claim.unit, "threshold": claim.threshold}
        if df.empty:
            out.append(Judged(claim.text, "no runs", None, **about))
            continue
        why = None
        try:
            evidence, holds = claim.check(df, cfg)
            holds = None if holds is None else bool(holds)
            if holds is False and claim.diagnose is not None:
                why = claim.diagnose(df, cfg)
        except Exception as e:  # a check bug must not hide the report
            evidence, holds = f"not checked ({type(e).__name__}: {e})", None
        out.append(Judged(claim.text, evidence, holds, why=why, **about))
    return out


def stand_in(cfgs: Iterable[DictConfig]) -> str | None:
    """Which stand-in for the paper's data runs of these configs used (None when it is the
    paper's data)."""
    names = set()
    for cfg in cfgs:
        d = cfg.dataset
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


def dataset_names(cfgs: Iterable[DictConfig]) -> list[str]:
    """The datasets of runs of these configs, a split of the test files named with its sizes."""
    return sorted({name_of(c.dataset.name) + (f" (t10k split {c.dataset.test_only_train_size}/"
                                              f"{10000 - c.dataset.test_only_train_size})"
                                              if c.dataset.test_only else "")
                   for c in cfgs})


def run_counts(specs: Sequence[RunSpec]) -> RunCounts:
    """How many of ``specs`` finished or diverged, their training time, the machines used."""
    states = [s.folder.state for s in specs]
    summaries = [s.folder.summary() for s in specs]
    return RunCounts(len(specs), states.count("finished"), states.count("diverged"),
                     sum(float(s.get("elapsed_s", 0.0)) for s in summaries),
                     tuple(sorted({m for s in summaries if (m := s.get("machine"))})))


def figure_findings(fig: Figure, cfg: DictConfig, specs: Sequence[RunSpec], plotted: list[Path] | Exception,
                    report_dir: Path) -> FigureFindings:
    """What REPORT.md (in ``report_dir``) says about ``fig``: ``cfg`` its composed config,
    ``specs`` its planned runs, ``plotted`` the PNG and PDF drawn (or why not). The numbers and
    claims use the finished runs only (a run cut short says nothing yet)."""
    rows = read_runs([s.dir for s in specs])
    rows = rows[rows["finished"]] if not rows.empty else rows
    out = FigureFindings(fig, measure(fig, cfg, rows), judge(fig, cfg, rows),
                         stand_in=stand_in(s.cfg for s in specs))
    if isinstance(plotted, Exception):
        out.not_plotted = str(plotted)
    else:
        png = next(p for p in plotted if p.suffix == ".png")
        out.image = png.relative_to(report_dir).as_posix()
        out.tables = [t.read_text().strip() for t in sorted(png.parent.glob("*.md"))]
    if specs:
        out.differences = differences_from_paper(specs[0].cfg, {name_of(s.cfg.dataset.name) for s in specs})
        out.runs = run_counts(specs)
    return out
