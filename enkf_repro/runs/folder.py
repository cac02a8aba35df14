"""A run's folder: the one module that knows the files of a run.

``<out_dir>/<scale>/<fig8|...|runs>/<series>-s<seed>-<hash>/`` holds

=================  =======================================================================
``config.yaml``    the resolved run config (written when the run starts)
``metrics.csv``    the tidy rows (runs/results.py) while the run goes: appended, flushed
``metrics.csv.gz`` the same rows once the run finished (gzip, reproducible bytes)
``checkpoint.pt``  while unfinished: everything a rerun resumes from
``params.pt``      the trained networks (flat parameter vectors) and the method's final state
``ensemble.pt``    the final ensemble (J x P) of an ensemble method, when kept (``keep_ensemble``)
``done.json``      the summary; it marks the run finished (or diverged)
``run.lock``       held while a process trains the run
=================  =======================================================================

:class:`RunFolder` reads a folder (state, summary, rows, config, params) and writes its
whole files atomically (a copy of another run, the summary); :meth:`RunFolder.open` gives the
:class:`RunWriter` that a training process holds: the lock, the appended CSV rows, atomic
checkpoints and the finishing steps.

The writer's contract (``runs/loop.py`` drives it):

* ``log(rows)`` appends CSV rows (one write + flush), so a killed process leaves at most an
  incomplete last line, which readers drop;
* ``checkpoint(state)`` writes ``checkpoint.pt`` atomically (temporary file, fsync, rename)
  together with the CSV's byte size at that moment; reopening the folder loads it, truncates the
  CSV back to that size and continues, so the final CSV equals an uninterrupted run's (the
  ``elapsed_s`` wall-clock column aside);
* SIGINT / SIGTERM set ``stop_requested``; the loop checkpoints and raises ``Interrupted`` (with
  several ranks, a signal on any rank stops all of them at the same iteration);
* ``save_params(params, iteration, state)`` writes ``params.pt`` atomically;
* ``finish(summary)`` compresses the rows to ``metrics.csv.gz``, writes ``done.json`` and removes
  the checkpoint and the plain CSV; a finished run is skipped by later commands.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import gzip
import io
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import torch
from omegaconf import OmegaConf

from ..config.identity import config_hash, semantic_config
from ..errors import EnkfReproError, Interrupted
from . import budget
from .comm import Comm, LocalComm
from .results import COLUMNS, CsvLog, flat_config, parse_rows, write_json_atomic, write_text_atomic

CONFIG = "config.yaml"
ROWS = "metrics.csv"
ROWS_GZ = "metrics.csv.gz"
CHECKPOINT = "checkpoint.pt"
PARAMS = "params.pt"
ENSEMBLE = "ensemble.pt"
DONE = "done.json"
LOCK = "run.lock"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_") or "run"


def figure_dir(out_dir: str | Path, scale: str, config_name: str | None) -> Path:
    """``<out_dir>/<scale>/<fig8|eki_table|...>``; single runs without a figure go to ``runs``."""
    return Path(out_dir) / scale / (config_name or "runs")


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def gzip_bytes(raw: bytes) -> bytes:
    """``raw`` gzip-compressed with a fixed header (no file name, time 0): the same rows always
    give the same bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(raw)
    return buf.getvalue()


class RunBusy(EnkfReproError):
    """Another process holds this run's lock (e.g. a parallel sweep job doing the same run)."""


class CorruptCheckpoint(EnkfReproError):
    """A checkpoint that cannot be read (truncated, corrupt, from an incompatible version)."""


