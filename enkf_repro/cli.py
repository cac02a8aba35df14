"""Command line: ``enkf-repro run|plot|list|bench|reproduce ...``.

``run`` hands its arguments to a ``@hydra.main`` function, so ``-m``, ``--cfg job``, ``--help``
and launchers behave as in any Hydra app. Before that, the arguments are checked with Hydra's
compose API: a wrong key, type or value fails at once with exit code 2 and one line naming it
(set HYDRA_FULL_ERROR=1 for the traceback). ``figure=8`` is mapped to the config ``fig8``
(Hydra reads 8 as an integer, which a config group cannot take); ``figure=8,9`` works with ``-m``.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from typing import Callable

from hydra.errors import CompactHydraException

USAGE = """usage: enkf-repro <command> [key=value ...]

commands:
  run figure=ID [overrides]     run a figure's experiments (Hydra app: -m, --cfg job, --help work)
  plot figure=ID [overrides]    draw <out_dir>/<scale>/fig<ID>/fig<ID>.png and .pdf from its CSVs
  list                          every figure id, what it shows, and its cost at each scale
  bench [--help]                time the ensemble engine against the naive loop (table)
  reproduce [scale=smoke|paper] [figures=1,8,...]
                                run, plot and report every figure (REPORT.md)

common overrides: scale=smoke|paper  dataset=mnist|fashion_mnist|notmnist  dataset.root=DIR
  dataset.test_only=true  device=auto|cpu|cuda  seed=N  out_dir=DIR  init.sigma=S
  model.activation=logistic|relu|tanh  optimizer.ensemble_size=J  optimizer.gamma=G
  optimizer.repetitions=R  optimizer.update_mode=sequential|batch  ensemble.chunk_size=N
examples:
  enkf-repro run figure=8 scale=smoke dataset=fashion_mnist
  enkf-repro plot figure=8 scale=smoke
  enkf-repro run -m figure=8 scale=smoke model.activation=relu,tanh
"""

HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                          "--config-dir", "-cd", "--experimental-rerun", "--shell-completion", "-sc"}
HYDRA_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion",
                    "-sc", "--version"}


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """(flags with their values, overrides)."""
    flags, overrides, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("-"):
            flags.append(a)
            if a in HYDRA_FLAGS_WITH_VALUE and i + 1 < len(args) and not args[i + 1].startswith("-") \
                    and "=" not in args[i + 1]:
                flags.append(args[i + 1])
                i += 1
            elif a in ("--info", "-i") and i + 1 < len(args) and args[i + 1] in (
                    "all", "config", "defaults", "defaults-tree", "plugins", "searchpath"):
                flags.append(args[i + 1])
                i += 1
        else:
            overrides.append(a)
        i += 1
    return flags, overrides


def normalize_figure_args(args: list[str]) -> list[str]:
    """``figure=8`` -> ``figure=fig8``; ``figure=8,9`` -> ``figure=fig8,fig9``; unknown ids fail."""
    from .experiments import get_figure

    out = []
    for a in args:
        m = re.match(r"^(\+{0,2})figure=(.*)$", a)
        if m and not m.group(2).startswith(("choice(", "range(", "glob(")):
            names = []
            for v in m.group(2).split(","):
                v = v.strip().strip("'\"")
                names.append("null" if v in ("none", "null", "") else get_figure(v).config)
            a = f"{m.group(1)}figure={','.join(names)}"
        out.append(a)
    return out


def hydra_error_line(e: BaseException) -> str:
    """One line out of a Hydra / OmegaConf composition error."""
    from omegaconf.errors import OmegaConfBaseException

    parts = []
    cur: BaseException | None = e
    while cur is not None and len(parts) < 3:
        if isinstance(cur, OmegaConfBaseException) and getattr(cur, "full_key", None):
            msg = str(getattr(cur, "msg", "") or cur).splitlines()[0]
            parts.append(f"{cur.full_key}: {msg}")
        else:
            line = str(cur).strip().splitlines()[0] if str(cur).strip() else type(cur).__name__
            parts.append(line)
        cur = cur.__cause__
    seen, uniq = set(), []
    for p in parts:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return "config error: " + " | ".join(uniq)


def _compose_checked(overrides: list[str]):
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .errors import ConfigError, EnkfReproError
    from .runner import compose_run

    try:
        return compose_run(overrides)
    except EnkfReproError:
        raise
    except (HydraException, OmegaConfBaseException, ValueError, KeyError) as e:
        if _full_error():
            raise
        err = ConfigError("", "", "")
        err.args = (hydra_error_line(e),)
        raise err from None


# Launchers that come from plugins (the `cluster` extra); configs/hydra/launcher/slurm.yaml extends
# submitit_slurm.
PLUGIN_LAUNCHERS = {"joblib": "hydra_plugins.hydra_joblib_launcher",
                    "submitit_local": "hydra_plugins.hydra_submitit_launcher",
                    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
                    "slurm": "hydra_plugins.hydra_submitit_launcher"}


def _first_values(overrides: list[str]) -> list[str]:
    """Each override at its first swept value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for ov, text in zip(OverridesParser.create().parse_overrides(overrides), overrides):
        out.append(f"{text.split('=', 1)[0]}={next(iter(ov.sweep_string_iterator()))}"
                   if ov.is_sweep_override() else text)
    return out


