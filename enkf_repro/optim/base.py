"""What a training method is, and the registry ``optimizer=<name>`` picks from.

A method module of this package holds its pure update function(s), its config dataclass (the
schema of ``configs/optimizer/<name>.yaml``, a subclass of ``config.schema.MethodConfig`` that
declares the method's neutral and positive keys, the sections it reads, its checks and its cost)
and its method class, and registers both with :func:`register_method`; the package imports every
module in it, so a new method is one module here plus one YAML file.

A method object is built from its typed config (the dataclass instance, Enum members for the
choices) and a :class:`MethodContext` (the model, the batched forward, the run's generator and
device, and the other sections of the run config it may read): ``Method(opt, ctx)``;
:func:`make_method` builds one from a run config. It is driven by the one training loop
(``runs/loop.py``):

* ``step(x, y) -> dict`` does one iteration on the inputs x (B, ...) and the targets y (B, C):
  one-hot labels, or real values for ``task=regression`` (and whitened by the noise covariance,
  ``optim/observation.py``, when one is given); it returns scalars to log at the next evaluation.
  For the ensemble Kalman methods it is ``tell(forward(ask(), x), y)``:
* ``ask() -> (J', P)`` the parameter vectors whose forward-map outputs the next ``tell`` needs
  (the ensemble; EKI's momentum point; the perturbed networks of haber and ienk_simple), and
  ``tell(outputs, y) -> dict`` the update from their outputs (J', B, C) (the raw forward map:
  a method applies its own softmax where its config says so). What lets a user evaluate the
  forward map outside PyTorch (``optim/process.py``); the backprop methods have neither;
* ``ensemble`` the members (J, P) a method keeps (None for backprop; single-network methods:
  their network, (1, P)), and ``set_ensemble(U)`` to start from given members (a saved ensemble);
* ``eval_params() -> {suffix: theta}`` the networks to evaluate (flat parameter vectors; the
  suffix names the metric, ``test_error`` for "" and ``test_error_<suffix>`` otherwise);
* ``diagnostics() -> dict`` scalars logged at every evaluation;
* ``rows(iteration, epoch) -> list`` extra CSV rows after a step (instrumentation);
* ``attach(batches)`` called once before training with the run's batch stream;
* ``on_epoch_end()`` called after the step that completes an epoch (the last presentation of
  the epoch's last batch), before that iteration's evaluation; a no-op unless the method
  acts on epochs (EKI's ``public`` (R) schedule);
* ``state_dict()`` / ``load_state_dict()`` everything a resumed run needs (the loop keeps the
  generator, the data position and Algorithm 1's state);
* ``export_state()`` what the run keeps of the method's final state beside the trained networks,
  and ``import_state(state)`` to start another run from it (a backprop run's
  optimizer state: ``optimizer.state_from``); nothing by default;
* ``repetitions`` presentations of each mini-batch (the EnKF's r; 1 otherwise), and
  ``shuffle_default`` whether mini-batches are reshuffled each epoch unless ``train.shuffle``
  says otherwise;
* ``finished`` (False by default): True when the method takes no further step (the data-misfit
  controller at its terminal time with ``on_terminate=stop``); the loop then evaluates and ends
  the run cleanly, before its iteration budget, with ``finish_reason`` in the run's summary.
* ``schedule(batches)`` the schedule the loop consults at every evaluation (the EnKF's
  Algorithm 1, adaptive.py; a fixed one by default).
* ``memory(opt, run)`` (a classmethod: nothing is built) what a run of the size ``run`` holds on
  its device besides the data: the networks its ensemble forward evaluates per call, at which
  batch sizes, and the method's own buffers (the ensemble, the update's factors), in bytes
  (:class:`MethodMemory`; ``runs/memory.py`` plans a run from it before any work).

Ensemble methods (:class:`EnsembleMethod`) make every update through ``apply_update``: the shared
non-finite member policy (failure.py), then the shared covariance inflation
(``optimizer.inflation``, inflation.py) with the step ``dt`` of that update.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf

from ..config.schema import (
    METHOD_SECTIONS,
    OPTIMIZER_SCHEMAS,
    Cost,
    InitConfig,
    InstrumentConfig,
    MethodConfig,
    Precision,
    RunSize,
    TrainConfig,
    method_config,
    upgrade,
)
from ..config.validate import check
from ..errors import ConfigError
from ..models.base import ModelSpec
from ..models.ensemble import precision_scope
from .adaptive import FixedSchedule
from .failure import FailureHandler
from .inflation import Inflation

METHODS: dict[str, type] = {}


def register_method(name: str, schema: type[MethodConfig], method: type) -> None:
    """Make ``optimizer=<name>`` build ``method`` from configs checked against ``schema``."""
    if not issubclass(schema, MethodConfig):
        raise TypeError(f"the config of optimizer={name}, {schema.__name__}, must subclass config.schema.MethodConfig")
    unknown = set(schema.reads) - set(METHOD_SECTIONS)
    if unknown:
        raise TypeError(f"{schema.__name__}.reads names {sorted(unknown)}; the sections a method may read are "
                        f"{', '.join(METHOD_SECTIONS)}")
    OPTIMIZER_SCHEMAS[name] = schema
    METHODS[name] = method


def get_method(name: str) -> type:
    if name not in METHODS:
        raise ConfigError("optimizer", name, "one of " + ", ".join(sorted(METHODS)))
    return METHODS[name]


@dataclass
class MethodContext:
    """What a method is built from besides its own config: the network, the batched forward, the
    run's generator and device, and the sections of the run config a method may read."""

    model: ModelSpec
    # outputs (J, B, C) of the networks U (J, P) on the images x (B, ...)
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    generator: torch.Generator
    device: torch.device
    # ``init.*``: the prior the networks are drawn from (InitConfig's keys; ModelSpec.init reads it)
    init: DictConfig = field(default_factory=lambda: OmegaConf.structured(InitConfig))
    update_precision: Precision = Precision.fp32    # ``ensemble.update_precision``
    train: TrainConfig = field(default_factory=TrainConfig)
    # a section of METHOD_SECTIONS: given only to a method whose config ``reads`` it
    instrument: InstrumentConfig | None = None

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)

    @classmethod
    def of(cls, cfg, opt: MethodConfig, model: ModelSpec, forward, generator: torch.Generator,
           device) -> "MethodContext":
        """The context of the (upgraded) run config ``cfg`` for the method configured by ``opt``."""
        sections = {key: OmegaConf.to_object(cfg[key]) for key in METHOD_SECTIONS if key in type(opt).reads}
        return cls(model, forward, generator, device, init=cfg.init,
                   update_precision=cfg.ensemble.update_precision, train=OmegaConf.to_object(cfg.train), **sections)


