"""Plan and execute the runs of a figure: ``run_figure(cfg, out_dir) -> Path``, the library entry
behind ``enkf-repro run``.

A figure's runs are its variants x seeds (``experiments/``). The figure's config is composed once
by Hydra (``config.compose``, with the user's overrides: ``enkf-repro run figure=8
dataset=fashion_mnist`` changes the dataset of every run); a variant that switches a config group
(``optimizer=adam``) is composed once more with that choice. Each run's config is then that
composed config with data merged on (``OmegaConf``): the figure's per-scale ``overrides``, the
variant's values, the series' ``series_overrides``, skipping every key the user set (the user's
overrides win). Runs whose configs come out identical are done once; finished runs are skipped; an
interrupted run resumes from its checkpoint.

Faults: before any data is loaded every run's memory plan is checked against the memory free on
its device (``runs/memory.py``; one line with the fixes when it does not fit); a run whose
folder holds a damaged file is repaired (a config rewritten from the run's settings) or trained
again, the damaged file set aside; an out-of-memory error during a run is one line saying that
the last good checkpoint is intact and how to resume. docs/faults.md has the whole table.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from omegaconf import DictConfig

from ..config.compose import GROUPS, compose
from ..config.identity import changed_settings, config_hash, short_name, to_plain
from ..config.nested import flatten, nest, without
from ..config.overrides import config_dir, format_value, is_hydra_override, override_key
from ..config.schema import name_of
from ..config.validate import validate
from ..errors import ConfigError, DivergenceError, EnkfReproError, OutOfMemory
from ..experiments.base import get_figure
from ..models.ensemble import is_out_of_memory, planned_chunk, resolve_device
from . import budget, distributed
from .comm import LocalComm
from .folder import CONFIG, DONE, PARAMS, FollowerWriter, RunBusy, RunFolder, RunWriter, figure_dir, slug
from .loop import train_run
from .memory import check_memory, device_free
from .progress import duration
from .results import config_columns

# Overrides that select runs rather than configure them.
PLAN_ONLY_KEYS = {"seed", "only"}


@dataclass
class RunSpec:
    figure: str                 # "8", "eki_table", or "none" for a single run
    config_name: str | None     # "fig8" (folder name) or None
    label: str                  # series label, from the run's resolved config
    seed: int
    cfg: DictConfig             # the composed run config
    overrides: tuple[str, ...]  # what reproduces it: enkf-repro run <overrides>
    # "key=value;..." of the settings that differ from the group defaults (None: worked out when
    # the run is written, which composes the defaults of its group choices)
    settings: str | None = None

    @functools.cached_property
    def run_id(self) -> str:
        """The hash of the settings that change the run's numbers (computed once: a spec's config
        does not change in those once planned)."""
        return config_hash(self.cfg)

    @property
    def dir(self) -> Path:
        base = figure_dir(self.cfg.out_dir, name_of(self.cfg.scale.name), self.config_name)
        return base / f"{slug(self.label)}-s{self.seed}-{self.run_id}"

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.dir)

    @property
    def columns(self) -> dict[str, Any]:
        """The constant CSV columns of the run's rows."""
        if self.settings is None:
            self.settings = settings_text(changed_settings(self.cfg, group_defaults(self.cfg)))
        return config_columns(self.cfg, self.figure, self.label, self.settings)

    def describe(self) -> str:
        head = f"fig {self.figure} " if self.figure != "none" else ""
        return f"{head}{self.label} seed={self.seed}"


def _matches(series: str, pattern: str | None) -> bool:
    """Whether ``only=pattern`` selects ``series``: any ``|``-separated part that is a glob
    (``*J100*``) matching the whole series, or whose dash-separated words appear, in order and
    together, among the series' (``relu``, ``J100`` and ``logistic-J100`` select
    ``logistic-J100``; ``J100`` does not select ``logistic-J10000``)."""
    if not pattern:
        return True
    words = series.split("-")
    for part in str(pattern).split("|"):
        part = part.strip()
        if not part:
            continue
        if any(c in part for c in "*?["):
            if fnmatch.fnmatch(series, part):
                return True
            continue
        want = part.split("-")
        if any(words[i:i + len(want)] == want for i in range(len(words) - len(want) + 1)):
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


def user_overrides(cfg: DictConfig) -> list[str]:
    """The overrides ``cfg`` was composed with, but Hydra's own."""
    return [o for o in cfg.overrides if not is_hydra_override(o)]


