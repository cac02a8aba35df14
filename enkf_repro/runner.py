"""Plan and execute the runs of a figure: ``run_figure(cfg, overrides) -> Path``.

A figure's runs are its variants x seeds (experiments/). Each run's config is composed by Hydra
from the figure's per-scale overrides, the variant's overrides and, last, the user's own
command-line overrides, so ``enkf-repro run figure=8 dataset=fashion_mnist`` changes the dataset
of every run. Runs whose composed configs are identical are done once; finished runs are
skipped; an interrupted run resumes from its checkpoint.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import config_dir, register_configs, to_plain, validate
from .errors import ConfigError, DivergenceError, EnkfReproError
from .experiments import Figure, get_figure
from .models import _name
from .results import config_columns, config_hash, figure_dir, slug, write_json_atomic
from .rundir import RunBusy, RunDir

log = logging.getLogger("enkf_repro")

# User overrides that select runs rather than configure them.
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
        base = figure_dir(self.cfg.out_dir, _name(self.cfg.scale.name), self.config_name)
        return base / f"{slug(self.label)}-s{self.seed}-{self.run_id}"


@contextlib.contextmanager
def hydra_context():
    """Make ``hydra.compose`` usable: inside ``@hydra.main`` it already is."""
    register_configs()
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        yield


def override_key(override: str) -> str:
    parsed = OverridesParser.create().parse_overrides([override])[0]
    return parsed.key_or_group


def merge_overrides(base: Iterable[str], user: Iterable[str]) -> list[str]:
    """``base`` then ``user``, dropping base overrides of keys the user sets (the user wins)."""
    user = [u for u in user if override_key(u) not in PLAN_ONLY_KEYS]
    taken = {override_key(u) for u in user}
    return [b for b in base if override_key(b) not in taken] + user


def _value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    s = str(getattr(v, "value", v))
    if isinstance(v, str) and any(c in s for c in " ,[]{}()='\"\\:"):
        return "'" + s.replace("'", "\\'") + "'"
    return s


def flatten_overrides(node: Any, prefix: str = "") -> list[str]:
    """Nested dict {train: {max_batches: 40}, optimizer: sgd} -> ["train.max_batches=40", "optimizer=sgd"]."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    out: list[str] = []
    for k, v in (node or {}).items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out += flatten_overrides(v, key)
        else:
            out.append(f"{key}={_value(v)}")
    return out


def compose_run(overrides: list[str]) -> DictConfig:
    with hydra_context():
        cfg = compose(config_name="config", overrides=list(overrides))
    validate(cfg)
    return cfg


def settings_of(cfg: DictConfig):
    return cfg.figure[_name(cfg.scale.name)]


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
    parts = [cfg.optimizer.name, _name(cfg.model.name), _name(cfg.model.activation)]
    if "ensemble_size" in cfg.optimizer:
        parts.append(f"J{cfg.optimizer.ensemble_size}")
    return "-".join(parts)


def plan(cfg: DictConfig, user_overrides: list[str]) -> list[RunSpec]:
    """The runs ``cfg`` asks for: one per (variant, seed) of its figure, or the single run."""
    fig_id = str(cfg.figure.id)
    user_overrides = [o for o in user_overrides if not o.startswith("hydra")]
    if fig_id == "none":
        validate(cfg)
        return [RunSpec("none", None, default_label(cfg), int(cfg.seed), cfg, tuple(user_overrides))]
    fig = get_figure(fig_id)
    settings = settings_of(cfg)
    scale_overrides = flatten_overrides(settings.overrides)
    variants = [v for v in fig.variants(cfg, settings) if _matches(v.series, cfg.only)]
    if not variants:
        labels = ", ".join(v.series for v in fig.variants(cfg, settings))
        raise ConfigError("only", cfg.only, f"a pattern matching one of: {labels}")
    specs: list[RunSpec] = []
    seen: set[str] = set()
    for v in variants:
        overrides = merge_overrides(scale_overrides + list(v.overrides), user_overrides)
        try:
            base = compose_run(overrides)
        except (HydraException, OmegaConfBaseException) as e:
            # e.g. optimizer.lr=... on a figure that also runs the EnKF (which has no lr)
            raise EnkfReproError(
                f"series {v.series!r} of figure {fig_id}: {str(e).strip().splitlines()[0]} (run the other "
                f"series with only=..., or set it for one series with "
                f"++figure.<scale>.series_overrides.<series>.<key>=<value>)") from None
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


def check_data(specs: Iterable[RunSpec]) -> None:
    """Fail before any work when a run's dataset files are missing or its batch does not fit
    (each distinct dataset config and batch size checked once)."""
    from .data import dataset_sizes

    seen = set()
    for spec in specs:
        cfg = spec.cfg
        key = (repr(to_plain(cfg.dataset)), int(cfg.train.batch_size))
        if key in seen:
            continue
        seen.add(key)
        sizes = dataset_sizes(cfg.dataset)
        if sizes is not None and cfg.train.batch_size > sizes[0]:
            raise ConfigError("train.batch_size", cfg.train.batch_size,
                              f"at most the training set size {sizes[0]} of dataset {_name(cfg.dataset.name)}")


def trainer_for(cfg: DictConfig):
    name = cfg.optimizer.name
    from .train import METHODS, train_ensemble

    if name in METHODS:
        return train_ensemble
    from . import backprop  # noqa: F401  (sgd / adam)

    return backprop.train_backprop


