"""What a figure is: the runs it needs (variants x seeds) and how it draws them.

A figure module defines ``variants(cfg, settings) -> [Variant]`` from the figure's per-scale
settings (``cfg.figure.paper`` or ``cfg.figure.smoke``), a ``plot(df, cfg) -> matplotlib Figure``
over the tidy rows of its runs, and registers a :class:`Figure`. Each variant is a list of Hydra
overrides (group choices such as ``optimizer=sgd`` or values such as ``model.activation=relu``);
the planner composes one run config per variant and seed, with the user's command-line
overrides applied last (they win), and merges variants whose configs come out identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConfigError


@dataclass(frozen=True)
class Variant:
    series: str                       # short label without spaces, used in run folder names
    overrides: tuple[str, ...] = ()   # Hydra overrides that make this variant
    # the series whose run (the same seed) this one starts from: its final optimizer state
    # (``optimizer.state_from``, set by the planner to that run's id); it is planned first
    state_from: str | None = None


@dataclass(frozen=True)
class PaperNumber:
    """A number the paper (or a seed) reports, and how to read the same quantity off our runs."""

    quantity: str                      # e.g. "test error at it 500, logistic J=5000 (%)"
    paper: float | str
    measure: Callable | None = None    # (df, cfg) -> float | None


@dataclass(frozen=True)
class Claim:
    """A finding of the paper (or of the related work) as a check on any run's rows.

    ``check(df, cfg)`` returns ``(evidence, holds)``: one line of what the runs show (the numbers
    it rests on, with where they were read) and True / False, or None when these runs cannot
    decide it (a series missing, too few evaluations). Checks compare quantities within the run
    (one method against another, early against late), so they are meaningful at any scale.
    """

    text: str
    check: Callable   # (df, cfg) -> (str, bool | None)


@dataclass
class Figure:
    id: str                     # what users type: figure=8
    config: str                 # configs/figure/<config>.yaml
    title: str
    description: str            # one line for `enkf-repro list`
    variants: Callable          # (cfg, settings) -> list[Variant]
    plot: Callable | None       # (df, cfg) -> matplotlib.figure.Figure
    varies: tuple[str, ...] = ()           # config paths the figure compares across (besides seed)
    paper_numbers: tuple[PaperNumber, ...] = field(default_factory=tuple)
    claims: tuple[Claim, ...] = field(default_factory=tuple)
    needs_runs: bool = True     # False for drawn figures (Figure 2)
    tables: Callable | None = None  # (df, cfg) -> {file name: text} written beside the figure
    datasets: tuple[str, ...] = ("mnist",)   # the data the paper used for this figure
    # (run cfg, series) -> the run's label from its resolved config (``only=`` matches the series);
    # None: the series itself
    label: Callable | None = None


FIGURES: dict[str, Figure] = {}


def register(fig: Figure) -> Figure:
    FIGURES[fig.id] = fig
    return fig


def figure_ids() -> list[str]:
    def key(i: str):
        return (0, int(i), "") if i.isdigit() else (1, 0, i)

    return sorted(FIGURES, key=key)


def get_figure(fig_id: str) -> Figure:
    fig_id = str(fig_id)
    if fig_id.startswith("fig") and fig_id[3:] in FIGURES:
        fig_id = fig_id[3:]
    if fig_id not in FIGURES:
        raise ConfigError("figure", fig_id, "one of " + ", ".join(figure_ids()))
    return FIGURES[fig_id]
