"""Tidy results: the CSV schema (in this one place), its writer and its reader, and the atomic
writes every output uses. One row per (run, iteration, metric[, layer, bin]); the run's files and
folders are ``runs/folder.py``'s.
"""

from __future__ import annotations

import difflib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
from omegaconf import DictConfig

from ..config.identity import config_hash
from ..config.nested import flatten
from ..config.overrides import did_you_mean
from ..errors import ConfigError

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
            fh = self._open()
            fh.write(("\n".join(lines) + "\n").encode())
            fh.flush()

    def sync(self) -> int:
        """fsync and return the current size in bytes (stored in checkpoints)."""
        fh = self._open()
        fh.flush()
        os.fsync(fh.fileno())
        return fh.tell()

    def truncate(self, size: int) -> None:
        self.close()
        if self.path.exists():
            with open(self.path, "r+b") as f:
                f.truncate(size)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def parse_rows(raw: bytes) -> pd.DataFrame:
    """The tidy rows of a CSV's bytes, ignoring an incomplete last line (a run still going, or
    killed mid-write)."""
    end = raw.rfind(b"\n")
    raw = raw[: end + 1] if end >= 0 else b""
    if not raw.strip():
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_csv(io.BytesIO(raw), dtype={"figure": str, "series": str, "run_id": str})


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


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