def make_method(cfg, model: ModelSpec, forward, generator: torch.Generator, device, cls: type | None = None,
                **kwargs) -> "Method":
    """The method object of the run config ``cfg`` (upgraded onto the schema: an earlier run's or
    a hand-built config gets the defaults of the keys it lacks): ``cls`` (default: the registered
    class of ``optimizer.name``) built from the typed ``optimizer`` section and its context."""
    cfg = upgrade(cfg)
    opt = method_config(cfg.optimizer)
    ctx = MethodContext.of(cfg, opt, model, forward, generator, device)
    return (cls or get_method(opt.name))(opt, ctx, **kwargs)


# -- what the method configs share ------------------------------------------------------------------
def check_ensemble_size(opt) -> None:
    """``optimizer.ensemble_size``: J >= 2 (members, or perturbations per step)."""
    check(opt.ensemble_size >= 2, "optimizer.ensemble_size", opt.ensemble_size, "an integer >= 2 (J)")


def ensemble_cost(J: int, run: RunSize, repetitions: int = 1) -> Cost:
    """An ensemble method's run: per iteration the forward of J networks on the batch, J B f FLOPs,
    and the update, about 4 J d P (two GEMMs of J x d x P, d = B C); ``repetitions`` iterations per
    mini-batch; plus the evaluations (one network over the test set each). The paper's EnKF
    (J = 5000, paper_cnn: f = 0.95 MFLOP, P = 18,050, B = 64) costs 0.31 + 0.23 TFLOP per
    iteration, about 4 PFLOP per epoch of 7,504 iterations."""
    iterations = run.batches * repetitions
    B, d = run.batch_size, run.batch_size * run.classes
    flops = iterations * (J * B * run.forward_flops + 4.0 * J * d * run.params) + run.evaluation_flops(repetitions)
    return Cost(flops, iterations, "step")


