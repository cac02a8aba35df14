"""``plot``: a figure drawn from the CSVs of its runs, as ``<fig>.png`` and ``<fig>.pdf``.

``plot_figure(cfg, overrides)`` reads every run under the figure's folder (finished or still
going), keeps those matching ``overrides`` (``report/select.py``: ``dataset=fashion_mnist`` keeps
the Fashion-MNIST runs; of several configurations the most recently written), and draws them with
the figure module's ``plot``, writing its tables (``Figure.tables``) beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd
from omegaconf import DictConfig

from ..config.schema import name_of
from ..errors import EnkfReproError
from ..experiments.base import get_figure
from ..experiments.draw import save, use_style
from ..runs.folder import figure_dir, read_runs
from ..runs.results import write_text_atomic
from .select import select_runs


def plot_figure(cfg: DictConfig, overrides: Iterable[str] = ()) -> list[Path]:
    """Draw the figure of the composed config ``cfg`` (``compose(["figure=8", "scale=smoke"])``)
    from the runs under its folder (``<out_dir>/<scale>/<fig>``) that match ``overrides``
    (override strings; a sweep ``a=1,2`` keeps the runs with any of the values); returns the PNG
    and PDF paths. No runs, or none matching, is a one-line error."""
    overrides = list(overrides)
    fig = get_figure(str(cfg.figure.id))
    out = figure_dir(cfg.out_dir, name_of(cfg.scale.name), fig.config)
    use_style()
    if not fig.needs_runs:
        return save(fig.plot(pd.DataFrame(), cfg), out / fig.config)
    df = read_runs(out)
    if df.empty:
        raise EnkfReproError(f"no runs of figure {fig.id} under {out}; run `enkf-repro run figure={fig.id} "
                             f"scale={name_of(cfg.scale.name)}` first")
    df = select_runs(df, fig, overrides)
    if df.empty:
        raise EnkfReproError(f"no runs of figure {fig.id} under {out} match {' '.join(overrides)}")
    if fig.tables is not None:
        for name, text in fig.tables(df, cfg).items():
            write_text_atomic(out / name, text)
    return save(fig.plot(df, cfg), out / fig.config)
