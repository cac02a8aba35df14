"""Turn a figure's CSVs into ``<fig>.png`` and ``<fig>.pdf``.

``plot_figure(cfg, overrides)`` reads every run under the figure's folder (finished or still
going), keeps those matching the overrides given on the command line (``dataset=fashion_mnist``
keeps the Fashion-MNIST runs), and when runs of several configurations remain for what the
figure compares, draws the most recently written configuration and says so.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from .config import config_dir  # noqa: E402
from .errors import EnkfReproError  # noqa: E402

if TYPE_CHECKING:  # figure modules import this module; the registry is imported lazily
    from .experiments.base import Figure
from .models import _name  # noqa: E402
from .results import (NON_SEMANTIC, NON_SEMANTIC_NESTED, config_hash, figure_dir, read_runs,  # noqa: E402
                      semantic_config)

STYLE = Path(__file__).parent / "style" / "enkf_repro.mplstyle"
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
# Overrides that do not describe a run's configuration (never used to filter runs).
# These are exactly the keys left out of a run's identity (results.py).
NOT_FILTERS = NON_SEMANTIC | {f"{group}.{key}" for group, keys in NON_SEMANTIC_NESTED.items() for key in keys}


def use_style() -> None:
    plt.style.use(str(STYLE))


def _groups() -> set[str]:
    return {p.name for p in config_dir().iterdir() if p.is_dir()}


def _same(a, b: str) -> bool:
    if a is None:
        return b in ("null", "None", "none", "")
    a = _name(a)
    if isinstance(a, bool):
        return str(a).lower() == b.lower()
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == b


def _filters(overrides: Iterable[str]) -> list[tuple[str, list[str]]]:
    out = []
    groups = _groups()
    for ov in OverridesParser.create().parse_overrides(list(overrides)):
        key = ov.key_or_group
        if key in NOT_FILTERS or key.startswith("hydra") or ov.is_delete():
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


def select_runs(df: pd.DataFrame, fig: "Figure", overrides: Iterable[str]) -> pd.DataFrame:
    """The rows of the runs to draw (see module docstring)."""
    if df.empty:
        return df
    filters = _filters(overrides)
    configs = {d: OmegaConf.to_container(OmegaConf.load(Path(d) / "config.yaml"), resolve=True)
               for d in df["run_dir"].unique()}
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


def mean_std(df: pd.DataFrame, x: str = "iteration") -> pd.DataFrame:
    """Mean and std over seeds of ``value`` per ``x`` (std 0 with one seed)."""
    g = df.groupby(x)["value"]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0), "n": g.count()})
    return out.reset_index().sort_values(x)


def band(ax, df: pd.DataFrame, label: str, color: str, x: str = "iteration", marker: str | None = "o",
         xscale: float = 1.0, **kw) -> None:
    """Line of the mean over seeds with a +/- std band."""
    s = mean_std(df, x)
    if s.empty:
        return
    xs = s[x].to_numpy() * xscale
    ax.plot(xs, s["mean"], label=label, color=color, marker=marker, **kw)
    if (s["n"] > 1).any():
        ax.fill_between(xs, s["mean"] - s["std"], s["mean"] + s["std"], color=color, alpha=0.2, linewidth=0)


def caption(fig, cfg: DictConfig, df: pd.DataFrame, extra: str = "") -> None:
    """Small provenance line under a figure: scale, dataset, runs, finished or not."""
    runs = df["run_dir"].nunique() if not df.empty else 0
    done = df.groupby("run_dir")["finished"].first().sum() if not df.empty else 0
    ds = ", ".join(sorted(df["dataset"].astype(str).unique())) if not df.empty else "-"
    text = f"scale={_name(cfg.scale.name)}, dataset={ds}, {runs} runs ({done} finished)"
    if extra:
        text += "; " + extra
    fig.text(0.01, -0.02, text, fontsize=7, color="0.35", ha="left", va="top")


def save(fig, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths


def plot_figure(cfg: DictConfig, overrides: Iterable[str] = ()) -> list[Path]:
    from .experiments import get_figure

    fig = get_figure(str(cfg.figure.id))
    out = figure_dir(cfg.out_dir, _name(cfg.scale.name), fig.config)
    use_style()
    if not fig.needs_runs:
        return save(fig.plot(pd.DataFrame(), cfg), out / fig.config)
    df = read_runs(out)
    if df.empty:
        raise EnkfReproError(f"no runs of figure {fig.id} under {out}; run `enkf-repro run figure={fig.id} "
                             f"scale={_name(cfg.scale.name)}` first")
    df = select_runs(df, fig, overrides)
    if df.empty:
        raise EnkfReproError(f"no runs of figure {fig.id} under {out} match {' '.join(overrides)}")
    return save(fig.plot(df, cfg), out / fig.config)


def metric(df: pd.DataFrame, name: str) -> pd.DataFrame:
    return df[df["metric"] == name]


def finite(values) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a)]
