"""What a figure is: the runs it needs (variants x seeds) and how it draws them.

A figure module declares its settings (a :class:`~enkf_repro.config.schema.FigureSettings`
subclass: the values it sweeps, its drawing choices), ``variants(cfg, settings) -> [Variant]``
from the settings of the config's scale, a ``plot(df, cfg) -> matplotlib Figure`` over the tidy
rows of its runs, the paper's numbers and claims, and registers a :class:`Figure`. A variant is
data: the config groups it switches (``{"optimizer": "adam"}``) and the values it sets
(``{"model.activation": "relu"}``), merged onto the figure's composed config; the user's
command-line overrides win over both. Variants whose configs come out identical run once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..config.schema import FIGURE_SETTINGS, FigureSettings, name_of
from ..errors import ConfigError


@dataclass(frozen=True)
class Variant:
    series: str                            # short label without spaces, used in run folder names
    values: Mapping[str, Any] = field(default_factory=dict)   # dotted config keys -> values
    groups: Mapping[str, str] = field(default_factory=dict)   # config group -> option
    # the series whose run (the same seed) this one starts from: its final optimizer state
    # (``optimizer.state_from``, set by the planner to that run's id); it is planned first
    state_from: str | None = None


@dataclass(frozen=True)
class PaperNumber:
    """A number the paper (or a related work) reports, and how to read the same quantity off our
    runs, in the paper's unit (``paper_units.py``)."""

    quantity: str                      # e.g. "test error (%) after 500 iterations, logistic J=5000"
    paper: float | str
    measure: Callable | None = None    # (df, cfg) -> float | (float, where read) | None


@dataclass(frozen=True)
class Claim:
    """A finding of the paper (or of the related work) as a check on any run's rows.

    ``sentence``: what the paper says (its words in quotes where they are known);
    ``text``: what is checked; ``unit``: the unit the statement is read in (optimiser steps, the
    paper's epochs of 60,000 images, images seen); ``threshold``: the number that decides.
    ``check(df, cfg)`` returns ``(evidence, holds)``: one line of what the runs show (the numbers
    it rests on, with where they were read) and True / False, or None when these runs cannot
    decide it (a series missing, a run that does not reach the point the statement speaks of:
    the evidence then says how far it got). ``diagnose(df, cfg)``, when given, says what the
    runs show about why the claim does not hold (a measured mechanism), for the report.
    """

    text: str
    check: Callable   # (df, cfg) -> (str, bool | None)
    sentence: str = ""
    unit: str = ""
    threshold: str = ""
    diagnose: Callable | None = None   # (df, cfg) -> str | None


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
    settings: type = FigureSettings   # the figure's settings dataclass (per scale)
    notes: str = ""                   # what the report says about the figure's settings, beside its runs

    def settings_of(self, cfg) -> Any:
        """The figure's typed settings at ``cfg``'s scale (an instance of ``self.settings``)."""
        from omegaconf import OmegaConf

        scale = name_of(cfg.scale.name)
        out = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(self.settings), cfg.figure[scale]))
        if out.seeds < 1:
            raise ConfigError(f"figure.{scale}.seeds", out.seeds, "an integer >= 1")
        return out

    def applicable(self, overrides: list[str]) -> list[str]:
        """``overrides`` without the ``figure.<scale>.<name>`` ones whose setting this figure does
        not have (a command for several figures, ``reproduce figures=2,8 figure.smoke.ensemble_size=6``,
        sets each figure's settings where it has them)."""
        import dataclasses

        from ..config.overrides import override_key

        names = {f.name for f in dataclasses.fields(self.settings)}
        out = []
        for o in overrides:
            parts = override_key(o).split(".")
            if len(parts) >= 3 and parts[0] == "figure" and parts[2] not in names:
                continue
            out.append(o)
        return out


FIGURES: dict[str, Figure] = {}


def register(fig: Figure) -> Figure:
    FIGURES[fig.id] = fig
    FIGURE_SETTINGS[fig.config] = fig.settings
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
