"""The figure registry: importing this package registers every figure module."""

from .base import FIGURES, Figure, PaperNumber, Variant, figure_ids, get_figure, register  # noqa: F401
from . import fig8  # noqa: F401,E402  (registration)
from . import eki_scaling, eki_table, thesis  # noqa: F401,E402  (issue 7)
