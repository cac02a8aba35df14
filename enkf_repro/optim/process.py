"""The step object: any method of this package driven one step at a time, in PyTorch's style
(``proc.step(x, y)``) or in EnsembleKalmanProcesses.jl's ask / tell style for a forward map the
user evaluates (``U = proc.ask()``, ``proc.tell(G(U), y)``, its ``get_u`` and
``update_ensemble!``). The training loop of ``enkf-repro run`` and :func:`enkf_repro.train`
(``runs/loop.py``) steps through the same object: one implementation.

A process is built from

* a network (any ``nn.Module``; its parameters' layout and init prior, evaluated in batched
  calls, ``models/custom.py``), optionally followed by an observation operator ``observe``
  (``models/forward_map.py``), or from a Gaussian prior over P parameters (``prior=(mean, std)``,
  ``(mean, covariance)`` or a ``torch.distributions`` Normal / MultivariateNormal) for a forward
  map evaluated outside PyTorch;
* a method by name with its options (``ensemble_size=100``, ``scheduler="data_misfit"``,
  ``"optimizer.h0"``: the keys of ``optimizer.*``, ``init.*``, ``ensemble.*``, as for ``train``);
* the task: ``classification`` (targets are class labels or one-hot rows; the default for a
  network) or ``regression`` (real-valued targets (B, D); the default for a prior); the methods'
  output choices follow it (``MethodConfig.regression``: EKI's ``loss=mse``, haber's and
  ienk_simple's ``output=logits``);
* the observation noise: ``noise=`` a number (Gamma = gamma * I: the method's ``gamma``), D
  variances or a D x D matrix (whitened once by its Cholesky factor, ``optim/observation.py``; the
  method's gamma is then 1).

The targets and outputs have a sample axis: a mini-batch of B samples, each with D outputs; a
forward map of one observation vector of d values is one sample, ``tell`` takes outputs (J, d)
and data (d,) as (J, 1, d) and (1, d).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config.options import flatten_options, leaf_keys, resolve_option
from ..config.schema import Task, method_config, name_of, upgrade
from ..config.validate import validate
from ..errors import ConfigError
from ..models.base import ModelSpec
from ..models.ensemble import EnsembleForward, resolve_device
from ..models.forward_map import ObservedSpec, PriorSpec
from .base import METHODS, EnsembleMethod, Method, get_method, make_method
from .observation import Noise, as_noise
from .predictive import Prediction, predict
from .schedulers import StepScheduler

# Keys of a run config that a process does not take as options (a run's data, model, loop, folders).
NOT_PROCESS_OPTIONS = ("dataset.", "model.", "figure.", "scale.", "instrument.", "train.", "optimizer.name",
                       "overrides", "only", "distributed", "time_budget", "out_dir", "restart", "checkpoint_every",
                       "progress", "task", "noise", "ensemble_from", "keep_ensemble", "threads", "logger",
                       "logger_dir", "seed", "device")


def check_observation(cfg, noisy: bool | None = None) -> None:
    """The task and the noise against the method: with ``task=regression`` the method's
    output choices must be the raw ones (``MethodConfig.regression``); a noise covariance
    (``cfg.noise``, or ``noisy``) needs an ensemble Kalman method (ask / tell), raw outputs, and
    the method's gamma at 1."""
    opt = method_config(cfg.optimizer)
    schema = type(opt)
    raw = getattr(schema, "regression", {})
    if name_of(cfg.task) == Task.regression.value:
        for key, value in raw.items():
            if getattr(opt, key) != value:
                raise ConfigError(f"optimizer.{key}", name_of(getattr(opt, key)),
                                  f"{name_of(value)} with task=regression (real-valued targets)")
    if not (cfg.get("noise") is not None if noisy is None else noisy):
        return
    if METHODS[opt.name].ask is Method.ask:
        raise ConfigError("noise", "set", f"null for optimizer={opt.name}: a noise covariance weights the ensemble "
                          "Kalman methods' misfit (enkf, eki, etki, haber, ienk_simple)")
    for key, value in raw.items():
        if getattr(opt, key) != value:
            raise ConfigError(f"optimizer.{key}", name_of(getattr(opt, key)),
                              f"{name_of(value)} with a noise covariance (it whitens the raw outputs)")
    key = getattr(schema, "noise_key", None)
    if key is not None and float(getattr(opt, key)) != 1.0:
        raise ConfigError(f"optimizer.{key}", getattr(opt, key), "1 with a noise covariance (noise= replaces "
                          f"{key} * I)")


