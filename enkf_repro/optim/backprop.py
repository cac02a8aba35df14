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
from enum import Enum
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..config.schema import Cost, MethodConfig, RunSize
from ..errors import ConfigError
from .base import FP32, Method, MethodContext, MethodMemory, backprop_cost, register_method
from .instrument import Instrument


class BackpropLoss(str, Enum):
    cross_entropy = "cross_entropy"  # classification: cross-entropy of the logits
    mse = "mse"                      # real-valued targets: 1/2 |f(x) - y|^2 per sample, mean over the batch


class BackpropConfig(MethodConfig):
    """What SGD and Adam declare alike: their runs log the instrumentation (``instrument.*``),
    ``state_from`` and ``loss`` came later (null, a fresh optimizer, and cross_entropy reproduce the
    earlier runs), and a step is one network's forward and backward pass."""

    neutral = {"state_from": None, "loss": BackpropLoss.cross_entropy}
    regression = {"loss": BackpropLoss.mse}
    positive = ("lr",)
    reads = ("instrument",)

    def cost(self, run: RunSize) -> Cost:
        return backprop_cost(run)


@dataclass
class SGDConfig(BackpropConfig):
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
    loss: BackpropLoss = BackpropLoss.cross_entropy

    def make(self, params) -> torch.optim.Optimizer:
        """A new torch optimizer over ``params`` (never reused across runs)."""
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                               weight_decay=self.weight_decay)


@dataclass
class AdamConfig(BackpropConfig):
    """``optimizer=adam``: Adam, the paper's second backprop baseline."""

    name: str = "adam"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    state_from: Optional[str] = None   # as SGDConfig.state_from
    loss: BackpropLoss = BackpropLoss.cross_entropy

    def make(self, params) -> torch.optim.Optimizer:
        """A new torch optimizer over ``params`` (never reused across runs)."""
        return torch.optim.Adam(params, lr=self.lr, betas=(self.beta1, self.beta2), weight_decay=self.weight_decay)


class Backprop(Method):
    """One network trained by backpropagation with ``torch.optim`` (SGD or Adam)."""

    shuffle_default = True

    config: SGDConfig | AdamConfig

    def __init__(self, opt: SGDConfig | AdamConfig, ctx: MethodContext):
        self.config, self.ctx = opt, ctx
        self.net = ctx.model.module().to(ctx.device)
        # the standard init: zero biases (init.bias_sigma is the ensemble methods' prior only)
        torch.nn.utils.vector_to_parameters(ctx.model.init(1, ctx.init, ctx.generator, ctx.device)[0],
                                            self.net.parameters())
        self.opt = opt.make(self.net.parameters())
        self.inst: Instrument | None = None
        self.step_count = 0
        self.net.train()

    @classmethod
    def memory(cls, opt: SGDConfig | AdamConfig, run: RunSize) -> MethodMemory:
        """One network on the batch (its activations kept for the backward pass: twice the
        forward's), its gradient and the optimizer's state (momentum, or Adam's two moments)."""
        return MethodMemory(2, (run.batch_size,), {"network, gradient and optimizer state": 4 * FP32 * run.params})

    def attach(self, batches) -> None:
        icfg = self.ctx.instrument
        if icfg is not None and icfg.enabled:
            self.inst = Instrument(self.net, icfg, batches.per_epoch, batches.total, self.ctx.train.epochs,
                                   batches.data_fraction)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        self.opt.zero_grad(set_to_none=True)
        with self.inst.capture() if self.inst is not None else contextlib.nullcontext():
            logits = self.net(x)
        if self.config.loss == BackpropLoss.mse:
            loss = 0.5 * ((logits - y) ** 2).sum(1).mean()
        else:
            loss = F.cross_entropy(logits, y.argmax(1))
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
