"""Where the tool keeps what it measured about the machine (rates for cost estimates, cached
tables): ``$ENKF_REPRO_CACHE``, else ``$XDG_CACHE_HOME/enkf-repro``, else ``~/.cache/enkf-repro``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("ENKF_REPRO_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "enkf-repro"


def rates_file() -> Path:
    """Measured compute rates per device kind (written by ``enkf-repro bench`` or a probe)."""
    return cache_dir() / "rates.json"
