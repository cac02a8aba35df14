"""Command line: ``enkf-repro run|plot|compare|list|bench|reproduce ...``: parse the subcommand's
arguments, call its library function, and turn errors into one line and an exit code (0 done,
2 bad config or data, 3 a run diverged, 130 interrupted).

Each command is a small function here that imports its library module when called, so that
``import enkf_repro.cli`` and ``enkf-repro --help`` stay fast. ``run`` is the Hydra app of
``runs/launch.py`` (it takes Hydra's flags), ``bench`` parses its own flags.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from .errors import ConfigError, EnkfReproError

USAGE = """usage: enkf-repro <command> [key=value ...]

commands:
  run figure=ID [overrides]     run a figure's experiments (Hydra app: -m, --cfg job, --help work)
  plot figure=ID [overrides]    draw <out_dir>/<scale>/fig<ID>/fig<ID>.png and .pdf from its CSVs
  compare by=KEY[,KEY] [where=KEY=VALUE ...] [out_dir=DIR] [scale=S] [metric=M]
                                group a sweep's runs by config keys: mean +/- std plot, final-value table
  list [figures=1,8,...] [scale=smoke|paper] [device=cuda] [rate=60T]
                                every figure id (or those named), what it shows, its cost at each
                                scale on this CPU and a planned device (memory per run, a total)
  bench [--help]                time the ensemble engine against the naive loop (table)
  reproduce [scale=smoke|paper] [figures=1,8,...] [dry_run=true] [device=cuda] [rate=60T]
                                run, plot and report every figure (REPORT.md); dry_run: the plan, its
                                time at the device's measured or given rate and memory per run

common overrides: scale=smoke|paper  dataset=mnist|fashion_mnist|notmnist  dataset.root=DIR
  dataset.test_only=true  device=auto|cpu|cuda  seed=N  out_dir=DIR  init.sigma=S
  model.activation=logistic|relu|tanh  optimizer.ensemble_size=J  optimizer.gamma=G
  optimizer.repetitions=R  optimizer.update_mode=sequential|batch  ensemble.chunk_size=N
examples:
  enkf-repro run figure=8 scale=smoke dataset=fashion_mnist
  enkf-repro plot figure=8 scale=smoke
  enkf-repro run -m figure=8 scale=smoke model.activation=relu,tanh
  enkf-repro compare scale=smoke by=optimizer.gamma,optimizer.ensemble_size
"""

COMPARE_USAGE = """usage: enkf-repro compare by=KEY[,KEY...] [out_dir=DIR] [scale=smoke|paper] [folder=NAME]
                          [metric=test_error] [where=KEY=VALUE[,VALUE...] ...] [out=DIR]

Groups the runs under <out_dir>[/<scale>[/<folder>]] by config keys (optimizer.gamma,
optimizer.ensemble_size, model.activation, dataset, ...), draws the metric's mean +/- std over
the runs of each group against iteration (two keys: also a heat map of the final values) and
writes compare-<keys>.png, .pdf, .md and .csv into that folder (or out=DIR). where= keeps the runs
whose key has one of the values; it may be repeated."""

COMPARE_KEYS = ("by", "out_dir", "scale", "folder", "metric", "where", "out")


def _overrides(args: list[str]) -> list[str]:
    """The overrides of a command line (``figure=8`` -> ``figure=fig8``), its flags left out."""
    from .config.overrides import normalize_figure_args, split_flags

    return split_flags(normalize_figure_args(args))[1]


def run_command(args: list[str]) -> int:
    """``enkf-repro run [flags] [overrides]``: the Hydra app."""
    from .runs.launch import run_main

    return run_main(args)


def plot_command(args: list[str]) -> int:
    """``enkf-repro plot figure=ID[,ID] [overrides]``: draw each figure, print the paths. The
    overrides compose the figure's config (swept values are only filters) and filter its runs."""
    from .api import compose
    from .report.render import plot_figure

    overrides = _overrides(args)

    def key(o: str) -> str:
        return o.split("=", 1)[0].lstrip("+")

    figs = [o for o in overrides if key(o) == "figure"]
    if not figs:
        from .experiments.base import figure_ids

        raise ConfigError.line("plot needs figure=ID, one of " + ", ".join(figure_ids()) + " (`enkf-repro list` "
                               "says what each shows)")
    filters = [o for o in overrides if key(o) != "figure"]
    compose_with = [o for o in filters if "," not in o.split("=", 1)[-1] or o.split("=", 1)[-1].startswith("[")]
    for name in figs[0].split("=", 1)[1].split(","):
        for p in plot_figure(compose(compose_with + [f"figure={name}"]), filters):
            print(p)
    return 0


