"""``enkf-repro run``: a Hydra app, so ``-m`` sweeps, ``--cfg job``, ``--help`` and launchers behave
as in any Hydra app.

Before Hydra starts, the arguments are checked: every swept value is composed and planned, its
data checked, and the launcher overrides composed, so a wrong key, type, value, launcher or
missing file fails at once with exit code 2 and one line (``HYDRA_FULL_ERROR=1`` shows the
traceback), before any job starts. ``figure=8`` is mapped to the config ``fig8`` (Hydra reads 8
as an integer, which a config group cannot take); ``figure=8,9`` works with ``-m``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys

from hydra.errors import CompactHydraException, HydraException
from omegaconf.errors import OmegaConfBaseException

from ..config.compose import compose, hydra_context, hydra_error_line, register_configs
from ..config.overrides import config_dir, normalize_figure_args, parse_overrides, split_flags
from ..errors import ConfigError, EnkfReproError, Interrupted
from . import distributed
from .runner import check_runs, plan, quiet_rank, run_figure

HYDRA_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion",
                    "-sc", "--version"}
# Launchers that come from plugins (the `cluster` extra); configs/hydra/launcher/slurm.yaml extends
# submitit_slurm.
PLUGIN_LAUNCHERS = {"joblib": "hydra_plugins.hydra_joblib_launcher",
                    "submitit_local": "hydra_plugins.hydra_submitit_launcher",
                    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
                    "slurm": "hydra_plugins.hydra_submitit_launcher"}


def full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _one_line(e: BaseException) -> ConfigError:
    return ConfigError.line(hydra_error_line(e))


def _first_values(overrides: list[str]) -> list[str]:
    """Each override at its first swept value."""
    out = []
    for ov, text in zip(parse_overrides(overrides), overrides):
        out.append(f"{text.split('=', 1)[0]}={next(iter(ov.sweep_string_iterator()))}"
                   if ov.is_sweep_override() else text)
    return out


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def check_hydra_overrides(hydra_overrides: list[str], first: list[str], cfg) -> None:
    """Launcher choice and ``hydra.*`` keys, composed with the first combination: an unknown
    launcher, one whose plugin is not installed, a key the launcher lacks (``hydra.launcher.n_jobs``
    with the basic launcher), or ``distributed=true`` without a launch that starts the ranks fails
    here, in one line, before any job."""
    from hydra.core.global_hydra import GlobalHydra

    hydra_first = _first_values(hydra_overrides)
    launcher = next((o.split("=", 1)[1] for o in hydra_first if o.split("=", 1)[0].lstrip("+") == "hydra/launcher"),
                    "basic")
    if cfg.get("distributed", False):
        if launcher == "joblib":
            raise ConfigError("hydra/launcher", launcher, "basic (under torchrun every rank runs the jobs in the "
                              "same order) or slurm / submitit_local with tasks_per_node=N, with distributed=true")
        if launcher == "basic" and distributed.launcher_world_size() is None:
            raise ConfigError("distributed", True, "a launch that starts the ranks: `torchrun --nproc_per_node=N "
                              "-m enkf_repro run ... distributed=true`, or hydra/launcher=slurm with "
                              "hydra.launcher.tasks_per_node=N; or distributed=false")
    if not hydra_overrides:
        return
    if launcher in PLUGIN_LAUNCHERS and not _importable(PLUGIN_LAUNCHERS[launcher]):
        raise ConfigError("hydra/launcher", launcher, "an installed launcher: pip install 'enkf-repro[cluster]' "
                          "(hydra-joblib-launcher, hydra-submitit-launcher)")
    from hydra import compose as hydra_compose

    try:
        with hydra_context():
            options = GlobalHydra.instance().config_loader().get_group_options("hydra/launcher")
            if launcher not in options:
                raise ConfigError("hydra/launcher", launcher, "one of " + ", ".join(sorted(options)))
            hydra_compose(config_name="config", overrides=first + hydra_first, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError, KeyError) as e:
        if full_error():
            raise
        raise _one_line(e) from None


def prevalidate(overrides: list[str]) -> None:
    """Compose and plan each swept value (the others at their first value), check the launcher
    overrides and every run's data, before Hydra starts any job."""
    plain = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    hydra_overrides = [o for o in overrides if o.lstrip("+~").startswith("hydra")]
    choices = []
    for ov, text in zip(parse_overrides(plain), plain):
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
        cfg = compose(combo)
        if combo is first:
            check_hydra_overrides(hydra_overrides, first, cfg)
        specs += plan(cfg)
    check_runs(specs)