def process_config(method: str, options: Mapping[str, Any] | None = None, *, task: str = "classification",
                   noisy: bool = False, seed: int = 0, device: str = "cpu") -> DictConfig:
    """The run config of a process: the method's schema with ``options`` (by name, as
    :func:`enkf_repro.train` takes them), the regression values of its output choices for
    ``task=regression`` and gamma = 1 with a noise covariance (``noisy``), unless set in
    ``options``. One ConfigError line for a bad name or value."""
    get_method(str(method))
    cfg = upgrade({"optimizer": {"name": str(method)}})
    try:
        cfg.task, cfg.seed, cfg.device = task, int(seed), str(device)
    except OmegaConfBaseException:
        raise ConfigError("task", task, "classification or regression") from None
    keys = leaf_keys(cfg, NOT_PROCESS_OPTIONS)
    chosen = [(resolve_option(k, keys, str(method), v, "EnsembleKalmanProcess"), v)
              for k, v in flatten_options(options or {})]
    schema = type(method_config(cfg.optimizer))
    defaults = dict(getattr(schema, "regression", {})) if task == Task.regression.value else {}
    if noisy and getattr(schema, "noise_key", None):
        defaults[schema.noise_key] = 1.0
    given = {k for k, _ in chosen}
    for key, value in [(f"optimizer.{k}", v) for k, v in defaults.items() if f"optimizer.{k}" not in given] + chosen:
        if isinstance(value, StepScheduler):
            value = value.name
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as e:
            reason = str(getattr(e, "msg", "") or e).strip().splitlines()[0]
            raise ConfigError(key, value, reason) from None
    validate(cfg)
    return cfg


def _prior_spec(prior: Any) -> PriorSpec:
    if isinstance(prior, PriorSpec):
        return prior
    if isinstance(prior, torch.distributions.MultivariateNormal):
        return PriorSpec(prior.mean, covariance=prior.covariance_matrix)
    if isinstance(prior, torch.distributions.Normal):
        return PriorSpec(prior.mean.reshape(-1), std=prior.stddev.reshape(-1))
    if isinstance(prior, (tuple, list)) and len(prior) == 2:
        mean, spread = prior
        spread_t = torch.as_tensor(spread)
        if spread_t.dim() == 2:
            return PriorSpec(mean, covariance=spread_t)
        return PriorSpec(mean, std=spread_t)
    raise ConfigError("prior", type(prior).__name__, "(mean, std), (mean, covariance) or a torch.distributions "
                      "Normal / MultivariateNormal")


