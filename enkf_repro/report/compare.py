"""``enkf-repro compare``: the runs of a sweep side by side, grouped by config keys.

``compare(out_dir, by=["optimizer.gamma"])`` reads every run under the folder (finished or still
going), takes the value of each ``by`` and ``where`` key from the run's ``config.yaml``, keeps the
runs matching every ``where``, groups the rest by the ``by`` keys and draws the metric's mean
+/- std over the runs of each group (the seeds) against iteration; with two keys, a heat map of
the final values beside it. It writes ``compare-<keys>.png`` and ``.pdf``, and the final values
(each run's last logged value, mean and std over the group's runs) as ``compare-<keys>.md`` and
``.csv``. Runs that differ in a setting neither grouped on nor filtered on are averaged together
and the function says which settings those are.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
from omegaconf import OmegaConf

from ..config.compose import did_you_mean, split_flags
from ..config.identity import semantic_config
from ..errors import ConfigError, EnkfReproError
from ..experiments.draw import COLORS, band, caption, mean_std, save, use_style
from ..runs.folder import RunFolder, read_runs, slug
from ..runs.results import config_key, flat_config, write_text_atomic
from .select import matches, value_order, value_text, where_filters

LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P"]
USAGE = """usage: enkf-repro compare by=KEY[,KEY...] [out_dir=DIR] [scale=smoke|paper] [folder=NAME]
                          [metric=test_error] [where=KEY=VALUE[,VALUE...] ...] [out=DIR]

Groups the runs under <out_dir>[/<scale>[/<folder>]] by config keys (optimizer.gamma,
optimizer.ensemble_size, model.activation, dataset, ...), draws the metric's mean +/- std over
the runs of each group against iteration (two keys: also a heat map of the final values) and
writes compare-<keys>.png, .pdf, .md and .csv into that folder (or out=DIR). where= keeps the runs
whose key has one of the values; it may be repeated."""


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


def _split_keys(keys: str | Iterable[str]) -> list[str]:
    parts = [keys] if isinstance(keys, str) else list(keys)
    return [k.strip() for p in parts for k in str(p).split(",") if k.strip()]


def _short(keys: list[str]) -> list[str]:
    """``optimizer.gamma`` -> ``gamma``, ``dataset.name`` -> ``dataset``; full keys if two collide."""
    def one(k: str) -> str:
        parts = k.split(".")
        return parts[-2] if len(parts) > 1 and parts[-1] in ("name", "id") else parts[-1]

    shorts = [one(k) for k in keys]
    return shorts if len(set(shorts)) == len(shorts) else list(keys)


def _fmt(x: float) -> str:
    return "nan" if pd.isna(x) else f"{x:.4g}"


def _root(out_dir: str | Path, scale: str | None, folder: str | None) -> Path:
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
    by = _split_keys(by)
    if not by:
        raise ConfigError("by", None, "one or more config keys to group the runs by, e.g. by=optimizer.gamma "
                          "or by=optimizer.gamma,optimizer.ensemble_size")
    filters = where_filters(where)
    root = _root(out_dir, scale, folder)
    df = read_runs(root)
    if df.empty:
        raise EnkfReproError(f"no runs under {root} (a run is a folder with metric rows); start some with "
                             "`enkf-repro run -m ...`")

    configs = {d: RunFolder(d).config() for d in df["run_dir"].unique()}
    flats = {d: flat_config(c) for d, c in configs.items()}
    by_keys = list(dict.fromkeys(_key(k, configs) for k in by))
    filters = [(_key(k, configs), vals) for k, vals in filters]
    keep = [d for d, f in flats.items() if all(any(matches(f.get(k), v) for v in vals) for k, vals in filters)]
    if not keep:
        present = "; ".join(f"{k}: " + ", ".join(value_text(v) for v in sorted({f.get(k) for f in flats.values()},
                                                                                  key=value_order))
                            for k, _ in filters)
        raise EnkfReproError(f"none of the {len(flats)} runs under {root} matches "
                             + " ".join(f"where={k}={','.join(v)}" for k, v in filters) + f" (the runs have {present})")
    df = df[df["run_dir"].isin(keep)]

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

    shorts = _short(by_keys)
    stem = "compare-" + "-".join(slug(s).replace(".", "_") for s in shorts)
    if metric != "test_error":
        stem += "-" + slug(metric).replace(".", "_")
    dest = Path(out) if out is not None else root
    dest.mkdir(parents=True, exist_ok=True)

    scales = scale or ", ".join(sorted(rows["scale"].dropna().astype(str).unique())) or "-"
    where_text = " ".join(f"{k}={','.join(v)}" for k, v in filters)
    fig = _draw(rows, groups, by_keys, shorts, metric, table)
    extra = "mean +/- std over the runs of each group"
    if where_text:
        extra += f"; where {where_text}"
    caption(fig, OmegaConf.create({"scale": {"name": scales}}), rows, extra)
    paths = save(fig, dest / stem)

    markdown = _markdown(table, by_keys, metric, root, where_text, notes)
    csv = table.copy()
    for k in by_keys:
        csv[k] = [value_text(v) for v in csv[k]]
    write_text_atomic(dest / f"{stem}.md", markdown)
    write_text_atomic(dest / f"{stem}.csv", csv.to_csv(index=False))
    paths += [dest / f"{stem}.md", dest / f"{stem}.csv"]
    return CompareResult(paths, table, curves, per_run, markdown, notes)


def _style(i: int, g: tuple, values: list[list]) -> tuple[str, str, str]:
    """Colour, line style and marker of group ``i``: with two keys, colour follows the first key's
    value and the line style and marker the second's."""
    if len(g) == 2 and len(values[1]) <= len(LINESTYLES):
        a, b = values[0].index(g[0]), values[1].index(g[1])
        return COLORS[a % len(COLORS)], LINESTYLES[b], MARKERS[b]
    return COLORS[i % len(COLORS)], LINESTYLES[(i // len(COLORS)) % len(LINESTYLES)], "o"


def _draw(rows: pd.DataFrame, groups: dict[tuple, list[str]], by_keys: list[str], shorts: list[str],
          metric: str, table: pd.DataFrame):
    import matplotlib.pyplot as plt

    use_style()
    two = len(by_keys) == 2
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2)) if two else plt.subplots(figsize=(6.5, 4.2))
    ax = axes[0] if two else axes
    values = [sorted({g[i] for g in groups}, key=value_order) for i in range(len(by_keys))]
    ylabel = metric.replace("_", " ") + (" (%)" if metric.startswith("test_error") else "")
    for i, (g, dirs) in enumerate(groups.items()):
        color, linestyle, marker = _style(i, g, values)
        label = ", ".join(f"{s}={value_text(v)}" for s, v in zip(shorts, g))
        band(ax, rows[rows["run_dir"].isin(dirs)], label, color, marker=marker, linestyle=linestyle)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{metric} by {', '.join(shorts)}")
    if len(groups) > 8:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    else:
        ax.legend()
    if two:
        _heatmap(axes[1], table, by_keys, shorts, values, ylabel)
    return fig