class MethodMemory(NamedTuple):
    """What a method holds on its device during a run (``Method.memory``): ``members`` networks
    per call of the ensemble forward (0: none), at the batch sizes ``batches``; ``buffers``:
    {what: bytes} of its own tensors (the ensemble, the update's factors and work space)."""

    members: int
    batches: tuple[int, ...]
    buffers: dict[str, int]


FP32, FP64 = 4, 8
UPDATE_BLOCK = 1 << 24   # elements of U an update touches at a time (optim/linalg.py BLOCK_ELEMENTS)


def ensemble_buffers(opt, run: RunSize, J: int | None = None) -> dict[str, int]:
    """Bytes of an ensemble method's tensors at J members (default ``opt.ensemble_size``) and P
    parameters: the ensemble U (J x P, fp32); the update's factors (a few J x d in float64,
    d = B C, and the d x d or J x J systems), its column blocks of about 2^24 elements; a copy of
    the finite members when some member fails (``nonfinite`` redraw or ignore); the J x J noise
    of additive inflation with the ensemble's own covariance."""
    J = int(opt.ensemble_size if J is None else J)
    P, d = run.params, run.batch_size * run.classes
    block = max(256, UPDATE_BLOCK // max(J, 1))
    # the EnKF's sequential update solves a d x d triangular system; the others work in the
    # smaller of the data and ensemble spaces
    mode = getattr(opt, "update_mode", None)
    system = d * d if getattr(mode, "value", mode) == "sequential" else min(J, d) ** 2
    out = {
        f"ensemble U ({J} x {P}, fp32)": FP32 * J * P,
        "update factors": FP64 * (6 * J * d + 3 * system) + FP32 * min(J, d) ** 2,
        "update column blocks": FP32 * (J + d) * min(block, P),
    }
    policy = getattr(opt, "nonfinite", None)
    if policy is not None and getattr(policy, "value", policy) != "fail":
        out["copy of the finite members (when some fail)"] = FP32 * J * P
    inflation = getattr(opt, "inflation", None)
    if inflation is not None and (inflation.multiplicative is not None or inflation.additive is not None):
        out["inflation work space"] = FP64 * J * J + FP32 * J * min(block, P)
    return out


def backprop_cost(run: RunSize) -> Cost:
    """One network trained by backpropagation: forward and backward, about 3 B f FLOPs per
    mini-batch, plus the evaluations."""
    return Cost(run.batches * run.batch_size * 3.0 * run.forward_flops + run.evaluation_flops(), run.batches, "step")


class Method:
    """Defaults of the method interface (module docstring). ``config`` is the method's typed
    config (its MethodConfig dataclass)."""

    config: MethodConfig
    repetitions: int = 1
    shuffle_default: ClassVar[bool] = False

    @property
    def finished(self) -> bool:
        """True when the method takes no further step (the loop then ends the run)."""
        return False

    @property
    def finish_reason(self) -> str:
        """Why ``finished`` became True (for the run's summary and the log)."""
        return ""

    def attach(self, batches) -> None:
        """Called once by the loop before training (or resuming) with the run's batch stream."""

    def ask(self) -> torch.Tensor:
        """The parameter vectors (J', P) whose forward-map outputs the next :meth:`tell` takes."""
        raise ConfigError("method", self.config.name, "an ensemble Kalman method for ask() / tell(): "
                          f"{self.config.name} trains by backpropagation, through step(x, y)")

    def tell(self, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """The update from the outputs (J', B, C) of the last :meth:`ask`'s rows on targets y (B, C)."""
        raise ConfigError("method", self.config.name, "an ensemble Kalman method for ask() / tell(): "
                          f"{self.config.name} trains by backpropagation, through step(x, y)")

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """One iteration: ``tell(forward(ask(), x), y)``."""
        return self.tell(self.forward(self.ask(), x), y)

    @property
    def ensemble(self) -> torch.Tensor | None:
        """The members (J, P) the method keeps (None: it trains one network by backpropagation)."""
        return None

    def set_ensemble(self, U: torch.Tensor) -> None:
        """Start from the members U (J, P) (a saved ensemble)."""
        raise ConfigError("ensemble_from", "set", f"null: {self.config.name} keeps no ensemble")

    def on_epoch_end(self) -> None:
        """Called by the loop after the step that completes an epoch, before its evaluation."""

    def schedule(self, batches):
        """What the loop consults at every evaluation (``on_eval``): nothing changes by default."""
        return FixedSchedule()

    def eval_params(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def diagnostics(self) -> dict[str, float]:
        return {}

    def rows(self, iteration: int, epoch: float) -> list[dict]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def export_state(self) -> dict[str, Any]:
        return {}

    def import_state(self, state: dict[str, Any]) -> None:
        raise ConfigError("optimizer.state_from", "set", f"null: {type(self).__name__} does not start from "
                          "another run's state")

    def close(self) -> None:
        pass

    @classmethod
    def memory(cls, opt: MethodConfig, run: RunSize) -> MethodMemory:
        """What a run of the size ``run`` holds on its device (module docstring): by default one
        network evaluated on the batch, its parameters and their gradient."""
        return MethodMemory(1, (run.batch_size,), {"network and gradient": 2 * FP32 * run.params})


class EnsembleMethod(Method):
    """A persistent ensemble U (J, P) drawn from the init prior, evaluated through its mean, with
    the shared non-finite member policy (``optimizer.nonfinite``, failure.py).

    The prior covers every parameter, biases included (``init.bias_sigma``; ``ModelSpec.init``
    with ``ensemble=True``): biases that started at 0 in every member would stay 0 under any
    update that combines member differences (EnKF, EKI), i.e. they would never train."""

    def __init__(self, opt: MethodConfig, ctx: MethodContext):
        """``opt`` has ``ensemble_size`` (J), ``nonfinite`` and ``inflation`` (InflationConfig)."""
        self.config = opt
        self.model, self.forward, self.generator, self.device = ctx.model, ctx.forward, ctx.generator, ctx.device
        self.U = ctx.model.init(opt.ensemble_size, ctx.init, ctx.generator, ctx.device, ensemble=True)
        self.failures = FailureHandler(opt.nonfinite, ctx.generator)
        self.update_precision = ctx.update_precision.value
        self.dt = 1.0   # the step of the last update (Gamma -> Gamma / dt); the EnKF's is 1
        self.inflation = Inflation(opt.inflation, ctx.generator,
                                   lambda: ctx.model.prior_std(ctx.init, ctx.device, ensemble=True) ** 2)

    def apply_update(self, U: torch.Tensor, G: torch.Tensor, update) -> tuple[Any, int]:
        """The one way an ensemble method updates its ensemble: ``update(U_rows, G_rows)`` (in
        place, setting ``self.dt``) on the members with finite outputs, the non-finite policy for
        the others (``optimizer.nonfinite``), then inflation (``optimizer.inflation``, off by
        default). Returns (what ``update`` returned, number of non-finite members)."""
        out, nbad = self.failures.apply(U, G, update)
        if self.inflation.enabled:
            self.inflation.apply_(U, self.dt)
        return out, nbad

    def update_scope(self):
        """The precision of the update's large GEMMs (``ensemble.update_precision``: IEEE fp32, or
        TensorFloat-32 tensor cores on CUDA). The factors W, Z (J x d) are computed in float64;
        their J x J product (when J <= d) is formed in the ensemble's dtype like the large GEMMs."""
        return precision_scope(self.update_precision, self.device)

    @property
    def ensemble_size(self) -> int:
        return self.U.shape[0]

    def ask(self) -> torch.Tensor:
        return self.U

    @property
    def ensemble(self) -> torch.Tensor:
        return self.U

    def set_ensemble(self, U: torch.Tensor) -> None:
        """Start from the members U (J, P) (J may differ from ``ensemble_size``)."""
        P = self.U.shape[1]
        if U.dim() != 2 or U.shape[1] != P or U.shape[0] < 2:
            raise ConfigError("ensemble", f"a tensor of shape {tuple(U.shape)}", f"an ensemble (J, {P}), J >= 2")
        self.U = U.detach().to(device=self.U.device, dtype=self.U.dtype).clone()
    @classmethod
    def memory(cls, opt: MethodConfig, run: RunSize) -> MethodMemory:
        """The J members forward on the batch; the ensemble and the update (:func:`ensemble_buffers`)."""
        return MethodMemory(int(opt.ensemble_size), (run.batch_size,), ensemble_buffers(opt, run))

    def eval_params(self) -> dict[str, torch.Tensor]:
        return {"": self.U.mean(0)}

    def diagnostics(self) -> dict[str, float]:
        return {"ensemble_spread": float(self.U.std(0).mean()), "nonfinite_members": self.failures.total,
                "ensemble_size": self.ensemble_size}

    def state_dict(self) -> dict[str, Any]:
        return {"U": self.U, "nonfinite_total": self.failures.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.U = state["U"].to(self.U.device)
        self.failures.total = int(state["nonfinite_total"])


class SingleNetworkMethod(Method):
    """A method that trains one network theta with perturbations drawn afresh each step (no
    ensemble to keep): evaluation, diagnostics and checkpoint state are those of theta alone."""

    theta: torch.Tensor
    K: int   # perturbations per step

    @classmethod
    def memory(cls, opt: MethodConfig, run: RunSize) -> MethodMemory:
        """theta and K perturbations (``ensemble_size``, 1 if none) forward together, K + 1 networks per call."""
        K = int(getattr(opt, "ensemble_size", 1) or 1)
        return MethodMemory(K + 1, (run.batch_size,), {f"perturbations ({K} x {run.params}, twice)":
                                                       2 * FP32 * (K + 1) * run.params})

    def eval_params(self) -> dict[str, torch.Tensor]:
        return {"": self.theta}

    @property
    def ensemble(self) -> torch.Tensor:
        return self.theta.unsqueeze(0)

    def set_ensemble(self, U: torch.Tensor) -> None:
        """Start from the network U (P,) or (1, P), or from the mean of the members U (J, P)."""
        U = U.detach().reshape(-1, self.theta.shape[0]) if U.numel() % self.theta.shape[0] == 0 else U
        if U.dim() != 2 or U.shape[1] != self.theta.shape[0]:
            raise ConfigError("ensemble", f"a tensor of shape {tuple(U.shape)}",
                              f"a network ({self.theta.shape[0]},) or members (J, {self.theta.shape[0]})")
        self.theta = U.mean(0).to(device=self.theta.device, dtype=self.theta.dtype)

    def diagnostics(self) -> dict[str, float]:
        return {"ensemble_size": self.K}

    def state_dict(self) -> dict[str, Any]:
        return {"theta": self.theta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta = state["theta"].to(self.theta.device)
