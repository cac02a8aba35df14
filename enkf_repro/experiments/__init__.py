"""The figure registry: importing this package registers every figure module."""

from .base import FIGURES, Figure, PaperNumber, Variant, figure_ids, get_figure, register  # noqa: F401

# one line per figure module (registration happens on import)
from . import fig1  # noqa: F401,E402
from . import fig2  # noqa: F401,E402
from . import saturation  # noqa: F401,E402  (Figures 3-7)
from . import fig8  # noqa: F401,E402
from . import fig9  # noqa: F401,E402
from . import fig10  # noqa: F401,E402
from . import eki_table  # noqa: F401,E402
from . import eki_scaling  # noqa: F401,E402
from . import thesis  # noqa: F401,E402