def parse_compare(args: list[str]) -> dict[str, Any] | None:
    """The keyword arguments of :func:`enkf_repro.compare` on a ``compare`` command line (``by``
    and ``where`` may repeat), or None when it asks for help."""
    from .config.overrides import did_you_mean, split_flags

    flags, rest = split_flags(args)
    if any(f in ("-h", "--help") for f in flags):
        return None
    if flags:
        raise ConfigError.line(f"compare takes no flag {flags[0]!r}; see `enkf-repro compare --help`")
    opts: dict[str, Any] = {"by": [], "where": []}
    for a in rest:
        key, eq, value = a.partition("=")
        if key not in COMPARE_KEYS or not eq:
            raise ConfigError(key, value or None, did_you_mean(key, COMPARE_KEYS) + "compare takes " + ", ".join(
                f"{k}=" for k in COMPARE_KEYS) + " (filter runs with where=KEY=VALUE)")
        if key in ("by", "where"):
            opts[key].append(value)
        else:
            opts[key] = value
    return opts


def compare_command(args: list[str]) -> int:
    """``enkf-repro compare by=KEY[,KEY...] [out_dir=DIR] [scale=S] [folder=NAME] [metric=M]
    [where=KEY=VALUE ...] [out=DIR]``: write the comparison, print its paths and its table."""
    opts = parse_compare(args)
    if opts is None:
        print(COMPARE_USAGE)
        return 0
    from .report.compare import compare

    result = compare(**opts)
    for p in result.paths:
        print(p)
    print()
    print(result.markdown, end="")
    for n in result.notes:
        print(f"enkf-repro compare: {n}; add a key to by= or where= to separate them", file=sys.stderr)
    return 0


def _rate(overrides: list[str]) -> tuple[list[str], str | None]:
    """(the overrides without ``rate=``, its value): the FLOP/s of the plans of ``list`` and ``reproduce``."""
    rest, rate = [], None
    for o in overrides:
        if o.split("=", 1)[0] == "rate":
            rate = o.split("=", 1)[1]
        else:
            rest.append(o)
    return rest, rate


def _figures(value: str) -> list[str]:
    """``figures=1,8,thesis`` (or ``[1,8]``) as a list of ids."""
    return [f.strip() for f in value.replace("[", "").replace("]", "").split(",") if f.strip()]


def parse_list(args: list[str]) -> tuple[list[str], str | None, list[str] | None, list[str]]:
    """(overrides, rate, figures or None for all, scales) of a ``list`` command line."""
    overrides, rate = _rate(_overrides(args))
    rest, figures, scales = [], None, ["smoke", "paper"]
    for a in overrides:
        key, _, value = a.partition("=")
        if key == "figures":
            figures = _figures(value)
        elif key.lstrip("+") == "figure":
            raise ConfigError("figure", value.removeprefix("fig"), "list takes figures=ID,ID,... (or nothing for all)")
        elif key == "scale":
            scales = [value]
        else:
            rest.append(a)
    return rest, rate, figures, scales


def list_command(args: list[str]) -> int:
    """``enkf-repro list [figures=ID,...] [scale=smoke|paper] [device=cuda] [rate=60T] [overrides]``:
    print the table of the figures and their cost."""
    from .report.listing import figure_table

    overrides, rate, figures, scales = parse_list(args)
    print(figure_table(overrides, rate, figures, scales))
    return 0


def bench_command(args: list[str]) -> int:
    """``enkf-repro bench [flags]``: the engine benchmark (its own argparse flags)."""
    from .bench import main

    return main(args)


def parse_reproduce(args: list[str]) -> tuple[list[str], list[str] | None, bool]:
    """(overrides, figures or None for all, dry run) of a ``reproduce`` command line (``rate=``
    is :func:`_rate`'s)."""
    scale, figures, rest, dry = "paper", None, [], False
    for a in _rate(_overrides(args))[0]:
        key, _, value = a.partition("=")
        if key == "dry_run":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ConfigError("dry_run", value, "true or false")
            dry = value.lower() in ("true", "1")
        elif key == "figures":
            figures = _figures(value)
        elif key.lstrip("+") == "figure":
            raise ConfigError("figure", value.removeprefix("fig"),
                              "reproduce takes figures=ID,ID,... (or nothing for all)")
        else:
            scale = value if key == "scale" else scale
            rest.append(a)
    if scale not in ("paper", "smoke"):
        raise ConfigError("scale", scale, "paper or smoke")
    return rest, figures, dry


def reproduce_command(args: list[str]) -> int:
    """``enkf-repro reproduce [scale=smoke|paper] [figures=1,8,...] [dry_run=true] [overrides]``:
    run, plot and report (the report's path goes to stderr with the progress)."""
    overrides, figures, dry_run = parse_reproduce(args)
    from .report.reproduce import reproduce, reproduce_config

    reproduce(reproduce_config(overrides), figures, dry_run=dry_run, rate=_rate(_overrides(args))[1])
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "run": run_command,
    "plot": plot_command,
    "list": list_command,
    "compare": compare_command,
    "bench": bench_command,
    "reproduce": reproduce_command,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"enkf-repro: error: unknown command {cmd!r}; expected one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    try:
        return COMMANDS[cmd](rest) or 0
    except EnkfReproError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"enkf-repro: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("enkf-repro: interrupted; rerun the same command to resume (finished runs are skipped, the "
              "interrupted one continues from its checkpoint)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
