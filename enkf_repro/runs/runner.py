"""Plan and execute the runs of a figure: ``run_figure(cfg, out_dir) -> Path``, the library entry
behind ``enkf-repro run``.

A figure's runs are its variants x seeds (``experiments/``). Each run's config is composed once
(``config.compose``) from the figure's per-scale overrides, the variant's overrides and, last, the
overrides the config itself was composed with (``cfg.overrides``: the user's, so
``enkf-repro run figure=8 dataset=fashion_mnist`` changes the dataset of every run). Runs whose
configs come out identical are done once; finished runs are skipped; an interrupted run resumes
from its checkpoint.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig

from ..config.compose import GROUPS, compose, config_dir, flatten_overrides, format_value, merge_overrides, override_key
from ..config.identity import changed_settings, config_hash, short_name, to_plain
from ..config.schema import name_of
from ..config.validate import validate
from ..errors import ConfigError, DivergenceError, EnkfReproError
from ..experiments.base import get_figure
from ..optim.distributed_enkf import LocalComm
from . import budget, distributed
from .loop import train_run
from .results import config_columns, figure_dir, run_state, slug, write_json_atomic, write_text_atomic
from .rundir import FollowerRunDir, RunBusy, RunDir

# Overrides that select runs rather than configure them.
PLAN_ONLY_KEYS = {"seed", "only"}
GROUP_KEYS = set(GROUPS)


@dataclass
class RunSpec:
    figure: str                 # "8", "eki_table", or "none" for a single run
    config_name: str | None     # "fig8" (folder name) or None
    label: str                  # series label, from the run's resolved config
    seed: int
    cfg: DictConfig             # the composed run config
    overrides: tuple[str, ...]  # what reproduces it: enkf-repro run <overrides>
    settings: str = ""          # "key=value;..." of the settings that differ from the group defaults

    @property
    def run_id(self) -> str:
        return config_hash(self.cfg)

    @property
    def dir(self) -> Path:
        base = figure_dir(self.cfg.out_dir, name_of(self.cfg.scale.name), self.config_name)
        return base / f"{slug(self.label)}-s{self.seed}-{self.run_id}"


def settings_of(cfg: DictConfig):
    """The figure's settings at the config's scale (``figure.paper`` or ``figure.smoke``)."""
    return cfg.figure[name_of(cfg.scale.name)]


def _matches(label: str, pattern: str | None) -> bool:
    if not pattern:
        return True
    for part in str(pattern).split("|"):
        part = part.strip()
        if any(c in part for c in "*?[") and fnmatch.fnmatch(label, part):
            return True
        if part and part in label:
            return True
    return False


def group_defaults(cfg: DictConfig) -> DictConfig:
    """The config of ``cfg``'s group choices (optimizer, model, dataset, scale) and nothing else:
    what a run's settings are measured against."""
    ov = [f"optimizer={cfg.optimizer.name}", f"dataset={name_of(cfg.dataset.name)}",
          f"scale={name_of(cfg.scale.name)}"]
    if (config_dir() / "model" / f"{name_of(cfg.model.name)}.yaml").is_file():
        ov.append(f"model={name_of(cfg.model.name)}")
    return compose(ov)


def settings_text(changes: dict) -> str:
    return ";".join(f"{k}={format_value(v)}" for k, v in sorted(changes.items()))


def single_run(cfg: DictConfig, user: list[str]) -> RunSpec:
    """The run of a config without a figure, with its scale's preset for single runs (smoke: fewer
    batches and a test subset, the protocol unchanged), named by what differs from the defaults."""
    if cfg.scale.single:
        overrides = merge_overrides(flatten_overrides(cfg.scale.single), user)
        cfg = compose(overrides)
        preset = compose(merge_overrides(flatten_overrides(cfg.scale.single),
                                         [o for o in cfg.overrides if override_key(o) in GROUP_KEYS]))
    else:
        overrides, preset = user, group_defaults(cfg)
    validate(cfg)
    base = group_defaults(cfg)
    named = changed_settings(cfg, preset)
    label = "-".join(p for p in (str(cfg.optimizer.name), name_of(cfg.model.name), short_name(named)) if p)
    return RunSpec("none", None, label[:120], int(cfg.seed), cfg, tuple(overrides),
                   settings_text(changed_settings(cfg, base)))


