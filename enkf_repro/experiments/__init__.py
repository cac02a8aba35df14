"""The figures: what each runs (variants x seeds), how it is drawn, what the paper reports.

Importing this package imports every module in it; a figure module registers itself
(``base.register``), so a new figure is one module here plus one YAML in ``configs/figure/``.
"""

import importlib
import pkgutil

from .base import FIGURES, Claim, Figure, PaperNumber, Variant, figure_ids, get_figure, register  # noqa: F401

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "common", "draw"):
        importlib.import_module(f"{__name__}.{_info.name}")
