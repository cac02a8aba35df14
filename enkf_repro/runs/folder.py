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
  the checkpoint and the plain CSV; a finished run is skipped by later commands;
* a write that fails (a full disk) is one ``WriteFailed`` line naming the file, the bytes needed
  and free, and the last good checkpoint, which is intact (a rerun resumes from it); ``close()``
  removes the lock file, and no temporary file is left.

Checkpoints hold tensors and plain values only (dicts, lists, numbers, strings) and are read
with ``torch.load(weights_only=True)``: a file holding a pickled object, which loading could
run as code, is refused with one line. Damaged files (a row that does not parse, a config or
summary that does not load, a params file failing its checksums) are found by
:meth:`RunFolder.damage`: readers skip such a run with one warning line, and the runner trains
it again (``runs/runner.py``).
"""

from __future__ import annotations

import collections
import contextlib
import csv
import errno
import fcntl
import gzip
import io
import json
import os
import pickle
import re
import shutil
import signal
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pandas as pd
import torch
from omegaconf import OmegaConf

from ..config.identity import config_hash, semantic_config
from ..errors import EnkfReproError, Interrupted, WriteFailed
from . import budget
from .comm import Comm, LocalComm
from .results import (
    COLUMNS,
    CsvLog,
    flat_config,
    fsync_dir,
    guarded_write,
    parse_rows,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

CONFIG = "config.yaml"
ROWS = "metrics.csv"
ROWS_GZ = "metrics.csv.gz"
CHECKPOINT = "checkpoint.pt"
PARAMS = "params.pt"
ENSEMBLE = "ensemble.pt"
DONE = "done.json"
LOCK = "run.lock"
DAMAGED = ".damaged"   # suffix of a damaged file set aside when its run is trained again


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_") or "run"


def figure_dir(out_dir: str | Path, scale: str, config_name: str | None) -> Path:
    """``<out_dir>/<scale>/<fig8|eki_table|...>``; single runs without a figure go to ``runs``."""
    return Path(out_dir) / scale / (config_name or "runs")


class _Counter(io.RawIOBase):
    """A writable stream that only counts the bytes written to it."""

    def __init__(self) -> None:
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.n += len(b)
        return len(b)


def saved_size(obj: Any) -> int | None:
    """The bytes ``torch.save(obj)`` writes (serialised into nothing), or None if it cannot."""
    sink = _Counter()
    try:
        torch.save(obj, sink)
    except Exception:  # noqa: BLE001 - only a size for a message
        return None
    return sink.n


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, rename over ``path``. A failed
    write (a full disk) leaves ``path`` as it was, removes the temporary file and is one
    ``WriteFailed`` line with the bytes needed and free."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with guarded_write(path, lambda: saved_size(obj), tmp):
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    fsync_dir(path.parent)


# What a checkpoint may hold: torch.load(weights_only=True) rebuilds these and nothing else.
PLAIN = (dict, collections.OrderedDict, list, tuple, str, int, float, bool, type(None), torch.Size, torch.dtype)


def non_plain(obj: Any, where: str = "state") -> str | None:
    """The first place in ``obj`` holding something other than tensors and plain values (an Enum,
    a dataclass, a numpy value, ...), as ``"state['method']['x']: Foo"``; None when all is plain.
    (bool, int, float, str subclasses such as a ``str`` Enum are not plain: loading them would
    import their class.)"""
    if type(obj) not in PLAIN and not isinstance(obj, torch.Tensor):
        return f"{where}: {type(obj).__module__}.{type(obj).__qualname__}"
    if isinstance(obj, dict):
        for k, v in obj.items():
            bad = non_plain(k, f"{where} key") or non_plain(v, f"{where}[{k!r}]")
            if bad:
                return bad
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            bad = non_plain(v, f"{where}[{i}]")
            if bad:
                return bad
    return None


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


class UnsafeCheckpoint(CorruptCheckpoint):
    """A checkpoint holding a pickled Python object, which loading could run as code: refused."""


@dataclass(frozen=True)
class Damage:
    """A file of a run folder that cannot be read, and why."""

    file: Path
    why: str

    def __str__(self) -> str:
        return f"{self.file}: {self.why}"


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def zip_damage(path: Path) -> str | None:
    """Why the torch file at ``path`` is damaged (not a zip container, truncated, a record failing
    its CRC-32), or None; reads the file, loads nothing."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, EOFError, zipfile.BadZipFile, RuntimeError, ValueError) as e:
        return f"not a readable torch file ({_why(e)})"
    return f"record {bad} fails its checksum" if bad is not None else None


