"""Running: the one training loop, run folders (lock, CSV, checkpoints), the plan of a figure's
runs and their execution, over one or several processes."""

from .. import experiments, optim  # noqa: F401  (register every figure's and method's schemas before composing)
