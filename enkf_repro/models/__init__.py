"""Networks as functions of a flat parameter vector, and the batched, chunked ensemble forward."""

from .base import ModelSpec, glorot_std  # noqa: F401
from .dense import DenseNet, DenseSpec  # noqa: F401
from .ensemble import EnsembleForward, resolve_device  # noqa: F401
from .paper_cnn import PaperCNN, PaperCNNSpec  # noqa: F401
from .registry import build_model, register_model  # noqa: F401
