"""Tidy results: the CSV schema (in this one place), run folders, and reading them back.

Layout: ``<out_dir>/<scale>/<fig8|...>/<series>-s<seed>-<hash>/`` holds ``config.yaml`` (the resolved
run config), ``metrics.csv`` (one row per (iteration, metric[, layer, bin])), ``checkpoint.pt``
while the run is unfinished, and ``done.json`` once it finished. The hash covers every setting
that changes the numbers (``config/identity.py``), so a finished run is recognised from its
config alone and a changed config never overwrites it.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
from omegaconf import DictConfig

from ..config.identity import config_hash

# Measurement columns first, then the run's identity and config.
COLUMNS = [
    "figure", "series", "seed", "iteration", "epoch", "metric", "value", "elapsed_s",
    "layer", "bin", "run_id", "scale", "dataset", "model", "activation", "optimizer",
    "ensemble_size", "gamma", "repetitions", "update_mode", "init_sigma", "lr", "batch_size", "settings",
]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_") or "run"


def figure_dir(out_dir: str | Path, scale: str, config_name: str | None) -> Path:
    """``<out_dir>/<scale>/<fig8|eki_table|...>``; single runs without a figure go to ``runs``."""
    return Path(out_dir) / scale / (config_name or "runs")


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
        "activation": get(cfg.model, "activation"), "optimizer": get(opt, "name"),
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


def read_metrics(path: Path) -> pd.DataFrame:
    """Read a run's metrics.csv, ignoring an incomplete last line (a run still going or killed)."""
    raw = Path(path).read_bytes()
    end = raw.rfind(b"\n")
    raw = raw[: end + 1] if end >= 0 else b""
    if not raw.strip():
        return pd.DataFrame(columns=COLUMNS)
    df = pd.read_csv(io.BytesIO(raw), dtype={"figure": str, "series": str, "run_id": str})
    return df


def read_runs(fig_dir: Path) -> pd.DataFrame:
    """All rows of all runs under a figure folder (finished or not), with ``finished`` and ``mtime``."""
    frames = []
    for csv in sorted(Path(fig_dir).glob("*/metrics.csv")):
        df = read_metrics(csv)
        if df.empty:
            continue
        df["finished"] = (csv.parent / "done.json").exists()
        df["mtime"] = csv.stat().st_mtime
        df["run_dir"] = str(csv.parent)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=COLUMNS + ["finished", "mtime", "run_dir"])
    return pd.concat(frames, ignore_index=True)


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
