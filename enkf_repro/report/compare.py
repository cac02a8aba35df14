"""``compare``: the runs of a sweep side by side, grouped by config keys.

``compare(out_dir, by=["optimizer.gamma"])`` groups the runs under the folder
(``report/comparison.py`` computes the groups, their curves and final values), draws the metric's
mean +/- std over the runs of each group against iteration, with two keys a heat map of the final
values beside it (``experiments/draw.py``), and writes ``compare-<keys>.png`` and ``.pdf``, and
the final values (each run's last logged value, mean and std over the group's runs) as
``compare-<keys>.md`` (``report/markdown.py``) and ``.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
from omegaconf import OmegaConf

from ..experiments.draw import caption, groups_figure
from ..runs.folder import slug
from ..runs.results import write_text_atomic
from .comparison import Comparison, compare_runs
from .markdown import comparison_markdown
from .render import save_figure
from .select import value_text


@dataclass
class CompareResult:
    """What :func:`compare` wrote and computed.

    ``paths``: the PNG, PDF, Markdown and CSV files. ``table``: one row per group: the ``by``
    keys, ``metric``, ``final_mean`` and ``final_std`` (over the group's runs of each run's last
    logged value; std with ddof=0, as the bands), ``runs``, ``finished``, ``last_iteration`` (the
    furthest a run of the group got) and ``last_iteration_min``. ``curves``: per group and
    iteration, ``mean``, ``std`` and ``n`` (runs with a value there). ``per_run``: per run, its
    folder, ``by`` values, ``finished``, ``last_iteration`` and ``final``. ``markdown``: the table
    as written. ``notes``: settings the groups average over besides the seed."""

    paths: list[Path]
    table: pd.DataFrame
    curves: pd.DataFrame
    per_run: pd.DataFrame
    markdown: str
    notes: list[str] = field(default_factory=list)


def short_keys(keys: Sequence[str]) -> list[str]:
    """``optimizer.gamma`` -> ``gamma``, ``dataset.name`` -> ``dataset``; full keys if two collide."""
    def one(k: str) -> str:
        parts = k.split(".")
        return parts[-2] if len(parts) > 1 and parts[-1] in ("name", "id") else parts[-1]

    shorts = [one(k) for k in keys]
    return shorts if len(set(shorts)) == len(shorts) else list(keys)


def draw(c: Comparison, scale: str | None = None):
    """The plot of a comparison (module docstring), with a caption of its runs."""
    shorts = short_keys(c.by)
    labels = {g: ", ".join(f"{s}={value_text(v)}" for s, v in zip(shorts, g)) for g in c.groups}
    values = c.values
    fig = groups_figure(c.rows, c.groups, labels, values, [[value_text(v) for v in vals] for vals in values],
                        shorts, c.metric, c.final_grid() if len(c.by) == 2 else None)
    scales = scale or ", ".join(sorted(c.rows["scale"].dropna().astype(str).unique())) or "-"
    extra = "mean +/- std over the runs of each group" + (f"; where {c.where_text}" if c.where else "")
    caption(fig, OmegaConf.create({"scale": {"name": scales}}), c.rows, extra)
    return fig


def compare(out_dir: str | Path = "results", by: str | Sequence[str] = (), metric: str = "test_error",
            where: str | Iterable[str] | Mapping[str, Any] = (), scale: str | None = None,
            folder: str | None = None, out: str | Path | None = None) -> CompareResult:
    """Group the runs under ``<out_dir>[/<scale>[/<folder>]]`` by the config keys ``by`` and
    compare ``metric`` across the groups (module docstring); writes the files into that folder or
    ``out``. ``by``: dotted keys of the runs' ``config.yaml`` (``"optimizer.gamma"``,
    ``["optimizer.gamma", "optimizer.ensemble_size"]``; ``"dataset"`` means ``dataset.name``).
    ``where``: ``"KEY=VALUE"`` strings (``"optimizer.gamma=0.01,0.1"``: any of the values) or a
    mapping ``{key: value or [values]}``. Raises a one-line error when no run is found, a key is
    in no run's config or the metric was not logged."""
    c = compare_runs(out_dir, by, metric, where, scale, folder)
    stem = "compare-" + "-".join(slug(s).replace(".", "_") for s in short_keys(c.by))
    if metric != "test_error":
        stem += "-" + slug(metric).replace(".", "_")
    dest = Path(out) if out is not None else c.root
    dest.mkdir(parents=True, exist_ok=True)
    paths = save_figure(draw(c, scale), dest / stem)

    markdown = comparison_markdown(c)
    csv = c.table.copy()
    for k in c.by:
        csv[k] = [value_text(v) for v in csv[k]]
    write_text_atomic(dest / f"{stem}.md", markdown)
    write_text_atomic(dest / f"{stem}.csv", csv.to_csv(index=False))
    paths += [dest / f"{stem}.md", dest / f"{stem}.csv"]
    return CompareResult(paths, c.table, c.curves, c.per_run, markdown, c.notes)
