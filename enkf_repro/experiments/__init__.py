"""The figure registry: importing this package registers every figure module."""

from .base import FIGURES, Figure, PaperNumber, Variant, figure_ids, get_figure, register  # noqa: F401
from . import fig8  # noqa: F401,E402  (registration)
from . import fig1, saturation  # noqa: F401,E402  (registration: Figures 1, 3-7)