def run_one(spec: RunSpec, restart: bool = False) -> dict[str, Any]:
    """Train one run into its folder; returns its status record."""
    if spec.cfg.get("distributed", False):  # one ensemble over several processes: rank 0 writes
        from .distributed import run_one as run_one_distributed

        return run_one_distributed(spec, restart)
    done = spec.dir / "done.json"
    if done.exists() and not restart:
        return {"status": "skipped", "dir": str(spec.dir)}
    rd = RunDir(spec.dir, spec.cfg, config_columns(spec.cfg, spec.figure, spec.label), restart=restart,
                checkpoint_every=int(spec.cfg.checkpoint_every))
    try:
        t0 = time.perf_counter()
        try:
            summary = trainer_for(spec.cfg)(spec, rd)
        except DivergenceError as e:
            rd.finish({"status": "diverged", "message": str(e)})
            return {"status": "diverged", "message": str(e), "dir": str(spec.dir)}
        rd.finish({"status": "finished", **summary, "overrides": list(spec.overrides)})
        return {"status": "finished", "seconds": time.perf_counter() - t0, "dir": str(spec.dir)}
    finally:
        rd.close()


def quiet_rank() -> bool:
    """True on the ranks other than 0 of a torchrun launch: they do the work but do not report."""
    return int(os.environ.get("RANK", "0")) != 0


def _say(msg: str) -> None:
    if not quiet_rank():
        print(msg, file=sys.stderr, flush=True)


def run_figure(cfg: DictConfig, user_overrides: list[str]) -> Path:
    """Run (or resume, or skip) every run of the figure in ``cfg``; return the figure folder."""
    specs = plan(cfg, user_overrides)
    check_data(specs)
    restart = bool(cfg.restart)
    diverged = []
    for i, spec in enumerate(specs, 1):
        head = f"[{i}/{len(specs)}] {spec.label} seed={spec.seed}"
        try:
            status = run_one(spec, restart)
        except RunBusy as e:
            _say(f"{head}: skipped, {e}")
            continue
        if status["status"] == "skipped":
            _say(f"{head}: already finished ({spec.dir})")
        elif status["status"] == "diverged":
            diverged.append(spec)
            _say(f"{head}: diverged: {status['message']} (CSV kept in {spec.dir})")
        else:
            _say(f"{head}: finished in {status['seconds']:.1f} s -> {spec.dir}")
    out = figure_dir(cfg.out_dir, _name(cfg.scale.name), specs[0].config_name if specs else None)
    if diverged:
        raise DivergenceError(f"{len(diverged)} of {len(specs)} runs diverged; their CSVs are kept under {out}")
    return out


# -- cost model ------------------------------------------------------------------------------
TRAIN_SIZES = {"mnist": (60000, 10000), "fashion_mnist": (60000, 10000), "notmnist": (8000, 2000)}


# Seconds of fixed cost per step (kernel launches, Python), on top of the FLOPs: small models and
# per-sample methods are bound by these, not by arithmetic. Rough values from smoke runs on 2 CPU
# cores (thesis IEnK: ~7 ms per training sample; an EnKF or backprop step: ~2 ms).
STEP_OVERHEAD_S = {"cpu": {"step": 2e-3, "sample": 7e-3}, "cuda": {"step": 3e-4, "sample": 2e-3}}


def estimate_seconds(cfg: DictConfig, rate: float, device: str = "cpu") -> float:
    """Rough wall time of one run: its FLOPs at ``rate`` FLOP/s plus a fixed cost per step."""
    flops, steps, kind = estimate_cost(cfg)
    return flops / rate + steps * STEP_OVERHEAD_S["cuda" if device == "cuda" else "cpu"][kind]


def estimate_flops(cfg: DictConfig) -> float:
    """FLOPs of one run from reference.md's cost model (forward + update, plus evaluations)."""
    return estimate_cost(cfg)[0]


def estimate_cost(cfg: DictConfig) -> tuple[float, int, str]:
    """(FLOPs, steps, step kind) of one run: FLOPs from reference.md's cost model (forward +
    update, plus evaluations); steps are EnKF iterations, backprop steps, or training samples for
    per-sample IEnK ("sample")."""
    from .models import build_model

    model = build_model(cfg.model)
    f = model.forward_flops()
    P = model.num_params
    n_train, n_test = TRAIN_SIZES[_name(cfg.dataset.name)]
    if cfg.dataset.test_only:
        n_train, n_test = cfg.dataset.test_only_train_size, 10000 - cfg.dataset.test_only_train_size
    if cfg.dataset.test_size:
        n_test = min(n_test, cfg.dataset.test_size)
    B = cfg.train.batch_size
    per_epoch = math.ceil(n_train / B)
    if cfg.train.max_batches:
        per_epoch = min(per_epoch, cfg.train.max_batches)
    batches = math.ceil(cfg.train.epochs * per_epoch)
    opt = cfg.optimizer
    if "ensemble_size" in opt:
        J = opt.ensemble_size
        r = opt.get("repetitions", 1)
        iters = batches * r
        d = B * 10
        evals = iters // cfg.train.eval_every + 2
        flops = iters * (J * B * f + 4.0 * J * d * P) + evals * n_test * f
        if _name(opt.name) == "ienk_simple" and _name(opt.get("mode", "batch")) == "sample":
            return flops, batches * B, "sample"
        return flops, iters, "step"
    evals = batches // max(1, cfg.train.eval_every) + 2
    return batches * B * 3.0 * f + evals * n_test * f, batches, "step"
