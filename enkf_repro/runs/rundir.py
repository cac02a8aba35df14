"""One run's folder: lock, resolved config, tidy CSV, atomic checkpoints, done marker.

Every trainer (EnKF-type or backprop) drives its loop through a :class:`RunDir`:

* ``log(rows)`` appends CSV rows (one write + flush);
* ``checkpoint(state)`` writes ``checkpoint.pt`` atomically (temporary file, fsync, rename)
  together with the CSV's byte size at that moment; rerunning the same command loads it,
  truncates the CSV back to that size and continues, so the final CSV equals an uninterrupted
  run's (the ``elapsed_s`` wall-clock column aside);
* SIGINT / SIGTERM set ``stop_requested``; the loop checkpoints and raises ``Interrupted`` (with
  several ranks, a signal on any rank stops all of them at the same iteration);
* ``save_params(params, iteration)`` writes ``params.pt`` atomically: the flat parameter vectors
  of the networks the method evaluates at the end (the trained networks);
* ``finish(summary)`` writes ``done.json`` and removes the checkpoint; a finished run is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from omegaconf import OmegaConf

from ..config.identity import config_hash, semantic_config
from ..errors import EnkfReproError, Interrupted
from ..optim.distributed_enkf import Comm, LocalComm
from . import budget
from .results import CsvLog, write_json_atomic, write_text_atomic

PARAMS_FILE = "params.pt"


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


class RunBusy(EnkfReproError):
    """Another process holds this run's lock (e.g. a parallel sweep job doing the same run)."""


class CorruptCheckpoint(EnkfReproError):
    """A checkpoint that cannot be read (truncated, corrupt, from an incompatible version)."""


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


class RunDir:
    """Rank 0's (or the only process's) run folder."""

    def __init__(self, path: Path, cfg, static_columns: Mapping[str, Any], restart: bool = False,
                 checkpoint_every: int = 500, comm: Comm | None = None):
        self.comm = comm if comm is not None else LocalComm()
        self.path = Path(path)
        self.cfg = cfg
        self.checkpoint_every = int(checkpoint_every)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.path / "run.lock", "w")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise RunBusy(f"{self.path}: another process is running this run") from None
            raise
        self.csv = CsvLog(self.path / "metrics.csv", static_columns)
        self.ckpt_path = self.path / "checkpoint.pt"
        self.done_path = self.path / "done.json"
        self.stop_requested = False
        self._check_config(cfg)
        if restart:
            for name in ("checkpoint.pt", "done.json", "metrics.csv"):
                (self.path / name).unlink(missing_ok=True)
        write_text_atomic(self.path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        self.resume_state: dict | None = None
        self._elapsed0 = 0.0
        if self.ckpt_path.exists() and not self.done_path.exists():
            state = load_checkpoint(self.ckpt_path)
            self.csv.truncate(int(state["csv_bytes"]))
            self._elapsed0 = float(state["elapsed_s"])
            self.resume_state = state["state"]
        elif not self.done_path.exists():
            self.csv.truncate(0)  # killed before its first checkpoint: start the CSV over
        self._t0 = time.perf_counter()

    def _check_config(self, cfg) -> None:
        """Refuse to mix a different configuration into an existing run folder."""
        old_path = self.path / "config.yaml"
        if not old_path.exists():
            return
        old = OmegaConf.load(old_path)
        if config_hash(semantic_config(OmegaConf.to_container(old, resolve=True))) != config_hash(cfg):
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

    def save_params(self, params: Mapping[str, torch.Tensor], iteration: int) -> None:
        """``params.pt``: {"params": {suffix: flat theta (P,)}, "iteration": n}, the networks the
        method evaluates ("" the ensemble mean or the trained network, "best", ...). Each is saved
        as its own compact CPU copy: a member's row is a view of the ensemble, and saving the view
        would write the whole J x P storage."""
        compact = {k: v.detach().to("cpu").clone() for k, v in params.items()}
        save_atomic({"params": compact, "iteration": int(iteration)}, self.path / PARAMS_FILE)

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
        self.csv.sync()
        write_json_atomic(self.done_path, {**summary, "elapsed_s": round(self.elapsed(), 3)})
        self.ckpt_path.unlink(missing_ok=True)

    def close(self) -> None:
        self.csv.close()
        with contextlib.suppress(Exception):
            if self.done_path.exists():   # a finished run keeps no lock file behind
                (self.path / "run.lock").unlink(missing_ok=True)
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


class FollowerRunDir(RunDir):
    """Ranks > 0 of a distributed run: write nothing; take part in the collective checkpoint
    (the method's ``state_dict`` gathers the ensemble to rank 0) and stop."""

    def __init__(self, comm: Comm, path: Path, resume_state: dict | None, checkpoint_every: int):
        self.comm = comm
        self.path = Path(path)
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

    def save_params(self, params, iteration) -> None:
        pass

    def finish(self, summary) -> None:
        pass

    def close(self) -> None:
        pass