def plan(cfg: DictConfig) -> list[RunSpec]:
    """The runs ``cfg`` asks for: one per (variant, seed) of its figure, or the single run."""
    fig_id = str(cfg.figure.id)
    user = [o for o in cfg.overrides if not o.lstrip("+~").startswith("hydra")]
    if fig_id == "none":
        return [single_run(cfg, user)]
    fig = get_figure(fig_id)
    if not fig.needs_runs:
        return []
    fig_settings = settings_of(cfg)
    scale_overrides = flatten_overrides(fig_settings.overrides)
    variants = [v for v in fig.variants(cfg, fig_settings) if _matches(v.series, cfg.only)]
    if not variants:
        labels = ", ".join(dict.fromkeys(v.series for v in fig.variants(cfg, fig_settings)))
        raise ConfigError("only", cfg.only, f"a pattern matching one of: {labels}")
    specs: list[RunSpec] = []
    seen: set[str] = set()
    for v in variants:
        overrides = merge_overrides(scale_overrides + list(v.overrides), user, drop=PLAN_ONLY_KEYS)
        try:
            base = compose(overrides)
        except ConfigError as e:
            # e.g. optimizer.lr=... on a figure that also runs the EnKF (which has no lr)
            raise EnkfReproError(
                f"series {v.series!r} of figure {fig_id}: {e} (run the other series with only=..., or set it for "
                f"one series with ++figure.<scale>.series_overrides.<series>.<key>=<value>)") from None
        validate(base)
        label = fig.label(base, v.series) if fig.label is not None else v.series
        settings = settings_text(changed_settings(base, group_defaults(base)))
        for i in range(int(fig_settings.seeds)):
            seed = int(cfg.seed) + i
            run_cfg = base.copy()
            run_cfg.seed = seed
            spec = RunSpec(fig_id, fig.config, label, seed, run_cfg, tuple(overrides) + (f"seed={seed}",),
                           settings)
            if spec.run_id in seen:
                continue
            seen.add(spec.run_id)
            specs.append(spec)
    return specs


def check_runs(specs: Iterable[RunSpec]) -> None:
    """Fail before any work when a run's dataset files are missing, its batch does not fit, or
    it cannot run over several processes (each distinct dataset config and batch checked once)."""
    from ..data.datasets import dataset_sizes

    seen = set()
    for spec in specs:
        cfg = spec.cfg
        if cfg.get("distributed", False):
            distributed.validate_distributed(cfg)
        key = (repr(to_plain(cfg.dataset)), int(cfg.train.batch_size))
        if key in seen:
            continue
        seen.add(key)
        sizes = dataset_sizes(cfg.dataset)
        if sizes is not None and cfg.train.batch_size > sizes[0]:
            raise ConfigError("train.batch_size", cfg.train.batch_size,
                              f"at most the training set size {sizes[0]} of dataset {name_of(cfg.dataset.name)}")


def finished_elsewhere(spec: RunSpec) -> Path | None:
    """A finished run folder with this run's identity (hash) elsewhere under ``out_dir``."""
    for done in sorted(Path(spec.cfg.out_dir).glob(f"**/*-{spec.run_id}/done.json")):
        if done.parent.resolve() != spec.dir.resolve() and run_state(done.parent) == "finished":
            return done.parent
    return None