def check_hydra_overrides(hydra_overrides: list[str], first: list[str], cfg) -> None:
    """Launcher choice and ``hydra.*`` keys, composed with the first combination: an unknown
    launcher, one whose plugin is not installed, a key the launcher lacks (``hydra.launcher.n_jobs``
    with the basic launcher), or ``distributed=true`` without a launch that starts the ranks fails
    here, in one line, before any job."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .errors import ConfigError
    from .runner import hydra_context

    try:
        hydra_first = _first_values(hydra_overrides)
    except Exception as e:
        if _full_error():
            raise
        raise _one_line(e) from None
    launcher = next((o.split("=", 1)[1] for o in hydra_first if o.split("=", 1)[0].lstrip("+") == "hydra/launcher"),
                    "basic")
    if cfg.get("distributed", False):
        from .distributed import launcher_world_size

        if launcher == "joblib":
            raise ConfigError("hydra/launcher", launcher, "basic (under torchrun every rank runs the jobs in the "
                              "same order) or slurm / submitit_local with tasks_per_node=N, with distributed=true")
        if launcher == "basic" and launcher_world_size() is None:
            raise ConfigError("distributed", True, "a launch that starts the ranks: `torchrun --nproc_per_node=N "
                              "-m enkf_repro run ... distributed=true`, or hydra/launcher=slurm with "
                              "hydra.launcher.tasks_per_node=N; or distributed=false")
    if not hydra_overrides:
        return
    if launcher in PLUGIN_LAUNCHERS and not _importable(PLUGIN_LAUNCHERS[launcher]):
        raise ConfigError("hydra/launcher", launcher, "an installed launcher: pip install 'enkf-repro[cluster]' "
                          "(hydra-joblib-launcher, hydra-submitit-launcher)")
    try:
        with hydra_context():
            options = GlobalHydra.instance().config_loader().get_group_options("hydra/launcher")
            if launcher not in options:
                raise ConfigError("hydra/launcher", launcher, "one of " + ", ".join(sorted(options)))
            compose(config_name="config", overrides=first + hydra_first, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError, KeyError) as e:
        if _full_error():
            raise
        raise _one_line(e) from None


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _one_line(e: BaseException):
    from .errors import ConfigError

    err = ConfigError("", "", "")
    err.args = (hydra_error_line(e),)
    return err


def prevalidate(overrides: list[str]) -> None:
    """Compose each swept value (others at their first value), check its data, check the launcher
    overrides, and plan the first combination."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .runner import check_data, plan

    plain = [o for o in overrides if not o.startswith("hydra")]
    hydra_overrides = [o for o in overrides if o.startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides(plain)
    except Exception as e:
        if _full_error():
            raise
        from .errors import ConfigError

        err = ConfigError("", "", "")
        err.args = (hydra_error_line(e),)
        raise err from None
    choices = []
    for ov, text in zip(parsed, plain):
        if ov.is_sweep_override():
            key = text.split("=", 1)[0]
            choices.append([f"{key}={v}" for v in ov.sweep_string_iterator()])
        else:
            choices.append([text])
    first = [c[0] for c in choices]
    combos = [first]
    for i, c in enumerate(choices):
        combos += [first[:i] + [v] + first[i + 1:] for v in c[1:]]
    specs = []
    for combo in combos[:64]:   # a sweep job must not find its data missing
        cfg = _compose_checked(combo)
        if combo is first:
            check_hydra_overrides(hydra_overrides, first, cfg)
        specs += plan(cfg, combo)   # the figure's per-scale overrides may change the dataset
    check_data(specs)


class SweepJobFailed(CompactHydraException):
    """A sweep job's one-line error, raised so that the launcher records this job as failed and runs
    the others; Hydra then ends the sweep with exit status 1, printing the failed job's overrides
    and this line (a compact Hydra error: no traceback)."""


def _hydra_task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from .errors import EnkfReproError
    from .runner import quiet_rank, run_figure

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    try:
        out = run_figure(cfg, overrides)
        if not quiet_rank():
            print(f"enkf-repro: results in {out}", file=sys.stderr)
    except EnkfReproError as e:
        if _full_error():
            raise
        print(f"enkf-repro: {e}", file=sys.stderr)
        if str(getattr(hc.mode, "name", hc.mode)) == "MULTIRUN":
            # a sweep job: fail this job only instead of exiting the launcher's process
            raise SweepJobFailed(f"enkf-repro: {e}") from None
        sys.exit(e.exit_code)


def cmd_run(args: list[str]) -> int:
    import hydra

    from .config import config_dir, register_configs

    args = normalize_figure_args(args)
    flags, overrides = split_flags(args)
    modes = [f for f in flags if f in ("-m", "--multirun", "-c", "--cfg", "-i", "--info", "--run", "-r")]
    if len(modes) > 1:
        from .errors import ConfigError

        raise ConfigError("flags", " ".join(modes), "one of -m/--multirun, --cfg, --info, --run at a time "
                          "(to see a sweep's launcher config, use --cfg hydra without -m)")
    if not (set(flags) & HYDRA_INFO_FLAGS):
        prevalidate(overrides)
    register_configs()
    old_argv = sys.argv
    sys.argv = ["enkf-repro"] + args
    try:
        hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(_hydra_task)()
    finally:
        sys.argv = old_argv
    return 0


def _plot_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """(overrides to compose with: no sweeps, all overrides as filters)."""
    _, overrides = split_flags(normalize_figure_args(args))
    compose_with = [o for o in overrides if "," not in o.split("=", 1)[-1] or o.split("=", 1)[-1].startswith("[")]
    return compose_with, overrides


def cmd_plot(args: list[str]) -> int:
    from .errors import ConfigError
    from .plotting import plot_figure

    compose_with, filters = _plot_overrides(args)
    figs = [o for o in filters if o.split("=", 1)[0].lstrip("+") == "figure"]
    if not figs:
        raise ConfigError("figure", None, "plot needs figure=ID (see `enkf-repro list`)")
    names = figs[0].split("=", 1)[1].split(",")
    rest = [o for o in compose_with if o.split("=", 1)[0].lstrip("+") != "figure"]
    for name in names:
        cfg = _compose_checked(rest + [f"figure={name}"])
        paths = plot_figure(cfg, [o for o in filters if o.split("=", 1)[0].lstrip("+") != "figure"])
        for p in paths:
            print(p)
    return 0


def cmd_list(args: list[str]) -> int:
    from .experiments import FIGURES, figure_ids
    from .runner import estimate_flops, estimate_seconds, plan

    _, overrides = split_flags(normalize_figure_args(args))
    rows = []
    for fid in figure_ids():
        fig = FIGURES[fid]
        costs = []
        for scale in ("smoke", "paper"):
            if not fig.needs_runs:
                costs.append("drawn, no runs")
                continue
            ov = overrides + [f"figure={fig.config}", f"scale={scale}"]
            cfg = _compose_checked(ov)
            specs = plan(cfg, ov)
            flops = sum(estimate_flops(s.cfg) for s in specs)
            cpu = sum(estimate_seconds(s.cfg, 40e9, "cpu") for s in specs)
            gpu = sum(estimate_seconds(s.cfg, 100e12, "cuda") for s in specs)
            costs.append(f"{len(specs)} runs, {_flops(flops)} (CPU {_dur(cpu)}, GPU {_dur(gpu)})")
        rows.append((fid, fig.description, *costs))
    print("figure | what it shows | smoke | paper")
    print("--- | --- | --- | ---")
    for r in rows:
        print(" | ".join(r))
    print("\ncost: FLOPs from the cost model in reference.md; times at 40 GFLOP/s (the 2-core CPU this was "
          "developed on, measured by `enkf-repro bench`) and at an assumed 100 TFLOP/s on a GPU, plus a fixed "
          "cost per step (per sample for IEnK); rough.")
    return 0


def _flops(f: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if f >= scale:
            return f"{f / scale:.3g} {unit}"
    return f"{f:.3g} FLOP"


def _dur(s: float) -> str:
    if s < 1:
        return "<1 s"
    if s < 120:
        return f"~{s:.0f} s"
    if s < 7200:
        return f"~{s / 60:.0f} min"
    return f"~{s / 3600:.0f} h"


def cmd_bench(args: list[str]) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def cmd_reproduce(args: list[str]) -> int:
    from .report import reproduce_main

    return reproduce_main(args)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "run": cmd_run, "plot": cmd_plot, "list": cmd_list, "bench": cmd_bench, "reproduce": cmd_reproduce,
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
    from .errors import EnkfReproError

    try:
        return COMMANDS[cmd](rest) or 0
    except EnkfReproError as e:
        if _full_error():
            raise
        print(f"enkf-repro: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("enkf-repro: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