_DAMAGE: dict[tuple, "Damage | None"] = {}   # (folder, sizes and times of its files) -> what is damaged
_WARNED: set[str] = set()


def warn_skipped(damage: Damage) -> None:
    """The one warning line of a reader skipping a damaged run (once per process and damage)."""
    key = str(damage)
    if key in _WARNED:
        return
    _WARNED.add(key)
    print(f"enkf-repro: warning: skipping the run in {damage.file.parent}: {damage.file.name}: {damage.why}; "
          f"rerun the command that made it to train it again (or delete the folder)", file=sys.stderr, flush=True)


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
        """Finished or diverged, with every file readable (a damaged run is to be trained again)."""
        return self.state in ("finished", "diverged") and self.damage() is None

    @property
    def state(self) -> str:
        """``"finished"``, ``"diverged"`` (its summary records a divergence: rerunning the same
        config diverges again, so it is not retrained, and it counts as not finished),
        ``"unfinished"``, or ``"damaged"`` (a summary that does not load)."""
        try:
            summary = json.loads((self.path / DONE).read_text())
        except FileNotFoundError:
            return "unfinished"
        except (OSError, ValueError):
            return "damaged"   # written atomically: unreadable only if damaged or edited by hand
        if not isinstance(summary, dict):
            return "damaged"
        return "diverged" if summary.get("status") == "diverged" else "finished"

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    def summary(self) -> dict:
        """The run's done.json ({} while it is unfinished or unreadable)."""
        try:
            summary = json.loads((self.path / DONE).read_text())
        except (OSError, ValueError):
            return {}
        return summary if isinstance(summary, dict) else {}

    def config(self) -> dict:
        """The run's resolved config as plain Python; ``{}`` when it has none. A config that does
        not load raises (:meth:`damage` says which and why)."""
        path = self.path / CONFIG
        if not path.is_file():
            return {}
        out = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        if not isinstance(out, dict):
            raise ValueError(f"{path} holds a {type(out).__name__}, not a mapping of settings")
        return out

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
        """The tidy rows written so far (an incomplete last line of a run still going is dropped);
        damaged rows raise (pandas' ParserError, ValueError, a gzip error: :meth:`damage`)."""
        return parse_rows(self.rows_bytes())

    def params(self) -> dict:
        """params.pt: ``{"params": {suffix: theta (P,)}, "iteration": n, "state": {...}}``; one line
        naming the file when it cannot be read (tensors and plain values only, as checkpoints)."""
        return load_torch_file(self.path / PARAMS, "params file", ("params",))

    def has_params(self) -> bool:
        return (self.path / PARAMS).is_file()

    # -- damage --------------------------------------------------------------------------------
    def _signature(self) -> tuple:
        out: list[Any] = [str(self.path)]
        for name in (CONFIG, DONE, ROWS, ROWS_GZ, PARAMS):
            try:
                st = (self.path / name).stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def damage(self, rows: bool = True) -> Damage | None:
        """The first file of the folder that cannot be read, and why (None: all are readable):
        ``config.yaml`` or ``done.json`` that does not load, rows that do not parse as the tidy
        CSV (an unterminated quote, text where numbers belong, a broken gzip stream; an incomplete
        last line of a run still going is not damage), ``params.pt`` failing its checksums.
        ``rows=False`` leaves the rows out (a reader that parses them anyway). Remembered per
        folder while its files are unchanged."""
        key = (self._signature(), rows)
        if key not in _DAMAGE:
            if len(_DAMAGE) > 10000:
                _DAMAGE.clear()
            _DAMAGE[key] = self._find_damage(rows)
        return _DAMAGE[key]

    def _find_damage(self, rows: bool) -> Damage | None:
        if (self.path / CONFIG).is_file():
            try:
                self.config()
            except Exception as e:  # noqa: BLE001 - any failure to load is the damage
                return Damage(self.path / CONFIG, f"the config does not load ({_why(e)})")
        if self.state == "damaged":
            try:
                json.loads((self.path / DONE).read_text())
                why = "not a summary (no mapping)"
            except (OSError, ValueError) as e:
                why = f"the summary does not load ({_why(e)})"
            return Damage(self.path / DONE, why)
        if rows and self.rows_path() is not None:
            try:
                self.rows()
            except Exception as e:  # noqa: BLE001
                return Damage(self.rows_path(), f"the rows do not parse ({_why(e)})")
        if self.has_params():
            why = zip_damage(self.path / PARAMS)
            if why:
                return Damage(self.path / PARAMS, why)
        return None

    def set_aside(self, name: str) -> Path:
        """Rename the damaged file ``name`` to ``<name>.damaged`` (kept for inspection, never read)."""
        src = self.path / name
        dst = self.path / (name + DAMAGED)
        with guarded_write(dst):
            os.replace(src, dst)
        return dst

    def write_config(self, cfg) -> None:
        """config.yaml: the resolved run config (written when a run starts; rewritten over a damaged one)."""
        write_text_atomic(self.path / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))

    # -- writing whole files -------------------------------------------------------------------
    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json_atomic(self.path / DONE, dict(summary))

    def copy_from(self, source: "RunFolder", columns: Mapping[str, Any]) -> None:
        """Make this folder a copy of the finished run ``source`` (the same identity): its config,
        its rows with this run's ``figure`` / ``series`` / ``settings`` columns, its params and
        its summary (noting the source), each written atomically, the summary last."""
        self.path.mkdir(parents=True, exist_ok=True)
        _copy_atomic(source.path / CONFIG, self.path / CONFIG)
        reader = csv.reader(io.StringIO(source.rows_bytes().decode()))
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        header = next(reader)
        writer.writerow(header)
        keep = {i: str(columns.get(h, "")) for i, h in enumerate(header) if h in ("figure", "series", "settings")}
        for row in reader:
            writer.writerow([keep.get(i, v) for i, v in enumerate(row)])
        write_bytes_atomic(self.path / ROWS_GZ, gzip_bytes(out.getvalue().encode()))
        (self.path / ROWS).unlink(missing_ok=True)
        for name in (PARAMS, ENSEMBLE):
            if (source.path / name).is_file():
                shutil.copyfile(source.path / name, self.path / (name + ".tmp"))
                os.replace(self.path / (name + ".tmp"), self.path / name)
        if source.has_params():
            _copy_atomic(source.path / PARAMS, self.path / PARAMS)
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
            if (skip is None or folder.path.resolve() != skip) and folder.finished and folder.damage() is None:
                return folder
        return None


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    with guarded_write(dst, lambda: src.stat().st_size, tmp):
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def load_torch_file(path: Path, what: str, keys: Iterable[str]) -> dict:
    """A dict saved by this tool with torch.save, loaded with ``weights_only=True`` (tensors and plain
    values only: nothing in it can run code); one line naming ``path`` when it is damaged
    (:func:`zip_damage`), holds a pickled object, or lacks ``keys``."""
    why = zip_damage(path)
    if why is None:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            if found or "global" in str(e).lower():
                name = found.group(1) if found else "a Python object"
                raise UnsafeCheckpoint(
                    f"{path}: refused: this {what} holds a pickled Python object ({name}), which loading could run "
                    f"as code; this tool's {what}s hold only tensors and plain values, so it was not written by this "
                    f"tool or was altered: delete it or rerun with restart=true to start this run over") from None
            why = f"not a readable torch file ({_why(e)})"
        except Exception as e:  # noqa: BLE001 - zip, EOF and format errors all mean the same here
            why = f"not a readable torch file ({_why(e)})"
        else:
            if isinstance(obj, dict) and set(keys) <= set(obj):
                return obj
            why = f"not a {what} of this tool (no {', '.join(keys)})"
    raise CorruptCheckpoint(f"{path}: unreadable {what}: {why}; rerun with restart=true to start this run over")


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path``; one line naming the file and the fix when it cannot be read."""
    return load_torch_file(path, "checkpoint", ("state", "csv_bytes", "elapsed_s"))


def _take_lock(path: Path):
    """An open file holding the exclusive lock of ``path`` (RunBusy when another process holds it).
    A holder removes the file as it lets go (:meth:`RunWriter.close`), so a lock taken on a file
    that is no longer at ``path`` is let go and taken again on the new one."""
    while True:
        with guarded_write(path):
            fh = open(path, "a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            fh.close()
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise RunBusy(f"{path.parent}: another process is running this run") from None
            raise
        try:
            here = os.stat(path)
            mine = os.fstat(fh.fileno())
            if (here.st_ino, here.st_dev) == (mine.st_ino, mine.st_dev):
                return fh
        except FileNotFoundError:
            pass
        fh.close()


class RunWriter:
    """Rank 0's (or the only process's) open run folder (module docstring)."""

    def __init__(self, folder: RunFolder, cfg, columns: Mapping[str, Any], *, restart: bool = False,
                 checkpoint_every: int = 500, comm: Comm | None = None):
        self.comm = comm if comm is not None else LocalComm()
        self.folder = folder
        self.path = folder.path
        self.cfg = cfg
        self.checkpoint_every = int(checkpoint_every)
        self.ckpt_path = self.path / CHECKPOINT
        self.checkpoint_iteration: int | None = None   # the loop iteration of the last good checkpoint
        self.repaired: list[str] = []                   # what opening repaired (for the runner to say)
        self.stop_requested = False
        self.resume_state: dict | None = None
        self._elapsed0 = 0.0
        self._lock_fh = None
        with guarded_write(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fh = _take_lock(self.path / LOCK)
        self.csv = CsvLog(self.path / ROWS, columns)
        try:
            self._open(cfg, restart)
        except BaseException:
            self.close()
            raise
        self._t0 = time.perf_counter()

    def _open(self, cfg, restart: bool) -> None:
        if not restart and self.folder.state in ("finished", "diverged") and self.folder.damage() is None:
            raise RunBusy(f"{self.path}: another process finished this run")
        self._check_config(cfg)
        if restart:
            for name in (CHECKPOINT, DONE, ROWS, ROWS_GZ, PARAMS, ENSEMBLE):
                (self.path / name).unlink(missing_ok=True)
        with self._hinted():
            self.folder.write_config(cfg)
        (self.path / ROWS_GZ).unlink(missing_ok=True)   # from a finish cut short: the CSV is the record
        if self.ckpt_path.exists():
            state = load_checkpoint(self.ckpt_path)
            with self._hinted():
                self.csv.truncate(int(state["csv_bytes"]))
            self._elapsed0 = float(state["elapsed_s"])
            self.resume_state = state["state"]
            self.checkpoint_iteration = _iteration_of(self.resume_state)
        else:
            with self._hinted():
                self.csv.truncate(0)  # killed before its first checkpoint: start the CSV over
        if (self.path / ROWS).is_file():
            try:
                parse_rows((self.path / ROWS).read_bytes())
            except Exception as e:  # noqa: BLE001 - rows damaged before the checkpoint's end: start over
                kept = self.folder.set_aside(ROWS)
                self.ckpt_path.unlink(missing_ok=True)
                self.resume_state, self.checkpoint_iteration, self._elapsed0 = None, None, 0.0
                self.repaired.append(f"{self.path / ROWS}: the rows before the checkpoint do not parse ({_why(e)}); "
                                     f"training the run again from the start (the damaged file kept as {kept.name})")

    def _check_config(self, cfg) -> None:
        """Refuse to mix a different configuration into an existing run folder (a config that does
        not load is rewritten: the folder's name carries the run's id)."""
        try:
            old = self.folder.config()
        except Exception as e:  # noqa: BLE001
            self.repaired.append(f"{self.path / CONFIG}: the config does not load ({_why(e)}); rewritten from "
                                 f"this run's settings")
            old = {}
        if old and config_hash(semantic_config(old)) != config_hash(cfg):
            raise EnkfReproError(f"{self.path} holds a run with a different configuration; "
                                 f"refusing to overwrite it (use another out_dir or delete the folder)")

    def elapsed(self) -> float:
        return self._elapsed0 + (time.perf_counter() - self._t0)

    def resume_hint(self, todo: str = "free space and rerun the same command") -> str:
        """What a fault left intact and what to do (appended to its one line): resume from the last
        good checkpoint, or start the run again when it has none yet."""
        if self.ckpt_path.is_file():
            at = f" (iteration {self.checkpoint_iteration})" if self.checkpoint_iteration is not None else ""
            return f"the last good checkpoint {self.ckpt_path}{at} is intact: {todo} to resume from it"
        return f"no checkpoint was written yet: {todo} to start this run again"

    @contextlib.contextmanager
    def _hinted(self) -> Iterator[None]:
        try:
            yield
        except WriteFailed as e:
            raise e.with_hint(self.resume_hint()) from None

    def log(self, rows: Iterable[Mapping[str, Any]]) -> None:
        with self._hinted():
            self.csv.write(rows)

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """``checkpoint.pt``: ``state`` (tensors and plain values only: it is read back with
        ``weights_only=True``) with the CSV's size; written atomically, so a failed write keeps
        the last good one."""
        bad = non_plain(dict(state))
        if bad:
            raise TypeError(f"a checkpoint holds tensors and plain values only (it is loaded with weights_only=True); "
                            f"found {bad}: store it as plain values in the method's state_dict()")
        with self._hinted():
            size = self.csv.sync()
            save_atomic({"state": dict(state), "csv_bytes": size, "elapsed_s": self.elapsed()}, self.ckpt_path)
        self.checkpoint_iteration = _iteration_of(state)

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
        with self._hinted():
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
        with self._hinted():
            self.csv.sync()
            self.csv.close()
            write_bytes_atomic(self.path / ROWS_GZ, gzip_bytes((self.path / ROWS).read_bytes()))
            self.folder.write_summary({**summary, "elapsed_s": round(self.elapsed(), 3)})
        self.ckpt_path.unlink(missing_ok=True)
        (self.path / ROWS).unlink(missing_ok=True)

    def close(self) -> None:
        """Close the CSV and let go of the lock, removing its file (whatever happened: a run folder
        keeps no lock file behind)."""
        with contextlib.suppress(Exception):
            self.csv.close()
        fh, self._lock_fh = self._lock_fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                (self.path / LOCK).unlink(missing_ok=True)   # while holding it (see _take_lock)
            with contextlib.suppress(OSError):
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()

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


def _iteration_of(state: Mapping[str, Any] | None) -> int | None:
    loop = (state or {}).get("loop")
    it = loop.get("iteration") if isinstance(loop, Mapping) else None
    return int(it) if isinstance(it, (int, float)) else None


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

    A run with a damaged file (rows that do not parse, a config or summary that does not load, a
    params file failing its checksums: :meth:`RunFolder.damage`) is left out, with one warning
    line on stderr naming the file and why; rerunning the command that made it trains it again.

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
        try:
            df = run.rows()
        except Exception as e:  # noqa: BLE001 - damaged rows: skip the run, say so once
            warn_skipped(Damage(run.rows_path() or run.path / ROWS, f"the rows do not parse ({_why(e)})"))
            continue
        if df.empty:
            continue
        damage = run.damage(rows=False)
        if damage is not None:
            warn_skipped(damage)
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
