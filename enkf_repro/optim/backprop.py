"""Backprop baselines (``optimizer=sgd|adam``): cross-entropy on shuffled mini-batches, with the
paper's instrumentation of the saturation study (instrument.py).

Every run starts from a freshly initialised network (weights ~ N(0, init.sigma^2), as the
ensemble members) and a fresh optimizer: the published script let optimizer state carry over
between configurations, which this does not copy. The training loop (``runs/loop.py``) is the
one every method uses: it evaluates the network, checkpoints (network, optimizer state, pending
instrumentation) and resumes exactly.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.base import ModelSpec
from .base import Method, register_method
from .instrument import Instrument


@dataclass
class SGDConfig:
    """``optimizer=sgd``: SGD with momentum, the paper's backprop baseline."""

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    # the id of a finished run (same optimizer, under out_dir) whose final optimizer state this run
    # starts from, with freshly initialised weights: the published script built each optimizer
    # once and reused it across its sigma sweep (null: a fresh optimizer, the default)
    state_from: Optional[str] = None


@dataclass
class AdamConfig:
    """``optimizer=adam``: Adam, the paper's second backprop baseline."""

    name: str = "adam"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    state_from: Optional[str] = None   # as SGDConfig.state_from


def make_optimizer(ocfg, params) -> torch.optim.Optimizer:
    """A new optimizer for ``cfg.optimizer`` (never reused across runs)."""
    if ocfg.name == "sgd":
        return torch.optim.SGD(params, lr=ocfg.lr, momentum=ocfg.momentum, nesterov=ocfg.nesterov,
                               weight_decay=ocfg.weight_decay)
    if ocfg.name == "adam":
        return torch.optim.Adam(params, lr=ocfg.lr, betas=(ocfg.beta1, ocfg.beta2),
                                weight_decay=ocfg.weight_decay)
    raise ValueError(f"not a backprop optimizer: {ocfg.name}")


class Backprop(Method):
    """One network trained by backpropagation with ``torch.optim`` (SGD or Adam)."""

    shuffle_default = True

    def __init__(self, cfg, model: ModelSpec, forward, generator: torch.Generator, device: torch.device):
        self.cfg = cfg
        self.net = model.module().to(device)
        # the standard init: zero biases (init.bias_sigma is the ensemble methods' prior only)
        torch.nn.utils.vector_to_parameters(model.init(1, cfg.init, generator, device)[0], self.net.parameters())
        self.opt = make_optimizer(cfg.optimizer, self.net.parameters())
        self.inst: Instrument | None = None
        self.step_count = 0
        self.net.train()

    def attach(self, batches) -> None:
        icfg = self.cfg.get("instrument")
        if icfg is not None and icfg.enabled:
            self.inst = Instrument(self.net, icfg, batches.per_epoch, batches.total, float(self.cfg.train.epochs),
                                   batches.data_fraction)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        labels = y.argmax(1)
        self.opt.zero_grad(set_to_none=True)
        with self.inst.capture() if self.inst is not None else contextlib.nullcontext():
            logits = self.net(x)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        self.step_count += 1
        if self.inst is not None:
            self.inst.record(self.step_count, logits)
        self.opt.step()
        return {"train_loss": loss}   # a tensor: read (one device sync) only when it is logged

    def eval_params(self) -> dict[str, torch.Tensor]:
        return {"": torch.nn.utils.parameters_to_vector(self.net.parameters()).detach()}

    def rows(self, iteration: int, epoch: float) -> list[dict]:
        return self.inst.rows(iteration) if self.inst is not None else []

    def state_dict(self) -> dict[str, Any]:
        out = {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "step": self.step_count}
        if self.inst is not None:
            out["instrument"] = self.inst.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.step_count = int(state["step"])
        if self.inst is not None:
            self.inst.load_state_dict(state["instrument"])

    def export_state(self) -> dict[str, Any]:
        """The optimizer's final state (momentum buffers, Adam's moments and step count)."""
        return {"optimizer": self.opt.state_dict()}

    def import_state(self, state: dict[str, Any]) -> None:
        """Start from another run's final optimizer state (``optimizer.state_from``); the weights
        stay this run's own initialisation."""
        if "optimizer" not in state:
            raise ConfigError("optimizer.state_from", "set", "the id of a backprop run (that run kept no optimizer "
                              "state)")
        self.opt.load_state_dict(state["optimizer"])

    def close(self) -> None:
        if self.inst is not None:
            self.inst.close()


register_method("sgd", SGDConfig, Backprop)
register_method("adam", AdamConfig, Backprop)
