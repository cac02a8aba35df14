"""``model=<name>`` -> its :class:`~enkf_repro.models.base.ModelSpec`.

A model registers a builder ``(cfg.model) -> ModelSpec`` under its name with :func:`register_model`.
"""

from __future__ import annotations

from typing import Callable

from ..config.schema import name_of
from ..errors import ConfigError
from .base import ModelSpec
from .custom import build_custom
from .dense import DenseSpec
from .paper_cnn import PaperCNNSpec

MODELS: dict[str, Callable[..., ModelSpec]] = {}


def register_model(name: str, build: Callable[..., ModelSpec]) -> None:
    MODELS[name] = build


def build_model(mcfg) -> ModelSpec:
    """The ModelSpec for ``cfg.model``."""
    name = name_of(mcfg.name)
    if name not in MODELS:
        raise ConfigError("model", name, f"one of {', '.join(sorted(MODELS))}")
    return MODELS[name](mcfg)


register_model("paper_cnn", lambda m: PaperCNNSpec(m.activation, m.pool_conv2))
# the 2019 thesis's MLP (784-128-10) and the dense DNN 1-4 standing in for Kovachki & Stuart's
for _name in ("mlp", "dnn1", "dnn2", "dnn3", "dnn4"):
    register_model(_name, lambda m, _n=_name: DenseSpec(_n, m.hidden, m.activation))
# any nn.Module: model.target=pkg.module:Factory with model.kwargs (models/custom.py)
register_model("custom", build_custom)
