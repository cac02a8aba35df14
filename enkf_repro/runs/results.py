"""Tidy results: the CSV schema (in this one place), its writer and its reader, and the atomic
writes every output uses. One row per (run, iteration, metric[, layer, bin]); the run's files and
folders are ``runs/folder.py``'s.

Every write goes through :func:`guarded_write`: a write that fails (a full disk, a quota, a
read-only or failing device) leaves no temporary file behind and becomes one
:class:`~enkf_repro.errors.WriteFailed` line naming the file, the bytes it needed and the bytes
free; whole files are written to a temporary name, synced and renamed over the old one, so the
previous version stays intact.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import pandas as pd
from omegaconf import DictConfig

from ..config.identity import config_hash
from ..config.nested import flatten
from ..config.overrides import did_you_mean
from ..errors import ConfigError, WriteFailed

# Measurement columns first, then the run's identity and config.
COLUMNS = [
    "figure", "series", "seed", "iteration", "epoch", "pass", "metric", "value", "elapsed_s",
    "layer", "bin", "run_id", "scale", "dataset", "model", "activation", "optimizer",
    "ensemble_size", "gamma", "repetitions", "update_mode", "init_sigma", "lr", "batch_size", "settings",
]


def config_columns(cfg: DictConfig, figure: str, series: str, settings: str = "") -> dict[str, Any]:
    """The constant columns of every row of a run; ``settings`` lists ("key=value;...") every
    setting of the run that differs from its group defaults (what a sweep varied)."""
    opt = cfg.optimizer

    def get(node, key):
        if key not in node:
            return ""
        value = node[key]
        return getattr(value, "value", value)

    return {
        "figure": figure, "series": series, "seed": int(cfg.seed),
        "run_id": config_hash(cfg), "scale": get(cfg.scale, "name"),
        "dataset": get(cfg.dataset, "name"), "model": get(cfg.model, "name"),
        # a custom model's layers are its own: the built-in models' activation setting does not apply
        "activation": "" if get(cfg.model, "name") == "custom" else get(cfg.model, "activation"),
        "optimizer": get(opt, "name"),
        "ensemble_size": get(opt, "ensemble_size"), "gamma": get(opt, "gamma"),
        "repetitions": get(opt, "repetitions"), "update_mode": get(opt, "update_mode"),
        "init_sigma": get(cfg.init, "sigma"), "lr": get(opt, "lr"),
        "batch_size": int(cfg.train.batch_size), "settings": settings,
    }


def _fmt(v: Any) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        return repr(v)
    if hasattr(v, "item"):
        return _fmt(v.item())
    s = str(v)
    if any(c in s for c in ',"\n'):
        return '"' + s.replace('"', '""') + '"'
    return s


class CsvLog:
    """Append-only tidy CSV. Each call to :meth:`write` is one ``write`` + ``flush`` of whole
    lines, so a killed process leaves at most an incomplete last line, which readers drop and a
    resumed run truncates away (it truncates to the offset stored in its checkpoint)."""

    def __init__(self, path: Path, static: Mapping[str, Any]):
        self.path = Path(path)
        self.static = {k: _fmt(static.get(k, "")) for k in COLUMNS}
        self._fh = None

    @contextlib.contextmanager
    def _guard(self, needed: int | None) -> Iterator[None]:
        """A failed write is one WriteFailed line; the file handle is dropped, so that nothing
        buffered is appended later (the file ends at most in an incomplete line, which readers
        drop and a resumed run truncates away)."""
        try:
            with guarded_write(self.path, needed):
                yield
        except WriteFailed:
            fh, self._fh = self._fh, None
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.close()
            raise

    def _open(self):
        if self._fh is None:
            self._fh = open(self.path, "ab")
            if self._fh.tell() == 0:
                self._fh.write((",".join(COLUMNS) + "\n").encode())
                self._fh.flush()
        return self._fh

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        lines = []
        for row in rows:
            vals = dict(self.static)
            vals.update({k: _fmt(v) for k, v in row.items()})
            lines.append(",".join(vals[k] for k in COLUMNS))
        if lines:
            data = ("\n".join(lines) + "\n").encode()
            with self._guard(len(data)):
                fh = self._open()
                fh.write(data)
                fh.flush()

    def sync(self) -> int:
        """fsync and return the current size in bytes (stored in checkpoints)."""
        with self._guard(None):
            fh = self._open()
            fh.flush()
            os.fsync(fh.fileno())
            return fh.tell()

    def truncate(self, size: int) -> None:
        self.close()
        if self.path.exists():
            with guarded_write(self.path, None), open(self.path, "r+b") as f:
                f.truncate(size)

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            with self._guard(None):
                fh.close()


# Columns that hold numbers in every row (empty cells read as NaN)
NUMERIC = ("seed", "iteration", "epoch", "pass", "value", "elapsed_s", "layer", "bin")


def parse_rows(raw: bytes) -> pd.DataFrame:
    """The tidy rows of a CSV's bytes, ignoring an incomplete last line (a run still going, or
    killed mid-write). Rows that are not the tidy CSV raise: pandas' ParserError (an
    unterminated quote, a row with too many cells) or ValueError (a header that is not this
    schema's, text in a column of numbers)."""
    end = raw.rfind(b"\n")
    raw = raw[: end + 1] if end >= 0 else b""
    if not raw.strip():
        return pd.DataFrame(columns=COLUMNS)
    df = pd.read_csv(io.BytesIO(raw), dtype={"figure": str, "series": str, "run_id": str})
    unknown = [c for c in df.columns if c not in COLUMNS]
    if unknown or not {"iteration", "metric", "value"} <= set(df.columns):
        raise ValueError(f"the header is not the tidy CSV's columns ({', '.join(map(str, unknown[:3])) or 'missing'})")
    for col in NUMERIC if len(df) else ():
        if col in df.columns and not pd.api.types.is_numeric_dtype(df[col]):
            bad = pd.to_numeric(df[col], errors="coerce").isna() & df[col].notna()
            row = int(bad.idxmax()) + 2 if bad.any() else "?"
            raise ValueError(f"column {col} holds text where numbers belong (line {row})")
    return df


def flat_config(config: Mapping) -> dict[str, Any]:
    """``{"optimizer": {"gamma": 0.01}}`` -> ``{"optimizer.gamma": 0.01}`` (config/nested.py's
    flattening), lists as tuples and empty sections left out, so that every value can be grouped on."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in flatten(config).items() if v != {}}


def config_key(key: str, flats: Iterable[Mapping[str, Any]]) -> str:
    """The dotted key ``key`` names in runs whose flat configs are ``flats``: the key itself, or for
    a section (``dataset``, ``optimizer``, ``figure``) its ``name`` (or ``id``). A key in no run's
    config is a one-line ConfigError naming the closest keys."""
    keys = set().union(*flats)
    key = key.strip()
    if key in keys:
        return key
    inner = {k for k in keys if k.startswith(key + ".")}
    for leaf in ("name", "id"):
        if f"{key}.{leaf}" in inner:
            return f"{key}.{leaf}"
    if inner:
        children = sorted({k[len(key) + 1:].split(".")[0] for k in inner})
        raise ConfigError.line(f"config key {key!r} is a section of the run configs; name one of its keys: "
                               + ", ".join(f"{key}.{c}" for c in children))
    done: list[str] = []
    for part in key.split("."):
        prefix = ".".join(done + [part])
        if any(k == prefix or k.startswith(prefix + ".") for k in keys):
            done.append(part)
            continue
        parent = ".".join(done)
        children = sorted({(k[len(parent) + 1:] if parent else k).split(".")[0]
                           for k in keys if not parent or k.startswith(parent + ".")})
        hint = did_you_mean(part, children)
        if not hint:   # gamma -> optimizer.gamma: keys whose last part is close
            ends: dict[str, list[str]] = {}
            for k in sorted(keys):
                ends.setdefault(k.rsplit(".", 1)[-1], []).append(k)
            close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(ends), n=2, cutoff=0.7)
            full = [k for c in close for k in ends[c]][:3]
            hint = f"did you mean {' or '.join(repr(k) for k in full)}? " if full else ""
        if parent and not children:
            where = f"{parent} is a value, not a section"
        else:
            where = f"{parent or 'the top level'} has no key {part!r}; {hint}its keys: {', '.join(children)}"
        raise ConfigError.line(f"config key {key!r} is in no run's config: {where}")
    raise AssertionError("unreachable")


# -- writing files ---------------------------------------------------------------------------------
# torch.save reports a failed write of its zip container as a RuntimeError naming its writer
# ("[enforce fail at inline_container.cc:...] . unexpected pos ..."), not as an OSError.
TORCH_WRITE_ERRORS = ("PytorchStreamWriter", "inline_container", "file write failed")


def human_bytes(n: float | None) -> str:
    """``1440000000000`` -> ``"1.44 TB"`` (decimal units)."""
    if n is None:
        return "an unknown size"
    n = float(n)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000.0
    raise AssertionError("unreachable")


def free_bytes(path: str | Path) -> int | None:
    """Bytes free for this user on the file system holding ``path`` (its nearest existing folder)."""
    p = Path(path).absolute()
    for q in (p, *p.parents):
        if q.exists():
            try:
                return shutil.disk_usage(q).free
            except OSError:
                return None
    return None


def is_write_error(e: BaseException) -> bool:
    """An error of the storage under a write: any OSError, or torch.save's container writer failing."""
    return isinstance(e, OSError) or (isinstance(e, RuntimeError) and any(m in str(e) for m in TORCH_WRITE_ERRORS))


def write_failed(path: str | Path, error: BaseException, needed: int | None = None) -> WriteFailed:
    """The one line of a failed write of ``path``: the reason, the bytes needed and free."""
    free = free_bytes(Path(path).parent)
    if isinstance(error, OSError) and error.errno is not None:
        reason = os.strerror(error.errno).lower()
    elif needed is not None and free is not None and needed > free:
        reason = "no space left on device"
    else:
        text = str(error).strip().splitlines()
        reason = f"the write failed ({type(error).__name__}: {text[0][:120] if text else ''})"
    sizes = ([f"it needs {human_bytes(needed)}"] if needed else []) + [f"{human_bytes(free)} free"]
    return WriteFailed(f"cannot write {path}: {reason} ({', '.join(sizes)})", Path(path))


@contextlib.contextmanager
def guarded_write(path: str | Path, needed: int | Callable[[], int | None] | None = None,
                  tmp: str | Path | None = None) -> Iterator[None]:
    """Write ``path`` inside the block: on any failure the temporary file ``tmp`` is removed, and a
    storage error becomes one :class:`WriteFailed` line naming ``path`` (``needed``: its size in
    bytes, or a function computing it, called only on failure)."""
    try:
        yield
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
        if isinstance(e, Exception) and not isinstance(e, WriteFailed) and is_write_error(e):
            size = needed() if callable(needed) else needed
            raise write_failed(path, e, size) from None
        raise


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (where the file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """``data`` to a temporary file beside ``path``, fsync, rename over ``path``; a failed write
    leaves ``path`` as it was and no temporary file (:func:`guarded_write`)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with guarded_write(path, len(data), tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, json.dumps(obj, indent=2, default=str).encode())


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())
