"""Which runs: a run's config values matched against the text of overrides.

``plot`` keeps the runs of a figure that match the overrides on its command line
(``dataset=fashion_mnist`` keeps the Fashion-MNIST runs) and, when runs of several configurations
remain for what the figure compares, the most recently written configuration. ``compare`` keeps
the runs matching its ``where=`` filters. Both compare a value of a run's ``config.yaml`` with the
text of an override through :func:`matches`.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Mapping

import pandas as pd

from ..config.identity import NON_SEMANTIC, NON_SEMANTIC_NESTED, config_hash, semantic_config
from ..config.overrides import config_dir, format_value, parse_overrides
from ..config.schema import name_of
from ..errors import ConfigError
from ..experiments.base import Figure
from ..runs.folder import RunFolder
from ..runs.results import flat_config

# Overrides that do not describe a run's configuration (never used to filter runs).
# These are exactly the keys left out of a run's identity (config/identity.py).
NOT_FILTERS = NON_SEMANTIC | {f"{group}.{key}" for group, keys in NON_SEMANTIC_NESTED.items() for key in keys}

Filters = list[tuple[str, list[str]]]   # (dotted key, the values any of which matches)


def matches(value: Any, text: str) -> bool:
    """Whether a run's config value ``value`` is what the override text ``text`` says:
    ``None`` is ``null`` (or ``None``, ``none``, empty), a bool its name in any case, a list its
    override form (``[4,8]``, spaces ignored), a number any text of the same number (``0.1``,
    ``1e-1``), anything else its text (an Enum member its value)."""
    if isinstance(value, (list, tuple)):
        return format_value(list(value)).replace(" ", "") == text.replace(" ", "")
    if isinstance(value, bool):
        return str(value).lower() == text.strip().lower()
    if value is None:
        return text in ("null", "None", "none", "")
    value = name_of(value)
    try:
        return float(value) == float(text)
    except (TypeError, ValueError):
        return str(value) == text


def value_text(value: Any) -> str:
    """A config value as an override writes it (``0.01``, ``relu``, ``[4, 8]``, ``null``)."""
    return format_value(list(value) if isinstance(value, tuple) else value)


def value_order(value: Any) -> tuple:
    """Sort key of config values: numbers in numeric order, then everything else by its text;
    None last."""
    if value is None:
        return (2, 0.0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, value_text(value))


def _values(ov) -> list[str]:
    return list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]


def where_filters(where: str | Iterable[str] | Mapping[str, Any]) -> Filters:
    """``["optimizer.gamma=0.01,0.1", "dataset=mnist"]`` (or a mapping of keys to a value or a list
    of values) -> ``[(key, [value strings])]``; a comma list means any of its values."""
    if isinstance(where, Mapping):
        items = []
        for k, v in where.items():
            vals = list(v) if isinstance(v, (list, tuple, set)) else [v]
            items.append(f"{k}={','.join(format_value(x) for x in vals)}")
        where = items
    elif isinstance(where, str):
        where = [where]
    out = []
    for text in where:
        if "=" not in text:
            raise ConfigError("where", text, "KEY=VALUE (or KEY=V1,V2 for any of several values)")
        (ov,) = parse_overrides([text])
        out.append((ov.key_or_group, _values(ov)))
    return out


def override_filters(overrides: Iterable[str]) -> Filters:
    """The filters a command line's overrides make: every override that describes a run's
    configuration (``dataset=fashion_mnist`` -> ``dataset.name``; a sweep ``a=1,2`` any of its
    values); settings that do not (``out_dir``, ``device``, ``figure.*``, ``hydra.*``) are left out."""
    out = []
    groups = {p.name for p in config_dir().iterdir() if p.is_dir()}
    for ov in parse_overrides(list(overrides)):
        key = ov.key_or_group
        if key in NOT_FILTERS or key.split(".")[0] in NON_SEMANTIC or key.startswith("hydra") or ov.is_delete():
            continue
        out.append((f"{key}.name" if key in groups else key, _values(ov)))
    return out


def keep(flats: Mapping[str, Mapping[str, Any]], filters: Filters) -> list[str]:
    """The runs (keys of ``flats``, each a run's flat config) whose value of every filter's key
    matches one of its values."""
    return [d for d, f in flats.items() if all(any(matches(f.get(k), v) for v in vals) for k, vals in filters)]


def _drop(d: dict, path: str) -> None:
    *parents, last = path.split(".")
    for p in parents:
        d = d.get(p)
        if not isinstance(d, dict):
            return
    d.pop(last, None)


def select_runs(df: pd.DataFrame, fig: Figure, overrides: Iterable[str]) -> pd.DataFrame:
    """The rows of the runs of ``fig`` to draw: those matching ``overrides`` (module docstring),
    and of those, when they hold several configurations besides what the figure compares (its
    ``varies``) and the seed, the most recently written one, with a line on stderr saying so."""
    if df.empty:
        return df
    configs = {d: RunFolder(d).config() for d in df["run_dir"].unique()}
    kept = keep({d: flat_config(c) for d, c in configs.items()}, override_filters(overrides))
    df = df[df["run_dir"].isin(kept)]
    if df.empty:
        return df

    def rest(c):
        s = semantic_config(c)
        s.pop("seed", None)
        for path in fig.varies:
            _drop(s, path)
        return config_hash(s)

    group = {d: rest(configs[d]) for d in kept}
    df = df.assign(_group=df["run_dir"].map(group))
    if df["_group"].nunique() > 1:
        latest = df.groupby("_group")["mtime"].max().idxmax()
        chosen = next(d for d in kept if group[d] == latest)
        other = next(d for d in kept if group[d] != latest)
        a, b = flat_config(semantic_config(configs[chosen])), flat_config(semantic_config(configs[other]))
        diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k != "seed"
                and not any(k == v or k.startswith(v + ".") for v in fig.varies)]
        shown = ", ".join(f"{k}: {a.get(k)} (drawn) vs {b.get(k)}" for k in diff[:3])
        print(f"enkf-repro plot: runs of {df['_group'].nunique()} configurations found; drawing the most "
              f"recent ({shown}); add the setting to the command to choose", file=sys.stderr)
        df = df[df["_group"] == latest]
    return df.drop(columns="_group")
