"""Training methods: one module per method (its pure update, its config dataclass and its method
class, registered with ``base.register_method``), and what they share (linear algebra, the
non-finite member policy, Algorithm 1, instrumentation).

Importing this package imports every module in it, so ``optimizer=<name>`` finds a new method
module without any other file changing.
"""

import importlib
import pkgutil

from .base import METHODS, get_method, register_method  # noqa: F401

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