def merged(cfg: DictConfig, data: dict, what: str) -> DictConfig:
    """A copy of ``cfg`` with the nested ``data`` merged on; a key or value the config cannot take
    is one ConfigError line (``what`` says where the data came from)."""
    return merge_into(cfg.copy(), data, what)


def merge_into(cfg: DictConfig, data: dict, what: str) -> DictConfig:
    """:func:`merged` in place: ``cfg`` itself takes ``data`` (no copy)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg.merge_with(data)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "?"
        value = OmegaConf.select(OmegaConf.create(data), key, default=None) if key != "?" else None
        reason = str(getattr(e, "msg", "") or e).strip().splitlines()[0]
        raise ConfigError(key, value, f"a key and value of the run config ({reason}; set by {what})") from None
    return cfg


def as_overrides(data: dict) -> list[str]:
    """Nested data as the override strings that set it (the record of what reproduces a run)."""
    return [f"{k}={format_value(v)}" for k, v in flatten(data).items()]


def single_run(cfg: DictConfig, user: list[str]) -> RunSpec:
    """The run of a config without a figure, with its scale's preset for single runs (smoke: fewer
    batches and a test subset, the protocol unchanged), named by what differs from the defaults."""
    from omegaconf import OmegaConf

    keys = {override_key(o) for o in user} - set(GROUPS)
    preset = without(OmegaConf.to_container(cfg.scale.single, resolve=True), keys)
    run_cfg = merged(cfg, preset, "the scale's single-run preset") if preset else cfg
    validate(run_cfg)
    named = changed_settings(run_cfg, merged(group_defaults(cfg), preset, "the scale's single-run preset"))
    label = "-".join(p for p in (str(run_cfg.optimizer.name), name_of(run_cfg.model.name), short_name(named)) if p)
    return RunSpec("none", None, label[:120], int(run_cfg.seed), run_cfg, tuple(user + as_overrides(preset)))


def _choice(cfg: DictConfig, group: str) -> str:
    return name_of(cfg[group].name)


def plan(cfg: DictConfig) -> list[RunSpec]:
    """The runs ``cfg`` asks for: one per (variant, seed) of its figure, or the single run."""
    fig_id = str(cfg.figure.id)
    user = user_overrides(cfg)
    if fig_id == "none":
        return [single_run(cfg, user)]
    fig = get_figure(fig_id)
    if not fig.needs_runs:
        return []
    settings = fig.settings_of(cfg)
    chosen = {override_key(o) for o in user}
    keys = chosen - set(GROUPS)   # values the user set (a group choice leaves the values in it to the data)
    every = fig.variants(cfg, settings)
    variants = [v for v in every if _matches(v.series, cfg.only)]
    if not variants:
        labels = ", ".join(dict.fromkeys(v.series for v in every))
        raise ConfigError("only", cfg.only, f"a pattern matching one of: {labels}")
    # a variant starting from another's final state needs that run's id: the source is planned
    # even when only= leaves it out (then it is not run)
    wanted = {v.series for v in variants}
    sources = {v.state_from for v in variants if v.state_from}
    variants = [v for v in every if v.series in wanted or v.series in sources]
    specs: list[RunSpec] = []
    by_series: dict[tuple[str, int], RunSpec] = {}
    seen: set[str] = set()
    for v in variants:
        groups = {g: o for g, o in v.groups.items() if g not in chosen and _choice(cfg, g) != o}
        data = [without(settings.overrides, keys), without(nest(v.values), keys),
                without(settings.series_overrides.get(v.series) or {}, keys)]
        try:
            # one copy per variant: compose() returns a fresh one, the parts merge into it in place
            run_cfg = compose(user + [f"{g}={o}" for g, o in groups.items()]) if groups else cfg.copy()
            for part, what in zip(data, ("the figure's overrides", "the series", "the series' overrides")):
                if part:
                    merge_into(run_cfg, part, f"{what}, figure {fig_id} series {v.series}")
        except ConfigError as e:
            # e.g. optimizer.lr=... on a figure that also runs the EnKF (which has no lr)
            raise EnkfReproError(
                f"series {v.series!r} of figure {fig_id}: {e} (run the other series with only=..., or set it for "
                f"one series with ++figure.<scale>.series_overrides.<series>.<key>=<value>)") from None
        validate(run_cfg)
        label = fig.label(run_cfg, v.series) if fig.label is not None else v.series
        recipe = [o for o in user if override_key(o) not in PLAN_ONLY_KEYS] + \
            [f"{g}={o}" for g, o in groups.items()] + [o for part in data for o in as_overrides(part)]
        for i in range(int(settings.seeds)):
            seed = int(cfg.seed) + i
            seeded = run_cfg if i == 0 else run_cfg.copy()   # the variant's own copy serves its first seed
            seeded.seed = seed
            extra: tuple[str, ...] = ()
            if v.state_from:
                source = by_series.get((v.state_from, seed))
                if source is None:
                    raise ConfigError.line(f"figure {fig_id}: series {v.series!r} starts from series "
                                           f"{v.state_from!r}, which the figure does not plan before it")
                seeded.optimizer.state_from = source.run_id
                extra = (f"optimizer.state_from={source.run_id}",)
            spec = RunSpec(fig_id, fig.config, label, seed, seeded, tuple(recipe) + extra + (f"seed={seed}",))
            by_series[(v.series, seed)] = spec
            if spec.run_id in seen or v.series not in wanted:
                continue
            seen.add(spec.run_id)
            specs.append(spec)
    return specs


def check_runs(specs: Iterable[RunSpec], memory: bool = True) -> None:
    """Fail before any work when a run's dataset files are missing, its batch does not fit, it
    cannot run over several processes, or (``memory``) it does not fit in the memory of its device
    (each distinct dataset config and batch, and each run, checked once). A plan for a device not
    here (a dry run for ``device=cuda``) checks no memory."""
    from ..data.datasets import dataset_sizes

    seen = set()
    planned: set[str] = set()
    free: dict[str, tuple[int | None, str]] = {}
    for spec in specs:
        cfg = spec.cfg
        world = 1
        if cfg.get("distributed", False):
            distributed.validate_distributed(cfg)
            world = distributed.launcher_world_size() or 1
        key = (repr(to_plain(cfg.dataset)), int(cfg.train.batch_size))
        if key not in seen:
            seen.add(key)
            sizes = dataset_sizes(cfg.dataset)
            if sizes is not None and cfg.train.batch_size > sizes[0]:
                raise ConfigError("train.batch_size", cfg.train.batch_size,
                                  f"at most the training set size {sizes[0]} of dataset {name_of(cfg.dataset.name)}")
        if memory and spec.run_id not in planned:
            planned.add(spec.run_id)
            device = resolve_device(cfg.device)
            if str(device) not in free:
                free[str(device)] = device_free(device)
            check_memory(cfg, device, world=world, free=free[str(device)][0], where=free[str(device)][1])


def _open_run(spec: RunSpec, restart: bool, comm) -> RunWriter | dict:
    """Rank 0 (or the only process) decides skip / reuse / resume and opens the run folder; the
    other ranks get the decision, any error, and the resume state (all collective)."""
    leader = comm.rank == 0
    status = None
    folder = spec.folder
    if leader and not restart:
        restart = _repair(spec)
    state = folder.state if leader and not restart else None
    if state == "diverged":   # the same config diverges again: report it, do not retrain
        status = {"status": "diverged", "message": folder.summary().get("message", ""), "dir": str(spec.dir)}
    elif state == "finished":
        status = {"status": "skipped", "dir": str(spec.dir)}
    elif leader and not restart and (
            source := RunFolder.finished_with_id(spec.cfg.out_dir, spec.run_id, other_than=spec.dir)) is not None:
        folder.copy_from(source, spec.columns)
        status = {"status": "reused", "dir": str(spec.dir), "source": str(source.path)}
    status = comm.broadcast_object(status)
    if status is not None:
        return status
    writer, err, exc = None, None, None
    if leader:
        try:
            writer = folder.open(spec.cfg, spec.columns, restart=restart,
                                 checkpoint_every=int(spec.cfg.checkpoint_every), comm=comm)
        except EnkfReproError as e:
            err, exc = (type(e).__name__, str(e), e.exit_code), e
    err = comm.broadcast_object(err)
    if exc is not None:
        raise exc
    distributed.raise_shared(err)
    resume = comm.broadcast_object(distributed.without_ensemble(writer.resume_state) if leader else None)
    if leader:
        for line in writer.repaired:
            say(f"{spec.describe()}: {line}")
    if leader and writer.resume_state is not None:
        say(f"{spec.label} seed={spec.seed}: resumed from iteration {writer.resume_state['loop']['iteration']}")
    return writer if leader else FollowerWriter(comm, folder, resume, int(spec.cfg.checkpoint_every))


def _repair(spec: RunSpec) -> bool:
    """Repair the damaged files of the run's folder before it is opened (RunFolder.damage): a
    config that does not load is rewritten from the run's settings (the folder's name carries the
    run's id); damaged rows, summary or params of a finished run are set aside and the run is
    trained again (True: open it with restart). The damaged rows of a run still going are the
    writer's (it resumes when the damage lies past its checkpoint)."""
    folder = spec.folder
    damage = folder.damage()
    if damage is not None and damage.file.name == CONFIG:
        folder.write_config(spec.cfg)
        say(f"{spec.describe()}: {damage}; rewritten from this run's settings")
        damage = folder.damage()
    if damage is None:
        return False
    if not (folder.path / DONE).exists():   # a run still going or cut short
        if damage.file.name == PARAMS:       # written again at its end
            kept = folder.set_aside(PARAMS)
            say(f"{spec.describe()}: {damage}; set aside as {kept.name}, the run writes it again")
        return False
    kept = folder.set_aside(damage.file.name)
    say(f"{spec.describe()}: {damage}; training this run again from the start (the damaged file kept as {kept.name})")
    return True


