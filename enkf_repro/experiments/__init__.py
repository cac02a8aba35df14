"""The figure registry: importing this package registers every figure module."""

from .base import FIGURES, Figure, PaperNumber, Variant, figure_ids, get_figure, register  # noqa: F401
from . import fig8  # noqa: F401,E402  (registration)
from . import fig9  # noqa: F401,E402  (registration)
from . import fig10  # noqa: F401,E402  (registration)
