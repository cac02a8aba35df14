"""Live logging of a run besides its CSV (the record, ``runs/folder.py``): plug-ins chosen by
``logger=``.

* ``csv``: nothing more (the default);
* ``tensorboard``: event files through ``torch.utils.tensorboard`` (needs the ``tensorboard``
  package), one folder per run, ``<logger_dir>/<run folder name>/`` with ``logger_dir``
  defaulting to ``<out_dir>/<scale>/tensorboard``: ``tensorboard --logdir <that folder>`` shows
  every run side by side; a resumed run drops its events after the checkpoint (``purge_step``);
* ``mlflow`` (when installed): one MLflow run per run, named by its folder, with the run's
  settings as parameters and every metric; ``logger_dir`` sets the tracking folder (default:
  MLflow's own, ``$MLFLOW_TRACKING_URI`` or ``./mlruns``).

Several at once: ``logger=tensorboard+mlflow`` (or a list). A logger receives every evaluation's
rows (test error and loss, the method's diagnostics; per-layer rows tagged ``metric/layer``) and
the scalars of every step (``train_misfit``, ``train_loss``, ``step_size``, ...). Own plug-ins:
:func:`register_logger` ``(name, factory)``, ``factory(RunInfo) -> Logger``; from Python,
``enkf_repro.train(..., callbacks=[fn])`` calls ``fn(iteration, metrics)`` the same way.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..config.schema import name_of
from ..errors import ConfigError


@dataclass
class RunInfo:
    """What a logger is opened with: the run's name (its folder's), folder, config as flat
    settings, the folder for the logger's files and the iteration it starts at (> 0: resumed)."""

    name: str
    run_dir: Path
    settings: dict = field(default_factory=dict)
    log_dir: Path | None = None
    start: int = 0


class Logger:
    """A plug-in: ``log(iteration, metrics)`` for each evaluation and step, ``close()`` at the end."""

    def log(self, iteration: int, metrics: Mapping[str, float]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TensorBoardLogger(Logger):
    """Scalars into TensorBoard event files (``torch.utils.tensorboard.SummaryWriter``)."""

    def __init__(self, run: RunInfo):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("logger", "tensorboard", "an installed logger: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run.log_dir / run.name), purge_step=run.start or None)

    def log(self, iteration: int, metrics: Mapping[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, iteration)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class MLflowLogger(Logger):
    """One MLflow run per run: its settings as parameters, every metric by iteration."""

    def __init__(self, run: RunInfo):
        try:
            import mlflow
        except ImportError:
            raise ConfigError("logger", "mlflow", "an installed logger: pip install mlflow (or logger=tensorboard)"
                              ) from None
        self.mlflow = mlflow
        if run.log_dir is not None:
            mlflow.set_tracking_uri(Path(run.log_dir).resolve().as_uri())
        mlflow.set_experiment("enkf-repro")
        self.run = mlflow.start_run(run_name=run.name)
        params = {k: str(v)[:250] for k, v in run.settings.items()}
        for i in range(0, len(params), 100):          # MLflow takes at most 100 parameters per call
            mlflow.log_params(dict(list(params.items())[i: i + 100]))

    def log(self, iteration: int, metrics: Mapping[str, float]) -> None:
        self.mlflow.log_metrics(dict(metrics), step=iteration)

    def close(self) -> None:
        self.mlflow.end_run()


class CallbackLogger(Logger):
    """``fn(iteration, metrics)`` for every evaluation and step (``enkf_repro.train(callbacks=...)``)."""

    def __init__(self, fn: Callable[[int, dict], Any]):
        self.fn = fn

    def log(self, iteration: int, metrics: Mapping[str, float]) -> None:
        self.fn(iteration, dict(metrics))


LOGGERS: dict[str, Callable[[RunInfo], Logger] | None] = {
    "csv": None,                       # the CSV is always written
    "tensorboard": TensorBoardLogger,
    "mlflow": MLflowLogger,
}


def register_logger(name: str, factory: Callable[[RunInfo], Logger]) -> None:
    """Make ``logger=<name>`` open ``factory(RunInfo)`` for every run."""
    LOGGERS[str(name)] = factory


def logger_names(value: Any) -> list[str]:
    """``logger=`` as a list of names: ``"tensorboard"``, ``"tensorboard+mlflow"``, a list; checked."""
    if value is None:
        return []
    if isinstance(value, str):
        names = value.replace(",", "+").split("+")
    else:                                       # a list (or an OmegaConf ListConfig)
        names = [str(v) for v in value]
    names = [n.strip() for n in names if n.strip()]
    for n in names:
        if n not in LOGGERS:
            raise ConfigError("logger", n, "one of " + ", ".join(LOGGERS) + " (several: tensorboard+mlflow)")
    return names


_CALLBACKS: contextvars.ContextVar[tuple] = contextvars.ContextVar("enkf_repro_callbacks", default=())


@contextlib.contextmanager
def callbacks(fns: Iterable[Callable[[int, dict], Any]] | None):
    """The runs started inside also call each of ``fns`` as a logger (``enkf_repro.train(callbacks=)``)."""
    token = _CALLBACKS.set(tuple(fns or ()))
    try:
        yield
    finally:
        _CALLBACKS.reset(token)


class Loggers:
    """The run's open loggers: ``rows(iteration, rows)`` (CSV rows of an evaluation) and
    ``step(iteration, scalars)``; falsy when there is none (the loop then does no extra work)."""

    def __init__(self, loggers: list[Logger]):
        self.loggers = loggers

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def log(self, iteration: int, metrics: Mapping[str, Any]) -> None:
        values = {}
        for k, v in metrics.items():
            try:
                f = float(v.item() if hasattr(v, "item") else v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(f):
                values[k] = f
        if values:
            for lg in self.loggers:
                lg.log(iteration, values)

    def rows(self, iteration: int, rows: Iterable[Mapping[str, Any]]) -> None:
        metrics = {}
        for r in rows:
            tag = r["metric"] + "".join(f"/{r[k]}" for k in ("layer", "bin") if r.get(k) not in (None, ""))
            metrics[tag] = r["value"]
        self.log(iteration, metrics)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


def open_loggers(cfg, run: RunInfo) -> Loggers:
    """The loggers ``cfg.logger`` names (plus the callbacks of the calling ``train``), opened for ``run``."""
    names = logger_names(cfg.get("logger", "csv"))
    out: list[Logger] = []
    for n in names:
        factory = LOGGERS[n]
        if factory is None:
            continue
        log_dir = cfg.get("logger_dir")
        where = Path(log_dir) if log_dir else (None if n == "mlflow" else
                                               Path(cfg.out_dir) / name_of(cfg.scale.name) / n)
        out.append(factory(RunInfo(run.name, run.run_dir, run.settings, where, run.start)))
    out += [CallbackLogger(fn) for fn in _CALLBACKS.get()]
    return Loggers(out)
