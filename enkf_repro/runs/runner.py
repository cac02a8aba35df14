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
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig

from ..config.compose import compose, flatten_overrides, merge_overrides
from ..config.identity import config_hash, to_plain
from ..config.schema import name_of
from ..config.validate import validate
from ..errors import ConfigError, DivergenceError, EnkfReproError
from ..experiments.base import get_figure
from ..optim.distributed_enkf import LocalComm
from . import distributed
from .loop import train_run
from .results import config_columns, figure_dir, slug
from .rundir import FollowerRunDir, RunBusy, RunDir

# Overrides that select runs rather than configure them.
PLAN_ONLY_KEYS = {"seed", "only"}


@dataclass
class RunSpec:
    figure: str                 # "8", "eki_table", or "none" for a single run
    config_name: str | None     # "fig8" (folder name) or None
    label: str                  # series label
    seed: int
    cfg: DictConfig             # the composed run config
    overrides: tuple[str, ...]  # what reproduces it: enkf-repro run <overrides>

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


def default_label(cfg: DictConfig) -> str:
    parts = [cfg.optimizer.name, name_of(cfg.model.name), name_of(cfg.model.activation)]
    if "ensemble_size" in cfg.optimizer:
        parts.append(f"J{cfg.optimizer.ensemble_size}")
    return "-".join(parts)


def plan(cfg: DictConfig) -> list[RunSpec]:
    """The runs ``cfg`` asks for: one per (variant, seed) of its figure, or the single run."""
    fig_id = str(cfg.figure.id)
    user = [o for o in cfg.overrides if not o.lstrip("+~").startswith("hydra")]
    if fig_id == "none":
        validate(cfg)
        return [RunSpec("none", None, default_label(cfg), int(cfg.seed), cfg, tuple(user))]
    fig = get_figure(fig_id)
    if not fig.needs_runs:
        return []
    settings = settings_of(cfg)
    scale_overrides = flatten_overrides(settings.overrides)
    variants = [v for v in fig.variants(cfg, settings) if _matches(v.series, cfg.only)]
    if not variants:
        labels = ", ".join(dict.fromkeys(v.series for v in fig.variants(cfg, settings)))
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
        for i in range(int(settings.seeds)):
            seed = int(cfg.seed) + i
            run_cfg = base.copy()
            run_cfg.seed = seed
            spec = RunSpec(fig_id, fig.config, v.series, seed, run_cfg, tuple(overrides) + (f"seed={seed}",))
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


def _open_run(spec: RunSpec, restart: bool, comm) -> RunDir | dict:
    """Rank 0 (or the only process) decides skip / resume and opens the run folder; the other
    ranks get the decision, any error, and the resume state (all collective)."""
    leader = comm.rank == 0
    status = None
    if leader and (spec.dir / "done.json").exists() and not restart:
        status = {"status": "skipped", "dir": str(spec.dir)}
    status = comm.broadcast_object(status)
    if status is not None:
        return status
    rd, err, exc = None, None, None
    if leader:
        try:
            rd = RunDir(spec.dir, spec.cfg, config_columns(spec.cfg, spec.figure, spec.label), restart=restart,
                        checkpoint_every=int(spec.cfg.checkpoint_every), comm=comm)
        except EnkfReproError as e:
            err, exc = (type(e).__name__, str(e), e.exit_code), e
    err = comm.broadcast_object(err)
    if exc is not None:
        raise exc
    distributed.raise_shared(err)
    resume = comm.broadcast_object(distributed.without_ensemble(rd.resume_state) if leader else None)
    return rd if leader else FollowerRunDir(comm, spec.dir, resume, int(spec.cfg.checkpoint_every))


def run_one(spec: RunSpec, restart: bool = False) -> dict[str, Any]:
    """Train one run into its folder (every rank of it, with ``distributed=true``); returns its
    status record: skipped, finished or diverged."""
    comm = distributed.setup(spec.cfg) if spec.cfg.get("distributed", False) else LocalComm()
    rd = _open_run(spec, restart, comm)
    if isinstance(rd, dict):
        return rd
    try:
        t0 = time.perf_counter()
        try:
            summary = train_run(spec.cfg, rd, spec.label, comm)
        except DivergenceError as e:
            rd.finish({"status": "diverged", "message": str(e)})
            return {"status": "diverged", "message": str(e), "dir": str(spec.dir)}
        if comm.world > 1:
            summary["ranks"] = comm.world
        rd.finish({"status": "finished", **summary, "overrides": list(spec.overrides)})
        return {"status": "finished", "seconds": time.perf_counter() - t0, "dir": str(spec.dir)}
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
    restart = bool(cfg.restart)
    diverged = []
    for i, spec in enumerate(specs, 1):
        head = f"[{i}/{len(specs)}] {spec.label} seed={spec.seed}"
        try:
            status = run_one(spec, restart)
        except RunBusy as e:
            say(f"{head}: skipped, {e}")
            continue
        if status["status"] == "skipped":
            say(f"{head}: already finished ({spec.dir})")
        elif status["status"] == "diverged":
            diverged.append(spec)
            say(f"{head}: diverged: {status['message']} (CSV kept in {spec.dir})")
        else:
            say(f"{head}: finished in {status['seconds']:.1f} s -> {spec.dir}")
    out = figure_dir(cfg.out_dir, name_of(cfg.scale.name), specs[0].config_name if specs else None)
    if diverged:
        raise DivergenceError(f"{len(diverged)} of {len(specs)} runs diverged; their CSVs are kept under {out}")
    return out