class SweepJobFailed(CompactHydraException):
    """A sweep job's one-line error, raised so that the launcher records this job as failed and runs
    the others; Hydra then ends the sweep with exit status 1, printing the failed job's overrides
    and this line (a compact Hydra error: no traceback)."""


def hydra_task(cfg) -> None:
    """The ``@hydra.main`` task: one job of ``enkf-repro run`` (the whole run, or one of a sweep)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    cfg.overrides = list(hc.overrides.task)
    try:
        out = run_figure(cfg)
        if not quiet_rank():
            print(f"enkf-repro: results in {out}", file=sys.stderr)
    except Interrupted as e:
        # SIGINT / SIGTERM: this job checkpointed; stop the whole sweep (no further job starts) and
        # let the command exit 130 with the resume hint
        print(f"enkf-repro: {e}", file=sys.stderr)
        raise KeyboardInterrupt from None
    except EnkfReproError as e:
        if full_error():
            raise
        print(f"enkf-repro: {e}", file=sys.stderr)
        if str(getattr(hc.mode, "name", hc.mode)) == "MULTIRUN":
            # a sweep job: fail this job only instead of exiting the launcher's process
            raise SweepJobFailed(f"enkf-repro: {e}") from None
        sys.exit(e.exit_code)


def clean_help(text: str) -> str:
    """Hydra's ``--help`` for ``enkf-repro run``: the structured schemas registered beside the YAML
    options (``optimizer: ... eki_schema``, ``figure_settings``) are not choices; drop them."""
    out = []
    for line in text.splitlines():
        if line.startswith("figure_settings:"):
            continue
        if line.startswith("optimizer:"):
            names = [n.strip() for n in line.split(":", 1)[1].split(",")]
            line = "optimizer: " + ", ".join(n for n in names if n and not n.endswith("_schema"))
        out.append(line.replace("launch is powered by Hydra.", "enkf-repro run is powered by Hydra."))
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def with_owner(e: ConfigError) -> ConfigError:
    """A key of another method's ``optimizer.*`` (``optimizer.h0`` with ``optimizer=enkf``): the
    error says which methods have it."""
    from ..config.options import methods_with_key

    key = getattr(e, "key", "") or ""
    if not key.startswith("optimizer.") or "has no key" not in str(e):
        return e
    owners = methods_with_key(key)
    if not owners:
        return e
    return ConfigError.line(f"{e}; {key.split('.', 1)[1]} belongs to " + " and ".join(
        f"optimizer={o}" for o in owners) + f" (choose it, e.g. optimizer={owners[0]} {key}=...)")


def run_main(args: list[str]) -> int:
    """``enkf-repro run [flags] [overrides]``."""
    import hydra

    args = normalize_figure_args(args)
    flags, overrides = split_flags(args)
    modes = [f for f in flags if f in ("-m", "--multirun", "-c", "--cfg", "-i", "--info", "--run", "-r")]
    if len(modes) > 1:
        raise ConfigError("flags", " ".join(modes), "one of -m/--multirun, --cfg, --info, --run at a time "
                          "(to see a sweep's launcher config, use --cfg hydra without -m)")
    try:
        if not (set(flags) & HYDRA_INFO_FLAGS):
            prevalidate(overrides)
        elif not set(flags) & {"--help", "-h", "--hydra-help", "--version", "--shell-completion", "-sc"}:
            plan(compose(_first_values([o for o in overrides if not o.lstrip("+~").startswith("hydra")])))
    except ConfigError as e:
        raise with_owner(e) from None
    register_configs()
    old_argv = sys.argv
    sys.argv = ["enkf-repro"] + args
    helping = bool(set(flags) & {"--help", "-h"})
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf) if helping else contextlib.nullcontext():
            hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(hydra_task)()
    finally:
        sys.argv = old_argv
        if helping:
            sys.stdout.write(clean_help(buf.getvalue()))
    return 0