def _out_of_memory(spec: RunSpec, writer: RunWriter, text: str, chunk: int | None) -> OutOfMemory:
    """The one line of an out-of-memory error during the run (``text``, at ``chunk`` members per
    forward call if known): the last good checkpoint and the chunk size (or ranks) to resume with."""
    smaller = max(1, (chunk or planned_chunk_of(spec.cfg)) // 2)
    todo = (f"rerun with ensemble.chunk_size={smaller} (or over more GPUs: torchrun ... distributed=true) "
            f"or free memory")
    return OutOfMemory(f"{spec.dir}: {text}; {writer.resume_hint(todo)} (a smaller optimizer.ensemble_size starts "
                       f"another run)")


def planned_chunk_of(cfg) -> int:
    """The most members per forward call of the run ``cfg`` on its device."""
    from ..models.registry import build_model

    try:
        return planned_chunk(build_model(cfg.model), int(cfg.train.batch_size), resolve_device(cfg.device),
                             cfg.ensemble.chunk_size)
    except Exception:  # noqa: BLE001 - only a suggestion in a message
        return 2


def run_one(spec: RunSpec, restart: bool = False, *, data=None, model=None) -> dict[str, Any]:
    """Train one run into its folder (every rank of it, with ``distributed=true``); returns its
    status record: skipped, reused, finished or diverged. ``data`` (a ``Data``) and ``model`` (a
    ``ModelSpec``) are handed to the loop ready-made (``enkf_repro.train``)."""
    comm = distributed.setup(spec.cfg) if spec.cfg.get("distributed", False) else LocalComm()
    if comm.world == 1 and (restart or not spec.folder.done):
        # what is free may have changed since check_runs (and enkf_repro.train hands its own data and model)
        sizes = (data.train_x.shape[0], data.test_x.shape[0], data.num_classes) if data is not None else None
        check_memory(spec.cfg, model=model, sizes=sizes)
    writer = _open_run(spec, restart, comm)
    if isinstance(writer, dict):
        return writer
    try:
        t0 = time.perf_counter()
        oom: tuple[str, int | None] | None = None
        try:
            summary = train_run(spec.cfg, writer, spec.label, comm, data=data, model=model)
        except DivergenceError as e:
            writer.finish({"status": "diverged", "message": str(e)})
            return {"status": "diverged", "message": str(e), "dir": str(spec.dir)}
        except Exception as e:
            if not (isinstance(e, OutOfMemory) or is_out_of_memory(e)):
                raise
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            where = resolve_device(spec.cfg.device)
            text = str(e) if isinstance(e, OutOfMemory) else f"out of memory on {where} ({first})"
            oom = (text, getattr(e, "chunk", None))
        if oom is not None:   # raised out of the except block: the run's tensors are let go first
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise _out_of_memory(spec, writer, *oom) from None
        if comm.world > 1:
            summary["ranks"] = comm.world
        writer.finish({"status": "finished", **summary, "overrides": list(spec.overrides)})
        out = {"status": "finished", "seconds": time.perf_counter() - t0, "dir": str(spec.dir)}
        if summary.get("stopped_early"):
            out["stopped_early"] = f"stopped at iteration {summary['iterations']}: {summary['stopped_early']}"
        return out
    finally:
        writer.close()


def quiet_rank() -> bool:
    """True on the ranks other than 0 of a torchrun launch: they do the work but do not report."""
    return int(os.environ.get("RANK", "0")) != 0


def say(msg: str) -> None:
    if not quiet_rank():
        print(msg, file=sys.stderr, flush=True)


@dataclass
class Outcome:
    """What :func:`execute` did: each run's status record (in order), the runs still to do when a
    time budget stopped it, and the runs that diverged."""

    statuses: list[tuple[RunSpec, dict]]
    left: int = 0
    diverged: list[RunSpec] = field(default_factory=list)


def _status_text(status: dict, spec: RunSpec) -> str:
    kind = status["status"]
    if kind == "skipped":
        return f"already finished ({spec.dir})"
    if kind == "reused":
        return f"the same run finished in {status['source']}; copied, not retrained -> {spec.dir}"
    if kind == "diverged":
        return f"diverged: {status['message']} (CSV kept in {spec.dir})"
    early = f" ({status['stopped_early']})" if status.get("stopped_early") else ""
    return f"finished in {status['seconds']:.1f} s{early} -> {spec.dir}"


def execute(specs: list[RunSpec], *, restart: bool = False, time_budget: str | None = None,
            weights: dict[int, float] | None = None) -> Outcome:
    """Run (or resume, or skip) ``specs`` in order: the one execution loop of ``run`` and
    ``reproduce``. A run another process holds is skipped with a message; when the time budget
    (``time_budget``, or the SLURM job's end) is spent, the running run checkpoints and no
    further run starts (``Outcome.left`` says how many are left). ``weights`` (cost per spec, by
    ``id``) adds an overall progress share and ETA to each line."""
    budget.start(time_budget)
    total = sum(weights.values()) if weights else 0.0
    t0, done_weight = time.perf_counter(), 0.0
    out = Outcome([])
    for i, spec in enumerate(specs, 1):
        head = f"[{i}/{len(specs)}] {spec.describe()}"
        try:
            if budget.expired():
                raise budget.BudgetSpent("time budget spent")
            status = run_one(spec, restart)
        except RunBusy as e:   # another process is training this run: leave it to that one
            say(f"{head}: skipped, {e}")
            continue
        except budget.BudgetSpent as e:
            out.left = sum(not s.folder.done for s in specs[i - 1:])
            say(f"{head}: {e}; {out.left} run{'s' if out.left != 1 else ''} left: rerun the same command to "
                f"continue")
            break
        out.statuses.append((spec, status))
        if status["status"] == "diverged":
            out.diverged.append(spec)
        line = f"{head}: {_status_text(status, spec)}"
        if weights:
            done_weight += weights.get(id(spec), 0.0)
            elapsed = time.perf_counter() - t0
            eta = elapsed / done_weight * (total - done_weight) if done_weight else float("nan")
            line += (f"; overall {100 * done_weight / max(total, 1e-9):.0f} %, elapsed {duration(elapsed)}, "
                     f"ETA {duration(eta)}")
        say(line)
    return out


def run_figure(cfg: DictConfig, out_dir: str | Path | None = None) -> Path:
    """Run (or resume, or skip) every run of the figure in the composed config ``cfg`` (or its
    single run) into ``out_dir`` (default ``cfg.out_dir``); return the figure folder."""
    if out_dir is not None:
        cfg = cfg.copy()
        cfg.out_dir = str(out_dir)
        cfg.overrides = [o for o in cfg.overrides if not o.startswith("out_dir=")] + [f"out_dir={out_dir}"]
    specs = plan(cfg)
    check_runs(specs)
    outcome = execute(specs, restart=bool(cfg.restart), time_budget=cfg.get("time_budget"))
    out = figure_dir(cfg.out_dir, name_of(cfg.scale.name), specs[0].config_name if specs else None)
    if outcome.diverged:
        raise DivergenceError(f"{len(outcome.diverged)} of {len(specs)} runs diverged; their CSVs are kept under {out}")
    return out
