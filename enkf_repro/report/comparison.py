"""The numbers of ``compare``: the runs under a folder grouped by config keys.

:func:`compare_runs` reads every run under the folder (finished or still going), takes the value
of each ``by`` and ``where`` key from the run's ``config.yaml``, keeps the runs matching every
``where``, groups the rest by the ``by`` keys and computes, per group, the metric's mean +/- std
over its runs (the seeds) at each iteration and the mean +/- std of each run's last logged value.
Runs that differ in a setting neither grouped on nor filtered on are averaged together, and the
result says which settings those are. Nothing is drawn or written here (``report/compare.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..config.identity import semantic_config
from ..config.overrides import did_you_mean
from ..errors import ConfigError, EnkfReproError
from ..experiments.draw import mean_std
from ..runs.folder import RunFolder, read_runs
from ..runs.results import config_key, flat_config
from .select import Filters, keep, value_order, value_text, where_filters


@dataclass
class Comparison:
    """The runs of a comparison and what :func:`compare_runs` computed from them.

    ``root``: the folder compared. ``by``: the grouping keys as the configs name them
    (``dataset`` -> ``dataset.name``). ``where``: the filters, keys resolved the same way.
    ``rows``: the metric's rows of the compared runs (numeric ``value``, by run and iteration).
    ``groups``: each group's values of the ``by`` keys -> its runs' folders, in order (numbers in
    numeric order). ``table``: one row per group: the ``by`` keys, ``metric``, ``final_mean`` and
    ``final_std`` (over the group's runs of each run's last logged value; std with ddof=0, as the
    bands), ``runs``, ``finished``, ``last_iteration`` (the furthest a run of the group got) and
    ``last_iteration_min``. ``curves``: per group and iteration, ``mean``, ``std`` and ``n`` (runs
    with a value there). ``per_run``: per run, its folder, ``by`` values, ``finished``,
    ``last_iteration`` and ``final``. ``notes``: settings the groups average over besides the seed."""

    root: Path
    by: list[str]
    metric: str
    where: Filters
    rows: pd.DataFrame
    groups: dict[tuple, list[str]]
    table: pd.DataFrame
    curves: pd.DataFrame
    per_run: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def values(self) -> list[list]:
        """Each ``by`` key's values over the groups, in order."""
        return [sorted({g[i] for g in self.groups}, key=value_order) for i in range(len(self.by))]

    @property
    def where_text(self) -> str:
        """The filters as the command line writes them (``optimizer.gamma=0.01,0.1 seed=0``)."""
        return " ".join(f"{k}={','.join(v)}" for k, v in self.where)

    def final_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """With two ``by`` keys: the final mean and std per pair of values, ``[i, j]`` for the
        first key's ``i``-th value and the second's ``j``-th (NaN where no run has the pair)."""
        values = self.values
        mean = np.full((len(values[0]), len(values[1])), np.nan)
        std = np.full_like(mean, np.nan)
        for _, r in self.table.iterrows():
            i, j = values[0].index(r[self.by[0]]), values[1].index(r[self.by[1]])
            mean[i, j], std[i, j] = r["final_mean"], r["final_std"]
        return mean, std


