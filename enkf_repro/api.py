"""The library's entry points for scripts and notebooks."""

from __future__ import annotations

from typing import Sequence

from omegaconf import DictConfig

from . import optim  # noqa: F401  (every method registers its config schema)
from .config.compose import compose as _compose
from .config.compose import normalize_figure_args


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config of ``enkf-repro run <overrides>``, e.g. ``compose(["figure=8", "scale=smoke"])``
    (``figure=8`` as on the command line); pass it to :func:`enkf_repro.run_figure`."""
    return _compose(normalize_figure_args(list(overrides)))