class EnsembleKalmanProcess:
    """A method driven step by step (module docstring).

    Args:
        model: an ``nn.Module`` (its parameters are what is trained) or a ``ModelSpec``; or None
            with ``prior``.
        method: ``enkf``, ``eki``, ``etki``, ``haber``, ``ienk_simple`` (ask / tell and step), ``sgd``,
            ``adam`` (step only).
        prior: a Gaussian prior over P parameters when there is no network: ``(mean, std)``,
            ``(mean, covariance)`` or a ``torch.distributions`` Normal / MultivariateNormal; the
            ensemble is drawn in the mean's dtype (float64 stays float64).
        observe: the observation operator: outputs (J, B, C) -> observables (J, B, D).
        forward: with ``prior``, a batched forward map ``forward(U (J, P), x) -> (J, B, D)`` that
            ``step`` and ``predict`` use (optional: ask / tell need none).
        noise: Gamma: a number (gamma * I), D variances or a D x D matrix.
        task: ``"classification"`` or ``"regression"`` (default: classification with a model,
            regression with a prior).
        num_classes: for class labels given to ``step`` (default: the forward map's outputs).
        scheduler: a step scheduler by name or as an object (``DataMisfitController(...)``: EKI, ETKI).
        ensemble: the initial members (J, P) instead of draws from the prior (a saved ensemble).
        seed, device: the generator's seed (the prior draws, the methods' noise) and the device.
        **options: the method's and the run's keys by name (``ensemble_size``, ``gamma``,
            ``init_sigma``, ``chunk_size``, ``{"optimizer.h0": 1.0}``), as ``enkf_repro.train``.
    """

    def __init__(self, model: Any = None, method: str = "eki", *, prior: Any = None, observe: Callable | None = None,
                 forward: Callable | None = None, noise: Any = None, task: str | None = None,
                 num_classes: int | None = None, scheduler: Any = None, ensemble: Any = None, seed: int = 0,
                 device: str = "cpu", **options: Any):
        if (model is None) == (prior is None):
            raise ConfigError.line("EnsembleKalmanProcess takes a model (an nn.Module) or a prior, one of the two")
        task = task or ("classification" if model is not None else "regression")
        scalar = noise is not None and torch.as_tensor(noise).numel() == 1 and torch.as_tensor(noise).dim() == 0
        if scheduler is not None:
            options = {**options, "scheduler": scheduler.name if isinstance(scheduler, StepScheduler) else scheduler}
        cfg = process_config(method, options, task=task, noisy=noise is not None and not scalar, seed=seed,
                             device=name_of(device))
        if scalar:
            key = getattr(type(method_config(cfg.optimizer)), "noise_key", None)
            if key is None:
                raise ConfigError("noise", float(noise), f"D variances or a matrix: optimizer={method} has no "
                                  "gamma * I (its gamma is a damping)")
            cfg.optimizer[key] = float(torch.as_tensor(noise))
            validate(cfg)
        if prior is not None:
            spec: ModelSpec = _prior_spec(prior)
        elif isinstance(model, ModelSpec):
            spec = model
        else:
            from ..models.custom import spec_for_module

            spec = spec_for_module(model)
        if observe is not None:
            spec = ObservedSpec(spec, observe)
        dev = resolve_device(cfg.device)
        generator = torch.Generator(device=dev).manual_seed(int(seed))
        self._setup(cfg, spec, dev, generator, noise=None if scalar else as_noise(noise), forward=forward)
        self.num_classes = num_classes
        if isinstance(scheduler, StepScheduler):
            self.scheduler = scheduler
        if ensemble is not None:
            self.ensemble = ensemble

    @classmethod
    def from_config(cls, cfg, model: ModelSpec, device: torch.device, generator: torch.Generator,
                    method_cls: type | None = None, **method_kwargs: Any) -> "EnsembleKalmanProcess":
        """The process of a run config (``runs/loop.py``): ``cfg.noise`` as the noise covariance,
        ``method_cls`` (default: the registered class of ``optimizer.name``) built with ``method_kwargs``."""
        obj = cls.__new__(cls)
        obj._setup(cfg, model, device, generator, noise=as_noise(cfg.get("noise")), method_cls=method_cls,
                   **method_kwargs)
        obj.num_classes = None
        return obj

    def _setup(self, cfg, model: ModelSpec, device: torch.device, generator: torch.Generator, *,
               noise: Noise | None, forward: Callable | None = None, method_cls: type | None = None,
               **method_kwargs: Any) -> None:
        check_observation(cfg, noise is not None)
        self.config, self.model, self.device, self.generator = cfg, model, device, generator
        self.task = name_of(cfg.get("task", "classification"))
        self.noise = noise
        if forward is not None:
            self.network_forward: Callable | None = forward
        elif isinstance(model, PriorSpec):
            self.network_forward = None
        else:
            self.network_forward = EnsembleForward.from_config(model, cfg.ensemble, device)
        net = self.network_forward
        method_forward = net if noise is None or net is None else (lambda U, x: noise.whiten(net(U, x)))
        self.method = make_method(cfg, model, method_forward, generator, device, method_cls, **method_kwargs)
        self._pending: torch.Tensor | None = None
        self.steps = 0                       # step() / tell() calls so far

    # -- the ensemble -----------------------------------------------------------------------------
    @property
    def ensemble(self) -> torch.Tensor | None:
        """The members (J, P) (a single-network method: its network (1, P); backprop: None)."""
        full = getattr(self.method, "full_ensemble", None)
        return full() if full is not None else self.method.ensemble

    @ensemble.setter
    def ensemble(self, U: Any) -> None:
        self.method.set_ensemble(torch.as_tensor(U))
        if isinstance(self.method, EnsembleMethod):           # J follows the given members
            self.config.optimizer.ensemble_size = int(self.method.ensemble_size)
        self._pending = None

    @property
    def mean(self) -> torch.Tensor:
        """The evaluated network (P,): the ensemble mean (or the single network)."""
        U = self.method.ensemble
        if U is None or hasattr(self.method, "full_ensemble"):  # backprop; the mean over the ranks
            return self.method.eval_params()[""]
        return U.mean(0)

    @property
    def scheduler(self) -> StepScheduler | None:
        """The step scheduler (EKI, ETKI), else None."""
        return getattr(self.method, "scheduler", None)

    @scheduler.setter
    def scheduler(self, s: StepScheduler) -> None:
        now = self.scheduler
        if now is None or not isinstance(s, StepScheduler) or s.name != now.name:
            raise ConfigError("scheduler", getattr(s, "name", type(s).__name__),
                              f"a StepScheduler of the kind the method was built with ({getattr(now, 'name', None)})")
        self.method.scheduler = s

    @property
    def finished(self) -> bool:
        """True when the method takes no further step (the data-misfit controller at T)."""
        return self.method.finished

    # -- stepping ---------------------------------------------------------------------------------
    def _targets(self, y: Any, like: torch.Tensor | None = None, x: torch.Tensor | None = None) -> torch.Tensor:
        y = torch.as_tensor(y, device=self.device)
        if self.task == Task.regression.value and y.dim() == 1:
            y = y.unsqueeze(-1)                                   # (B,) values: one output per sample
        if self.task == Task.classification.value and not y.is_floating_point() and y.dim() == 1:
            C = self.num_classes
            if C is None:
                if like is not None:
                    C = like.shape[-1]
                else:
                    C = int(self.network_forward(self.mean.unsqueeze(0), x[:1]).shape[-1])
                    self.num_classes = C
            y = torch.nn.functional.one_hot(y.long(), C)
        U = self.method.ensemble if like is None else like
        y = y.to(torch.float64 if U is not None and U.dtype == torch.float64 else torch.float32)
        return y if self.noise is None else self.noise.whiten(y)

    def step(self, x: Any, y: Any) -> dict[str, Any]:
        """One iteration on the inputs x (B, ...) and the targets y: labels (B,) or one-hot (B, C)
        for classification, values (B, D) for regression. Returns the method's scalars."""
        if self.network_forward is None:
            raise ConfigError.line("step(x, y) needs a forward map: this process was built from a prior; "
                                   "evaluate the forward map on ask() yourself and hand its outputs to tell()")
        x = torch.as_tensor(x, device=self.device)
        out = self.method.step(x, self._targets(y, x=x))
        self._pending = None
        self.steps += 1
        return out

    def ask(self) -> torch.Tensor:
        """The parameter vectors (J', P) to evaluate the forward map on (the ensemble; EKI's momentum
        point; the perturbed networks of haber / ienk_simple). Asking again before :meth:`tell`
        returns the same rows."""
        if self._pending is None:
            self._pending = self.method.ask()
        return self._pending

    def tell(self, outputs: Any, y: Any) -> dict[str, Any]:
        """The update from the forward map's outputs on the rows of the last :meth:`ask`: (J', B, D)
        with targets y (B, D) (or labels (B,)), or (J', d) with data y (d,). Returns the method's
        scalars (``train_misfit`` or ``train_loss``, ...)."""
        if self._pending is None:
            raise ConfigError.line("tell() before ask(): evaluate the forward map on the rows of ask() first")
        rows = self._pending
        G = torch.as_tensor(outputs, device=self.device)
        if G.dim() == 2:
            G = G.unsqueeze(1)
            y = torch.as_tensor(y).reshape(1, -1)
        if G.dim() != 3 or G.shape[0] != rows.shape[0]:
            raise ConfigError("outputs", f"shape {tuple(G.shape)}", f"({rows.shape[0]}, d) or ({rows.shape[0]}, B, D):"
                              " one row per row of ask()")
        G = G.to(rows.dtype if rows.is_floating_point() else torch.float32)
        Y = self._targets(y, like=G)
        if Y.shape != G.shape[1:]:
            raise ConfigError("y", f"shape {tuple(torch.as_tensor(y).shape)}", f"targets of shape {tuple(G.shape[1:])}"
                              " matching the outputs")
        if self.noise is not None:
            G = self.noise.whiten(G)
        out = self.method.tell(G, Y)
        self._pending = None
        self.steps += 1
        return out

    # -- predictions ------------------------------------------------------------------------------
    def predict(self, x: Any, y: Any = None) -> Prediction:
        """The whole ensemble's predictions on the inputs x (N, ...): ``.mean`` and ``.std`` (the
        predictive mean and spread), ``.outputs`` (J, N, D); with targets y also ``.error``,
        ``.member_error`` (J,), ``.nll`` and (classification) ``.ece``."""
        if self.network_forward is None:
            raise ConfigError.line("predict needs a forward map: this process was built from a prior")
        U = self.ensemble
        x = torch.as_tensor(x, device=self.device)
        targets = None
        if y is not None:
            targets = torch.as_tensor(y, device=self.device)
            if self.task == Task.classification.value and targets.dim() == 2:
                targets = targets.argmax(1)
        var = None
        if self.noise is not None:
            var = self.noise.covariance if self.noise.kind == "diag" else self.noise.covariance.diagonal()
        return predict(self.network_forward, U, x, targets, self.task, var)

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything to continue from here: the method's state, the generator's, the step count."""
        return {"method": self.method.state_dict(), "generator": self.generator.get_state(), "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.method.load_state_dict(state["method"])
        self.generator.set_state(state["generator"])
        self.steps = int(state.get("steps", 0))
        self._pending = None

    def diagnostics(self) -> dict[str, float]:
        """The method's diagnostics (``ensemble_spread``, ``step_size``, ...)."""
        return self.method.diagnostics()

    def __repr__(self) -> str:
        U = self.method.ensemble
        shape = "x".join(str(s) for s in U.shape) if U is not None else "-"
        return (f"EnsembleKalmanProcess({self.method.config.name}, ensemble {shape}, task={self.task}, "
                f"steps={self.steps})")