def _heatmap(ax, table: pd.DataFrame, by_keys: list[str], shorts: list[str], values: list[list],
             label: str) -> None:
    """Final mean (and std) per pair of values: the first key down, the second across."""
    import numpy as np

    mean = np.full((len(values[0]), len(values[1])), np.nan)
    std = np.full_like(mean, np.nan)
    for _, r in table.iterrows():
        i, j = values[0].index(r[by_keys[0]]), values[1].index(r[by_keys[1]])
        mean[i, j], std[i, j] = r["final_mean"], r["final_std"]
    im = ax.imshow(np.ma.masked_invalid(mean), cmap="viridis", aspect="auto")
    ax.figure.colorbar(im, ax=ax, label=f"final {label}")
    lo, hi = np.nanmin(mean), np.nanmax(mean)
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            if np.isnan(mean[i, j]):
                continue
            light = hi > lo and (mean[i, j] - lo) / (hi - lo) > 0.6
            ax.text(j, i, f"{mean[i, j]:.3g}\n+/- {std[i, j]:.2g}", ha="center", va="center", fontsize=8,
                    color="black" if light else "white")
    ax.set_xticks(range(len(values[1])), [value_text(v) for v in values[1]])
    ax.set_yticks(range(len(values[0])), [value_text(v) for v in values[0]])
    ax.set_xlabel(shorts[1])
    ax.set_ylabel(shorts[0])
    ax.grid(False)
    ax.set_title("final value: mean +/- std over the runs")


def _markdown(table: pd.DataFrame, by_keys: list[str], metric: str, root: Path, where_text: str,
              notes: list[str]) -> str:
    runs, done = int(table["runs"].sum()), int(table["finished"].sum())
    head = (f"{metric} at each run's last logged iteration: mean and std (ddof=0) over the runs of each "
            f"group; {runs} runs ({done} finished) under {root}" + (f", where {where_text}" if where_text else ""))
    cols = by_keys + ["mean", "std", "runs", "finished", "last iteration"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for _, r in table.iterrows():
        it = (str(r["last_iteration"]) if r["last_iteration"] == r["last_iteration_min"]
              else f"{r['last_iteration_min']}-{r['last_iteration']}")
        cells = [value_text(r[k]) for k in by_keys] + [_fmt(r["final_mean"]), _fmt(r["final_std"]),
                                                  str(r["runs"]), str(r["finished"]), it]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"Note: {n}; add a key to by= or where= to separate them." for n in notes]
    return "\n".join(lines).rstrip() + "\n"


def compare_main(args: list[str]) -> int:
    """``enkf-repro compare by=KEY[,KEY...] [out_dir=DIR] [scale=S] [folder=NAME] [metric=M]
    [where=KEY=VALUE ...] [out=DIR]``: write the comparison, print its paths and its table."""
    flags, rest = split_flags(args)
    if any(f in ("-h", "--help") for f in flags):
        print(USAGE)
        return 0
    if flags:
        raise ConfigError.line(f"compare takes no flag {flags[0]!r}; see `enkf-repro compare --help`")
    known = ("by", "out_dir", "scale", "folder", "metric", "where", "out")
    opts: dict[str, Any] = {"by": [], "where": []}
    for a in rest:
        key, eq, value = a.partition("=")
        if key not in known or not eq:
            raise ConfigError(key, value or None, did_you_mean(key, known) + "compare takes " + ", ".join(
                f"{k}=" for k in known) + " (filter runs with where=KEY=VALUE)")
        if key in ("by", "where"):
            opts[key].append(value)
        else:
            opts[key] = value
    result = compare(**opts)
    for p in result.paths:
        print(p)
    print()
    print(result.markdown, end="")
    for n in result.notes:
        print(f"enkf-repro compare: {n}; add a key to by= or where= to separate them", file=sys.stderr)
    return 0