def split_keys(keys: str | Iterable[str]) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` -> ``["a", "b", "c"]``."""
    parts = [keys] if isinstance(keys, str) else list(keys)
    return [k.strip() for p in parts for k in str(p).split(",") if k.strip()]


def runs_root(out_dir: str | Path, scale: str | None, folder: str | None) -> Path:
    """``<out_dir>[/<scale>[/<folder>]]``; a scale or folder not there is a one-line error naming
    the folders of runs that are."""
    root = Path(out_dir)
    for name, part in (("scale", scale), ("folder", folder)):
        if part is None:
            continue
        if not (root / part).is_dir():
            present = sorted(p.name for p in root.iterdir() if p.is_dir() and RunFolder.under(p)
                             ) if root.is_dir() else []
            raise ConfigError(name, part, f"a folder of runs under {root}: " + (", ".join(present) or "none there"))
        root = root / part
    if not root.is_dir():
        raise EnkfReproError(f"no runs under {root}: the folder does not exist")
    return root


def _listing(mixed: dict[str, list], most: int = 5) -> str:
    """``dataset.name (fashion_mnist, mnist), init.sigma (1.0, 3.0) and 7 more``: sections' names
    first, then the settings every run has."""
    keys = sorted(mixed, key=lambda k: (not k.endswith(".name"), None in mixed[k], k))

    def values(vals: list) -> str:
        return ", ".join(value_text(v) for v in vals[:6]) + (", ..." if len(vals) > 6 else "")

    text = ", ".join(f"{k} ({values(mixed[k])})" for k in keys[:most])
    return text + (f" and {len(keys) - most} more" if len(keys) > most else "")


def _key(key: str, configs: dict[str, dict]) -> str:
    """:func:`config_key`, its error also naming the settings that differ between the runs."""
    try:
        return config_key(key, [flat_config(c) for c in configs.values()])
    except ConfigError as e:
        differ = _mixed({(): list(configs)}, configs, [])
        if differ:
            e.args = (f"{e.args[0]}; the runs differ in {_listing(differ, 8)}",)
        raise


def _mixed(groups: dict[tuple, list[str]], configs: dict[str, dict], by_keys: list[str]) -> dict[str, list]:
    """Settings (besides the seed and the ``by`` keys) whose values differ within a group."""
    flats = {d: flat_config(semantic_config(c)) for d, c in configs.items()}
    mixed: dict[str, set] = {}
    for dirs in groups.values():
        keys = set().union(*(flats[d] for d in dirs))
        for k in keys - set(by_keys) - ({"seed"} if by_keys else set()):
            values = {flats[d].get(k) for d in dirs}
            if len(values) > 1:
                mixed.setdefault(k, set()).update(values)
    return {k: sorted(v, key=value_order) for k, v in sorted(mixed.items())}


def compare_runs(out_dir: str | Path = "results", by: str | Sequence[str] = (), metric: str = "test_error",
                 where: str | Iterable[str] | Mapping[str, Any] = (), scale: str | None = None,
                 folder: str | None = None) -> Comparison:
    """Group the runs under ``<out_dir>[/<scale>[/<folder>]]`` by the config keys ``by`` and
    compute ``metric`` per group (module docstring). ``by``: dotted keys of the runs'
    ``config.yaml`` (``"optimizer.gamma"``, ``["optimizer.gamma", "optimizer.ensemble_size"]``;
    ``"dataset"`` means ``dataset.name``). ``where``: ``"KEY=VALUE"`` strings
    (``"optimizer.gamma=0.01,0.1"``: any of the values) or a mapping ``{key: value or [values]}``.
    Raises a one-line error when no run is found, a key is in no run's config or the metric was
    not logged."""
    by = split_keys(by)
    if not by:
        raise ConfigError("by", None, "one or more config keys to group the runs by, e.g. by=optimizer.gamma "
                          "or by=optimizer.gamma,optimizer.ensemble_size")
    filters = where_filters(where)
    root = runs_root(out_dir, scale, folder)
    df = read_runs(root)
    if df.empty:
        raise EnkfReproError(f"no runs under {root} (a run is a folder with metric rows); start some with "
                             "`enkf-repro run -m ...`")

    configs = {d: RunFolder(d).config() for d in df["run_dir"].unique()}
    flats = {d: flat_config(c) for d, c in configs.items()}
    by_keys = list(dict.fromkeys(_key(k, configs) for k in by))
    filters = [(_key(k, configs), vals) for k, vals in filters]
    kept = keep(flats, filters)
    if not kept:
        present = "; ".join(f"{k}: " + ", ".join(value_text(v) for v in sorted({f.get(k) for f in flats.values()},
                                                                                  key=value_order))
                            for k, _ in filters)
        raise EnkfReproError(f"none of the {len(flats)} runs under {root} matches "
                             + " ".join(f"where={k}={','.join(v)}" for k, v in filters) + f" (the runs have {present})")
    df = df[df["run_dir"].isin(kept)]

    logged = df.drop_duplicates("metric")
    scalar = sorted(logged.loc[logged["layer"].isna() & logged["bin"].isna(), "metric"].astype(str))
    present = sorted(df["metric"].astype(str).unique())
    if metric not in present:
        raise ConfigError("metric", metric, did_you_mean(metric, present) + "a metric the runs logged: "
                          + ", ".join(scalar or present))
    rows = df[df["metric"] == metric].copy()
    if rows["layer"].notna().any() or rows["bin"].notna().any():
        raise ConfigError("metric", metric, "a metric with one value per iteration (this one is per layer or "
                          "bin): " + ", ".join(scalar))
    rows["value"] = pd.to_numeric(rows["value"], errors="coerce")
    rows = rows.sort_values(["run_dir", "iteration"], kind="stable")

    # one row per run: its group and its last logged value
    last = rows.groupby("run_dir", sort=False).tail(1).set_index("run_dir")
    per_run = pd.DataFrame({
        "run_dir": last.index,
        **{k: [flats[d].get(k) for d in last.index] for k in by_keys},
        "finished": last["finished"].astype(bool).to_numpy(),
        "last_iteration": last["iteration"].to_numpy(),
        "final": last["value"].to_numpy(),
    })
    group_of = {d: tuple(flats[d].get(k) for k in by_keys) for d in per_run["run_dir"]}
    order = sorted(set(group_of.values()), key=lambda g: tuple(value_order(v) for v in g))
    groups = {g: [d for d in per_run["run_dir"] if group_of[d] == g] for g in order}
    per_run["_order"] = per_run["run_dir"].map(lambda d: order.index(group_of[d]))
    per_run = per_run.sort_values(["_order", "run_dir"], kind="stable").drop(columns="_order").reset_index(drop=True)

    table_rows, curve_frames = [], []
    for g, dirs in groups.items():
        runs = per_run[per_run["run_dir"].isin(dirs)]
        table_rows.append({
            **dict(zip(by_keys, g)), "metric": metric,
            "final_mean": runs["final"].mean(), "final_std": runs["final"].std(ddof=0),
            "runs": len(runs), "finished": int(runs["finished"].sum()),
            "last_iteration": int(runs["last_iteration"].max()),
            "last_iteration_min": int(runs["last_iteration"].min()),
        })
        curve = mean_std(rows[rows["run_dir"].isin(dirs)])
        for k, v in zip(by_keys, g):
            curve.insert(0, k, [v] * len(curve))
        curve_frames.append(curve)
    table = pd.DataFrame(table_rows)
    curves = pd.concat(curve_frames, ignore_index=True)[by_keys + ["iteration", "mean", "std", "n"]]

    mixed = _mixed(groups, {d: configs[d] for d in per_run["run_dir"]}, by_keys)
    notes = [f"the groups also average over runs that differ in {_listing(mixed)}"] if mixed else []
    return Comparison(root, by_keys, metric, filters, rows, groups, table, curves, per_run, notes)
