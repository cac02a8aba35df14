"""``plot``: a figure drawn from the CSVs of its runs, as ``<fig>.png`` and ``<fig>.pdf``.

``plot_figure(cfg, overrides)`` reads every run under the figure's folder (finished or still
going), keeps those matching ``overrides`` (``report/select.py``: ``dataset=fashion_mnist`` keeps
the Fashion-MNIST runs; of several configurations the most recently written), and draws them with
the figure module's ``plot``, writing its tables (``Figure.tables``) beside it.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Iterable

import pandas as pd
from omegaconf import DictConfig

from ..config.schema import name_of
from ..errors import EnkfReproError
from ..experiments.base import get_figure
from ..experiments.draw import save, use_style
from ..runs.folder import figure_dir, read_runs
from ..runs.results import is_write_error, write_failed, write_text_atomic
from .select import select_runs


def figure_bytes(fig) -> int | None:
    """The bytes of ``fig`` as PNG and PDF (drawn into memory; for the message of a failed save)."""
    try:
        total = 0
        for fmt in ("png", "pdf"):
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt)
            total += len(buf.getvalue())
        return total
    except Exception:  # noqa: BLE001 - only a size for a message
        return None


def save_figure(fig, stem: Path) -> list[Path]:
    """``stem``.png and .pdf (experiments/draw.py ``save``); a failed write (a full disk) removes
    the temporary files and is one WriteFailed line naming the file, the bytes needed and free."""
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    try:
        return save(fig, stem)
    except Exception as e:
        if not is_write_error(e):
            raise
        tmps = [p.with_name(p.name + ".tmp") for p in paths]
        failed = next((p for p, t in zip(paths, tmps) if t.exists()), paths[0])
        for t in tmps:
            with contextlib.suppress(OSError):
                t.unlink(missing_ok=True)
        raise write_failed(failed, e, figure_bytes(fig)).with_hint(
            "the runs and the figure's previous files are intact: free space and run the command again") from None


def plot_figure(cfg: DictConfig, overrides: Iterable[str] = ()) -> list[Path]:
    """Draw the figure of the composed config ``cfg`` (``compose(["figure=8", "scale=smoke"])``)
    from the runs under its folder (``<out_dir>/<scale>/<fig>``) that match ``overrides``
    (override strings; a sweep ``a=1,2`` keeps the runs with any of the values); returns the PNG
    and PDF paths. No runs, or none matching, is a one-line error."""
    overrides = list(overrides)
    fig = get_figure(str(cfg.figure.id))
    out = figure_dir(cfg.out_dir, name_of(cfg.scale.name), fig.config)
    use_style()
    if not fig.needs_runs:
        return save_figure(fig.plot(pd.DataFrame(), cfg), out / fig.config)
    df = read_runs(out)
    if df.empty:
        raise EnkfReproError(f"no runs of figure {fig.id} under {out}; run `enkf-repro run figure={fig.id} "
                             f"scale={name_of(cfg.scale.name)}` first")
    df = select_runs(df, fig, overrides)
    if df.empty:
        raise EnkfReproError(f"no runs of figure {fig.id} under {out} match {' '.join(overrides)}")
    if fig.tables is not None:
        for name, text in fig.tables(df, cfg).items():
            write_text_atomic(out / name, text)
    return save_figure(fig.plot(df, cfg), out / fig.config)
