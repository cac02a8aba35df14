"""Helpers shared by figure modules: reading quantities off the tidy rows."""

from __future__ import annotations

from typing import Iterable, Mapping

import pandas as pd

from ..config.schema import name_of
from ..errors import ConfigError
from .base import Variant


def set_by_user(cfg, key: str) -> bool:
    """Whether the command line set ``key`` (``optimizer.ensemble_size=100``): the user's value
    then holds for every run of the figure, over the variants' own (runs/runner.py)."""
    from ..config.overrides import override_key

    return any(override_key(o) == key for o in (cfg.get("overrides") or []))


def planned_ensemble_sizes(cfg, sizes: Iterable[int]) -> list[int]:
    """The J a figure's runs have, smallest first: the figure's own ``sizes``, or the one J set
    on the command line, which every run then has. Paper numbers and claims are read at these J
    only, never at another J that happens to be among the runs."""
    if set_by_user(cfg, "optimizer.ensemble_size"):
        return [int(cfg.optimizer.ensemble_size)]
    return sorted(int(j) for j in sizes)


def runs_where(df: pd.DataFrame, **cols) -> pd.DataFrame:
    """Rows whose config columns equal the given values (compared as strings)."""
    mask = pd.Series(True, index=df.index)
    for k, v in cols.items():
        mask &= df[k].astype(str) == str(v)
    return df[mask]


def curve(df: pd.DataFrame, metric: str = "test_error") -> pd.DataFrame:
    return df[df["metric"] == metric]


def value_at(df: pd.DataFrame, metric: str, which: str = "last", skip_zero: bool = True) -> float | None:
    """Mean over seeds of ``metric`` at the first evaluation after iteration 0 (``which="first"``)
    or at each run's last evaluation (``"last"``); None when there is no such row."""
    c = curve(df, metric)
    if skip_zero:
        c = c[c["iteration"] > 0]
    if c.empty:
        return None
    per_run = c.sort_values("iteration").groupby("run_dir")
    rows = per_run.head(1) if which == "first" else per_run.tail(1)
    return float(rows["value"].mean())


def known(names: Iterable[str], table: Mapping, cfg, key: str = "optimizers") -> list[str]:
    """``names`` (a figure setting, ``figure.<scale>.<key>``), each checked against ``table``'s
    keys: one ConfigError line for the first unknown one."""
    names = list(names)
    for n in names:
        if n not in table:
            raise ConfigError(f"figure.{name_of(cfg.scale.name)}.{key}", n, "a list of " + ", ".join(table))
    return names


def at_fraction(df: pd.DataFrame, metric: str, fraction: float) -> float | None:
    """Mean over runs of ``metric`` at each run's evaluation nearest to ``fraction`` of that run's
    length (in its ``epoch`` column): compares runs of different lengths at the same point of
    their protocol (e.g. iteration 1000 of 7504 = 0.133 of an epoch)."""
    c = curve(df, metric)
    if c.empty:
        return None
    vals = []
    for _, run in c.groupby("run_dir"):
        target = fraction * run["epoch"].max()
        vals.append(float(run.loc[(run["epoch"] - target).abs().idxmin(), "value"]))
    return sum(vals) / len(vals)


def single_variant(cfg, s) -> list[Variant]:
    """One series: the optimizer of the figure's preset (Figures 3, 4, 6, 7)."""
    return [Variant(str(cfg.optimizer.name))]