def reuse(source: Path, spec: RunSpec) -> None:
    """Copy the finished run ``source`` (same identity) into ``spec.dir``: its config, its CSV with
    this run's figure / series / settings columns, and its done.json, each written atomically."""
    import csv
    import io
    import shutil

    spec.dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "config.yaml", spec.dir / "config.yaml.tmp")
    os.replace(spec.dir / "config.yaml.tmp", spec.dir / "config.yaml")
    columns = config_columns(spec.cfg, spec.figure, spec.label, spec.settings)
    with open(source / "metrics.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        keep = {i: str(columns[h]) for i, h in enumerate(header) if h in ("figure", "series", "settings")}
        for row in reader:
            writer.writerow([keep.get(i, v) for i, v in enumerate(row)])
    write_text_atomic(spec.dir / "metrics.csv", out.getvalue())
    if (source / "params.pt").is_file():
        shutil.copyfile(source / "params.pt", spec.dir / "params.pt.tmp")
        os.replace(spec.dir / "params.pt.tmp", spec.dir / "params.pt")
    done = json.loads((source / "done.json").read_text())
    write_json_atomic(spec.dir / "done.json", {**done, "reused_from": str(source)})


def _open_run(spec: RunSpec, restart: bool, comm) -> RunDir | dict:
    """Rank 0 (or the only process) decides skip / reuse / resume and opens the run folder; the
    other ranks get the decision, any error, and the resume state (all collective)."""
    leader = comm.rank == 0
    status = None
    state = run_state(spec.dir) if leader and not restart else None
    if state == "diverged":   # the same config diverges again: report it, do not retrain
        message = json.loads((spec.dir / "done.json").read_text()).get("message", "")
        status = {"status": "diverged", "message": message, "dir": str(spec.dir)}
    elif state == "finished":
        status = {"status": "skipped", "dir": str(spec.dir)}
    elif leader and not restart and (source := finished_elsewhere(spec)) is not None:
        reuse(source, spec)
        status = {"status": "reused", "dir": str(spec.dir), "source": str(source)}
    status = comm.broadcast_object(status)
    if status is not None:
        return status
    rd, err, exc = None, None, None
    if leader:
        try:
            rd = RunDir(spec.dir, spec.cfg, config_columns(spec.cfg, spec.figure, spec.label, spec.settings),
                        restart=restart,
                        checkpoint_every=int(spec.cfg.checkpoint_every), comm=comm)
        except EnkfReproError as e:
            err, exc = (type(e).__name__, str(e), e.exit_code), e
    err = comm.broadcast_object(err)
    if exc is not None:
        raise exc
    distributed.raise_shared(err)
    resume = comm.broadcast_object(distributed.without_ensemble(rd.resume_state) if leader else None)
    if leader and rd.resume_state is not None:
        say(f"{spec.label} seed={spec.seed}: resumed from iteration {rd.resume_state['loop']['iteration']}")
    return rd if leader else FollowerRunDir(comm, spec.dir, resume, int(spec.cfg.checkpoint_every))


def run_one(spec: RunSpec, restart: bool = False, *, data=None, model=None) -> dict[str, Any]:
    """Train one run into its folder (every rank of it, with ``distributed=true``); returns its
    status record: skipped, reused, finished or diverged. ``data`` (a ``Data``) and ``model`` (a
    ``ModelSpec``) are handed to the loop ready-made (``enkf_repro.train``)."""
    comm = distributed.setup(spec.cfg) if spec.cfg.get("distributed", False) else LocalComm()
    rd = _open_run(spec, restart, comm)
    if isinstance(rd, dict):
        return rd
    try:
        t0 = time.perf_counter()
        try:
            summary = train_run(spec.cfg, rd, spec.label, comm, data=data, model=model)
        except DivergenceError as e:
            rd.finish({"status": "diverged", "message": str(e)})
            return {"status": "diverged", "message": str(e), "dir": str(spec.dir)}
        if comm.world > 1:
            summary["ranks"] = comm.world
        rd.finish({"status": "finished", **summary, "overrides": list(spec.overrides)})
        out = {"status": "finished", "seconds": time.perf_counter() - t0, "dir": str(spec.dir)}
        if summary.get("stopped_early"):
            out["stopped_early"] = f"stopped at iteration {summary['iterations']}: {summary['stopped_early']}"
        return out
    finally:
        rd.close()


def quiet_rank() -> bool:
    """True on the ranks other than 0 of a torchrun launch: they do the work but do not report."""
    return int(os.environ.get("RANK", "0")) != 0


def say(msg: str) -> None:
    if not quiet_rank():
        print(msg, file=sys.stderr, flush=True)


def run_figure(cfg: DictConfig, out_dir: str | Path | None = None) -> Path:
    """Run (or resume, or skip) every run of the figure in the composed config ``cfg`` (or its
    single run) into ``out_dir`` (default ``cfg.out_dir``); return the figure folder."""
    if out_dir is not None:
        cfg = cfg.copy()
        cfg.out_dir = str(out_dir)
        cfg.overrides = [o for o in cfg.overrides if not o.startswith("out_dir=")] + [f"out_dir={out_dir}"]
    specs = plan(cfg)
    check_runs(specs)
    budget.start(cfg.get("time_budget"))
    restart = bool(cfg.restart)
    diverged = []
    for i, spec in enumerate(specs, 1):
        head = f"[{i}/{len(specs)}] {spec.label} seed={spec.seed}"
        try:
            if budget.expired():
                raise budget.BudgetSpent("time budget spent")
            status = run_one(spec, restart)
        except RunBusy as e:
            say(f"{head}: skipped, {e}")
            continue
        except budget.BudgetSpent as e:
            left = sum(not (s.dir / "done.json").exists() for s in specs[i - 1:])
            say(f"{head}: {e}; {left} run{'s' if left != 1 else ''} left: rerun the same command to continue")
            break
        if status["status"] == "skipped":
            say(f"{head}: already finished ({spec.dir})")
        elif status["status"] == "reused":
            say(f"{head}: the same run finished in {status['source']}; copied, not retrained -> {spec.dir}")
        elif status["status"] == "diverged":
            diverged.append(spec)
            say(f"{head}: diverged: {status['message']} (CSV kept in {spec.dir})")
        else:
            early = f" ({status['stopped_early']})" if status.get("stopped_early") else ""
            say(f"{head}: finished in {status['seconds']:.1f} s{early} -> {spec.dir}")
    out = figure_dir(cfg.out_dir, name_of(cfg.scale.name), specs[0].config_name if specs else None)
    if diverged:
        raise DivergenceError(f"{len(diverged)} of {len(specs)} runs diverged; their CSVs are kept under {out}")
    return out