class RunFolder:
    """One run's folder (module docstring): what it holds, read back; whole files written
    atomically. Cheap to create: nothing is read until asked."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # -- what is there -----------------------------------------------------------------------
    @property
    def has_rows(self) -> bool:
        return (self.path / ROWS).is_file() or (self.path / ROWS_GZ).is_file()

    @property
    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).is_file()

    @property
    def done(self) -> bool:
        return (self.path / DONE).is_file()

    @property
    def state(self) -> str:
        """``"finished"``, ``"diverged"`` (its summary records a divergence: rerunning the same
        config diverges again, so it is not retrained, and it counts as not finished) or
        ``"unfinished"``."""
        try:
            summary = json.loads((self.path / DONE).read_text())
        except FileNotFoundError:
            return "unfinished"
        except (OSError, ValueError):
            return "finished"   # written atomically: unreadable only if edited by hand
        return "diverged" if summary.get("status") == "diverged" else "finished"

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    def summary(self) -> dict:
        """The run's done.json ({} while it is unfinished or unreadable)."""
        try:
            return json.loads((self.path / DONE).read_text())
        except (OSError, ValueError):
            return {}

    def config(self) -> dict:
        """The run's resolved config as plain Python; ``{}`` when it has none."""
        path = self.path / CONFIG
        if not path.is_file():
            return {}
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)

    def flat_config(self) -> dict[str, Any]:
        return flat_config(self.config())

    def rows_path(self) -> Path | None:
        """The file holding the rows: the plain CSV while the run goes, else the compressed one."""
        for name in (ROWS, ROWS_GZ):
            if (self.path / name).is_file():
                return self.path / name
        return None

    def rows_mtime(self) -> float:
        p = self.rows_path()
        return p.stat().st_mtime if p is not None else 0.0

    def rows_bytes(self) -> bytes:
        p = self.rows_path()
        if p is None:
            return b""
        raw = p.read_bytes()
        return gzip.decompress(raw) if p.name == ROWS_GZ else raw

    def rows(self) -> pd.DataFrame:
        """The tidy rows written so far (an incomplete last line of a run still going is dropped)."""
        return parse_rows(self.rows_bytes())

    def params(self) -> dict:
        """params.pt: ``{"params": {suffix: theta (P,)}, "iteration": n, "state": {...}}``."""
        return torch.load(self.path / PARAMS, map_location="cpu", weights_only=True)

    def has_params(self) -> bool:
        return (self.path / PARAMS).is_file()

    # -- writing whole files -------------------------------------------------------------------
    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json_atomic(self.path / DONE, dict(summary))

    def copy_from(self, source: "RunFolder", columns: Mapping[str, Any]) -> None:
        """Make this folder a copy of the finished run ``source`` (the same identity): its config,
        its rows with this run's ``figure`` / ``series`` / ``settings`` columns, its params and
        its summary (noting the source), each written atomically, the summary last."""
        self.path.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.path / CONFIG, self.path / (CONFIG + ".tmp"))
        os.replace(self.path / (CONFIG + ".tmp"), self.path / CONFIG)
        reader = csv.reader(io.StringIO(source.rows_bytes().decode()))
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        header = next(reader)
        writer.writerow(header)
        keep = {i: str(columns.get(h, "")) for i, h in enumerate(header) if h in ("figure", "series", "settings")}
        for row in reader:
            writer.writerow([keep.get(i, v) for i, v in enumerate(row)])
        _write_bytes_atomic(self.path / ROWS_GZ, gzip_bytes(out.getvalue().encode()))
        (self.path / ROWS).unlink(missing_ok=True)
        for name in (PARAMS, ENSEMBLE):
            if (source.path / name).is_file():
                shutil.copyfile(source.path / name, self.path / (name + ".tmp"))
                os.replace(self.path / (name + ".tmp"), self.path / name)
        self.write_summary({**source.summary(), "reused_from": str(source.path)})

    # -- training ----------------------------------------------------------------------------
    def open(self, cfg, columns: Mapping[str, Any], *, restart: bool = False, checkpoint_every: int = 500,
             comm: Comm | None = None) -> "RunWriter":
        """Take the run's lock and open it for training (resuming from its checkpoint)."""
        return RunWriter(self, cfg, columns, restart=restart, checkpoint_every=checkpoint_every, comm=comm)

    # -- finding runs --------------------------------------------------------------------------
    @staticmethod
    def under(root: str | Path) -> list["RunFolder"]:
        """Every run folder at any depth of ``root`` (``root`` itself included): a folder with rows."""
        root = Path(root)
        found = {p.parent for name in (ROWS, ROWS_GZ) for p in root.rglob(name)}
        return [RunFolder(p) for p in sorted(found)]

    @staticmethod
    def finished_with_id(root: str | Path, run_id: str, other_than: Path | None = None) -> "RunFolder | None":
        """A finished run folder whose name ends with ``-<run_id>`` under ``root`` (not ``other_than``)."""
        skip = Path(other_than).resolve() if other_than is not None else None
        for done in sorted(Path(root).glob(f"**/*-{run_id}/{DONE}")):
            folder = RunFolder(done.parent)
            if (skip is None or folder.path.resolve() != skip) and folder.finished:
                return folder
        return None


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path``; one line naming the file and the fix when it cannot be read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or not {"state", "csv_bytes", "elapsed_s"} <= set(state):
            raise ValueError("not a checkpoint of this tool")
        return state
    except Exception as e:  # pickle, zip and EOF errors all mean the same thing here
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorruptCheckpoint(f"{path}: unreadable checkpoint ({type(e).__name__}: {reason[:120]}); rerun "
                                f"with restart=true to start this run over") from None


