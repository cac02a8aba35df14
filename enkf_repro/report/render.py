"""Turn a figure's CSVs into ``<fig>.png`` and ``<fig>.pdf``.

``plot_figure(cfg, overrides)`` reads every run under the figure's folder (finished or still
going), keeps those matching the overrides given on the command line (``dataset=fashion_mnist``
keeps the Fashion-MNIST runs), and when runs of several configurations remain for what the
figure compares, draws the most recently written configuration and says so.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ..config.compose import compose
from ..config.identity import NON_SEMANTIC, NON_SEMANTIC_NESTED, config_hash, semantic_config
from ..config.overrides import config_dir, normalize_figure_args, parse_overrides, split_flags
from ..config.schema import name_of
from ..errors import ConfigError, EnkfReproError
from ..experiments.base import Figure, get_figure
from ..experiments.draw import save, use_style
from ..runs.folder import RunFolder, figure_dir, read_runs
from ..runs.results import write_text_atomic

# Overrides that do not describe a run's configuration (never used to filter runs).
# These are exactly the keys left out of a run's identity (config/identity.py).
NOT_FILTERS = NON_SEMANTIC | {f"{group}.{key}" for group, keys in NON_SEMANTIC_NESTED.items() for key in keys}


def _groups() -> set[str]:
    return {p.name for p in config_dir().iterdir() if p.is_dir()}


def _same(a, b: str) -> bool:
    if a is None:
        return b in ("null", "None", "none", "")
    a = name_of(a)
    if isinstance(a, bool):
        return str(a).lower() == b.lower()
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == b


def _filters(overrides: Iterable[str]) -> list[tuple[str, list[str]]]:
    out = []
    groups = _groups()
    for ov in parse_overrides(list(overrides)):
        key = ov.key_or_group
        # figure.<scale>.* and the like: how to draw, not which runs
        if key in NOT_FILTERS or key.split(".")[0] in NON_SEMANTIC or key.startswith("hydra") or ov.is_delete():
            continue
        values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]
        out.append((f"{key}.name" if key in groups else key, values))
    return out


def _flat(d, prefix=""):
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            yield from _flat(v, key)
        else:
            yield key, v


def _drop(d: dict, path: str) -> None:
    *parents, last = path.split(".")
    for p in parents:
        d = d.get(p)
        if not isinstance(d, dict):
            return
    d.pop(last, None)


def select_runs(df: pd.DataFrame, fig: Figure, overrides: Iterable[str]) -> pd.DataFrame:
    """The rows of the runs to draw (see module docstring)."""
    if df.empty:
        return df
    filters = _filters(overrides)
    configs = {d: RunFolder(d).config() for d in df["run_dir"].unique()}
    keep = []
    for d, c in configs.items():
        cfg = OmegaConf.create(c)
        if all(any(_same(OmegaConf.select(cfg, k, default=None), v) for v in vals) for k, vals in filters):
            keep.append(d)
    df = df[df["run_dir"].isin(keep)]
    if df.empty:
        return df

    def rest(c):
        s = semantic_config(c)
        s.pop("seed", None)
        for path in fig.varies:
            _drop(s, path)
        return config_hash(s)

    group = {d: rest(configs[d]) for d in keep}
    df = df.assign(_group=df["run_dir"].map(group))
    if df["_group"].nunique() > 1:
        latest = df.groupby("_group")["mtime"].max().idxmax()
        chosen = next(d for d in keep if group[d] == latest)
        other = next(d for d in keep if group[d] != latest)
        a, b = dict(_flat(semantic_config(configs[chosen]))), dict(_flat(semantic_config(configs[other])))
        diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k != "seed"
                and not any(k == v or k.startswith(v + ".") for v in fig.varies)]
        shown = ", ".join(f"{k}: {a.get(k)} (drawn) vs {b.get(k)}" for k in diff[:3])
        print(f"enkf-repro plot: runs of {df['_group'].nunique()} configurations found; drawing the most "
              f"recent ({shown}); add the setting to the command to choose", file=sys.stderr)
        df = df[df["_group"] == latest]
    return df.drop(columns="_group")


def plot_figure(cfg: DictConfig, overrides: Iterable[str] = ()) -> list[Path]:
    """Draw the figure of ``cfg`` from the runs under its folder; returns the PNG and PDF paths."""
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


def plot_main(args: list[str]) -> int:
    """``enkf-repro plot figure=ID[,ID] [overrides]``: draw each figure, print the paths. The
    overrides compose the figure's config (swept values are only filters) and filter its runs."""
    _, overrides = split_flags(normalize_figure_args(args))

    def key(o: str) -> str:
        return o.split("=", 1)[0].lstrip("+")

    figs = [o for o in overrides if key(o) == "figure"]
    if not figs:
        raise ConfigError("figure", None, "plot needs figure=ID (see `enkf-repro list`)")
    filters = [o for o in overrides if key(o) != "figure"]
    compose_with = [o for o in filters if "," not in o.split("=", 1)[-1] or o.split("=", 1)[-1].startswith("[")]
    for name in figs[0].split("=", 1)[1].split(","):
        for p in plot_figure(compose(compose_with + [f"figure={name}"]), filters):
            print(p)
    return 0
