"""Running: the one training loop, run folders (lock, CSV, checkpoints), the plan of a figure's
runs and their execution, over one or several processes."""

from .. import optim  # noqa: F401  (registers every method's config schema before any composing)