class RunWriter:
    """Rank 0's (or the only process's) open run folder (module docstring)."""

    def __init__(self, folder: RunFolder, cfg, columns: Mapping[str, Any], *, restart: bool = False,
                 checkpoint_every: int = 500, comm: Comm | None = None):
        self.comm = comm if comm is not None else LocalComm()
        self.folder = folder
        self.path = folder.path
        self.cfg = cfg
        self.checkpoint_every = int(checkpoint_every)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.path / LOCK, "w")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._lock_fh.close()
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise RunBusy(f"{self.path}: another process is running this run") from None
            raise
        self.csv = CsvLog(self.path / ROWS, columns)
        self.ckpt_path = self.path / CHECKPOINT
        self.stop_requested = False
        self._check_config(cfg)
        if restart:
            for name in (CHECKPOINT, DONE, ROWS, ROWS_GZ, PARAMS, ENSEMBLE):
                (self.path / name).unlink(missing_ok=True)
        write_text_atomic(self.path / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
        (self.path / ROWS_GZ).unlink(missing_ok=True)   # from a finish cut short: the CSV is the record
        self.resume_state: dict | None = None
        self._elapsed0 = 0.0
        if self.ckpt_path.exists():
            state = load_checkpoint(self.ckpt_path)
            self.csv.truncate(int(state["csv_bytes"]))
            self._elapsed0 = float(state["elapsed_s"])
            self.resume_state = state["state"]
        else:
            self.csv.truncate(0)  # killed before its first checkpoint: start the CSV over
        self._t0 = time.perf_counter()

    def _check_config(self, cfg) -> None:
        """Refuse to mix a different configuration into an existing run folder."""
        old = self.folder.config()
        if old and config_hash(semantic_config(old)) != config_hash(cfg):
            raise EnkfReproError(f"{self.path} holds a run with a different configuration; "
                                 f"refusing to overwrite it (use another out_dir or delete the folder)")

    def elapsed(self) -> float:
        return self._elapsed0 + (time.perf_counter() - self._t0)

    def log(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.csv.write(rows)

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        size = self.csv.sync()
        save_atomic({"state": dict(state), "csv_bytes": size, "elapsed_s": self.elapsed()}, self.ckpt_path)

    def due(self, step: int) -> bool:
        return step % self.checkpoint_every == 0

    def save_params(self, params: Mapping[str, torch.Tensor], iteration: int,
                    state: Mapping[str, Any] | None = None) -> None:
        """``params.pt``: {"params": {suffix: flat theta (P,)}, "iteration": n, "state": {...}}, the
        networks the method evaluates ("" the ensemble mean or the trained network, "best", ...)
        and what the method exports of its final state (a backprop run's optimizer state). Each
        network is saved as its own compact CPU copy: a member's row is a view of the ensemble,
        and saving the view would write the whole J x P storage."""
        compact = {k: v.detach().to("cpu").clone() for k, v in params.items()}
        save_atomic({"params": compact, "iteration": int(iteration), "state": dict(state or {})},
                    self.path / PARAMS)

    def stop_if_requested(self, state_fn) -> None:
        """Called once per iteration: on SIGINT/SIGTERM (on any rank) checkpoint and raise Interrupted;
        when the time budget is spent (budget.py, rank 0's clock) checkpoint and raise BudgetSpent."""
        signal_or_budget = 2.0 if self.stop_requested else (1.0 if budget.expired() and self.comm.rank == 0 else 0.0)
        flag = self.comm.max(signal_or_budget)
        if flag:
            self.checkpoint(state_fn())
            if flag >= 2:
                self.stop_requested = True
                raise Interrupted(self.stop_message())
            raise budget.BudgetSpent(f"time budget spent; checkpoint written to {self.ckpt_path}")

    def stop_message(self) -> str:
        return f"interrupted; checkpoint written to {self.ckpt_path}; rerun the same command to resume"

    def finish(self, summary: Mapping[str, Any]) -> None:
        """The rows compressed, then the summary (which marks the run finished), then the
        checkpoint and the plain CSV removed: a crash between the steps leaves a folder that the
        next open resumes or that readers read whole."""
        self.csv.sync()
        self.csv.close()
        _write_bytes_atomic(self.path / ROWS_GZ, gzip_bytes((self.path / ROWS).read_bytes()))
        self.folder.write_summary({**summary, "elapsed_s": round(self.elapsed(), 3)})
        self.ckpt_path.unlink(missing_ok=True)
        (self.path / ROWS).unlink(missing_ok=True)

    def close(self) -> None:
        self.csv.close()
        with contextlib.suppress(Exception):
            if self.folder.done:   # a finished run keeps no lock file behind
                (self.path / LOCK).unlink(missing_ok=True)
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()

    @contextlib.contextmanager
    def signals(self):
        """Turn SIGINT / SIGTERM into ``stop_requested`` (a second SIGINT aborts at once)."""
        def handler(signum, frame):
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_requested = True

        if not _is_main_thread():
            yield
            return
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class FollowerWriter(RunWriter):
    """Ranks > 0 of a distributed run: write nothing; take part in the collective checkpoint
    (the method's ``state_dict`` gathers the ensemble to rank 0) and stop."""

    def __init__(self, comm: Comm, folder: RunFolder, resume_state: dict | None, checkpoint_every: int):
        self.comm = comm
        self.folder = folder
        self.path = folder.path
        self.resume_state = resume_state
        self.checkpoint_every = int(checkpoint_every)
        self.stop_requested = False
        self._elapsed0 = 0.0
        self._t0 = time.perf_counter()

    def stop_message(self) -> str:
        return f"interrupted (rank {self.comm.rank}); rank 0 wrote the checkpoint"

    def log(self, rows) -> None:
        pass

    def checkpoint(self, state) -> None:
        pass

    def save_params(self, params, iteration, state=None) -> None:
        pass

    def finish(self, summary) -> None:
        pass

    def close(self) -> None:
        pass


# -- reading many runs ----------------------------------------------------------------------------
def read_runs(folder: str | Path | Iterable[str | Path | RunFolder],
              with_config: Iterable[str] | str | bool | None = None) -> pd.DataFrame:
    """Every row of every run under ``folder``, as one tidy DataFrame.

    ``folder`` may hold run folders at any depth: ``results``, ``results/smoke``, one figure's
    ``results/smoke/fig8``, single runs' ``results/smoke/runs``, or one run's own folder; or it is
    a list of run folders. A run is a folder with rows (``metrics.csv`` while it goes,
    ``metrics.csv.gz`` once finished); runs still going (or killed) are included with the rows
    written so far (an incomplete last line is dropped).

    One row per run, iteration and metric (and layer and histogram bin for the per-layer
    statistics); the columns are :data:`~enkf_repro.runs.results.COLUMNS`:

    * ``figure, series, seed, iteration, epoch`` (fraction of the training set seen), ``pass``
      (passes over the run's batches), ``metric`` (``test_error`` in %, ``test_loss``,
      ``train_misfit``, ``ensemble_spread``, ...), ``value``, ``elapsed_s`` (training seconds so
      far), ``layer``, ``bin`` (empty unless per-layer), ``run_id`` (the hash of the settings
      that change the numbers);
    * the run's main settings: ``scale, dataset, model, activation, optimizer, ensemble_size,
      gamma, repetitions, update_mode, init_sigma, lr, batch_size`` (empty where the method has
      no such setting) and ``settings`` (every setting that differs from the defaults);

    then ``finished`` (True once the run wrote its summary and did not diverge), ``mtime`` (when
    its rows were last written, seconds since the epoch) and ``run_dir`` (its folder).

    ``with_config`` adds settings of each run's ``config.yaml`` as columns named by their dotted
    keys: a list of keys (``["optimizer.gamma", "model.hidden"]``, or one comma-separated string;
    a section such as ``dataset`` means ``dataset.name``), or ``True`` for every key. A run
    without the key gets None; a key in no run's config is a ConfigError naming the closest keys.
    The default (None) adds nothing::

        df = enkf_repro.read_runs("results/smoke/runs", with_config=["optimizer.gamma"])
        err = df[df.metric == "test_error"]
        err.groupby(["optimizer.gamma", "iteration"])["value"].agg(["mean", "std"])
    """
    from .results import config_key

    if isinstance(folder, (str, Path, RunFolder)):
        runs = RunFolder.under(folder.path if isinstance(folder, RunFolder) else folder)
    else:
        runs = [f if isinstance(f, RunFolder) else RunFolder(f) for f in folder]
    frames = []
    for run in runs:
        df = run.rows()
        if df.empty:
            continue
        df["finished"] = run.finished
        df["mtime"] = run.rows_mtime()
        df["run_dir"] = str(run.path)
        frames.append(df)
    keys: list[str] = []
    if with_config and with_config is not True:
        parts = [with_config] if isinstance(with_config, str) else list(with_config)
        keys = [k for p in parts for k in str(p).split(",") if k.strip()]
    if not frames:
        return pd.DataFrame(columns=COLUMNS + ["finished", "mtime", "run_dir"] + keys)
    df = pd.concat(frames, ignore_index=True)
    if with_config:
        flats = {d: RunFolder(d).flat_config() for d in df["run_dir"].unique()}
        if with_config is True:
            keys = sorted(set().union(*flats.values()) - set(df.columns))
        else:
            keys = list(dict.fromkeys(config_key(k, flats.values()) for k in keys))
        for key in keys:
            values = {d: f.get(key) for d, f in flats.items()}
            df[key] = [values[d] for d in df["run_dir"]]
    return df
