"""Any ``nn.Module`` as a model: ``model=custom`` (``model.target=pkg.module:Factory`` with
``model.kwargs``) on the command line, or a module handed to :func:`enkf_repro.train`.

The module's parameters (``named_parameters()`` order, shared parameters once) are the flat
vector theta that the methods train; its layout, the init prior over it (``init.scheme``,
``init.sigma``, ``init.bias_sigma``: :meth:`ModelSpec.init`) and the evaluation come from the
module. Its forward must be a function of its parameters and buffers:

* it is evaluated in ``eval()`` mode (BatchNorm uses its running statistics, dropout is off), and
  its buffers are constants, the values the given module holds, shared by every member (the
  backprop baselines train a copy in ``train()`` mode, as torch does, but are evaluated like the
  others, through theta and the given buffers);
* a chunk of members is evaluated in one batched call, ``torch.func.functional_call`` under
  ``torch.func.vmap``, chunked like the built-in models (``ensemble.chunk_size``); a forward that
  ``vmap`` cannot batch (data-dependent control flow, ``.item()``, in-place updates of buffers)
  falls back to a loop over the members with one warning;
* it takes a batch of images (B, ...) and returns logits (B, C), C the number of classes
  (checked on two images before training).

When the module IS one of the project's networks (an instance of exactly ``PaperCNN`` or
``DenseNet`` with their parameter layout), its fast path is used instead: ``paper_cnn``'s conv1
GEMM, grouped conv2 and fused kernels, the dense bmm chain.

Identity: a module from ``model.target`` is identified by the target and its kwargs (as a
built-in model by its name and settings: editing the class's code does not change it; use
``restart=true``); a module given to ``train`` by :func:`module_fingerprint` (its class, its
repr, its parameter names and shapes and its buffers' values) in ``model.fingerprint``.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import os
import sys
import warnings
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError
from .base import ACTIVATION_MODULES, ModelSpec
from .dense import DenseNet, DenseSpec
from .paper_cnn import PaperCNN, PaperCNNSpec

IMAGE_SHAPE = (1, 28, 28)   # the images of the built-in datasets (for the FLOP estimate)
TARGET_HELP = "an importable class or factory returning an nn.Module, e.g. model.target=mypkg.nets:SmallCNN"


# -- model.target ------------------------------------------------------------------------------
def _split_target(target: str) -> tuple[str, str]:
    target = str(target).strip()
    if ":" in target:
        module, _, attr = target.partition(":")
    else:
        module, _, attr = target.rpartition(".")
    if not module or not attr:
        raise ConfigError("model.target", target, f"{TARGET_HELP} (module:Name or module.Name)")
    return module, attr


def import_target(target: str) -> Callable[..., Any]:
    """The object ``target`` names: ``"pkg.module:Name"`` or ``"pkg.module.Name"`` (Hydra's
    ``_target_`` style; ``Name`` may be dotted, ``module:Outer.Inner``). The module is imported from
    ``sys.path`` or, failing that, from the current folder. One ConfigError line otherwise."""
    module_name, attr = _split_target(target)
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name.split(".")[0] or os.getcwd() in sys.path:
                raise
            sys.path.insert(0, os.getcwd())   # `enkf-repro run` from the folder holding the module
            module = importlib.import_module(module_name)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError("model.target", target, f"{TARGET_HELP} (cannot import {module_name!r}: "
                          f"{type(e).__name__}: {reason})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(obj) if not n.startswith("_"))
            close = difflib.get_close_matches(part, names, n=2, cutoff=0.6)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            raise ConfigError("model.target", target, f"{TARGET_HELP} ({module_name!r} has no {attr!r}; "
                              f"{hint}it defines: {', '.join(names[:20])})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError("model.target", target, f"{TARGET_HELP} ({attr!r} is a {type(obj).__name__}, not callable)")
    return obj


def build_module(target: str, kwargs: dict | None = None) -> nn.Module:
    """``target(**kwargs)``, checked to be an ``nn.Module`` with parameters (one ConfigError line)."""
    factory = import_target(target)
    kwargs = dict(kwargs or {})
    try:
        module = factory(**kwargs)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError("model.target", target, f"{TARGET_HELP}; calling it with model.kwargs={kwargs} failed: "
                          f"{type(e).__name__}: {reason}") from None
    if not isinstance(module, nn.Module):
        raise ConfigError("model.target", target, f"{TARGET_HELP} (it returned a {type(module).__name__})")
    return module


# -- identity ----------------------------------------------------------------------------------
def module_fingerprint(module: nn.Module) -> str:
    """``<Class>-<12 hex digits>``: a hash of the module's class (module and qualified name), its
    repr (the layers and their settings), its parameter names, shapes and dtypes, and its
    buffers' names and values; the parameter VALUES are left out (the methods draw theta from the
    init prior). The ``model.fingerprint`` of a module given to :func:`enkf_repro.train`."""
    cls = type(module)
    h = hashlib.sha1(f"{cls.__module__}.{cls.__qualname__}\n{module!r}\n".encode())
    for name, p in module.named_parameters():
        h.update(f"p {name} {tuple(p.shape)} {p.dtype}\n".encode())
    for name, b in module.named_buffers():
        h.update(f"b {name} {tuple(b.shape)} {b.dtype}\n".encode())
        t = b.detach().to("cpu").contiguous()
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return f"{cls.__name__}-{h.hexdigest()[:12]}"


# -- the generic path ----------------------------------------------------------------------------
class ModuleSpec(ModelSpec):
    """A given ``nn.Module`` as a function of its flat parameters (module docstring): members
    batched with ``functional_call`` + ``vmap``, eval mode, the module's buffers as constants."""

    name = "custom"

    def __init__(self, module: nn.Module, input_shape: Sequence[int] | None = None):
        if not isinstance(module, nn.Module):
            raise ConfigError("model", type(module).__name__, "an nn.Module")
        self.template = copy.deepcopy(module).to("cpu").float().eval()
        self.input_shape = tuple(int(s) for s in (input_shape or IMAGE_SHAPE))
        super().__init__()
        if self.num_params == 0:
            raise ConfigError("model", type(module).__name__, "an nn.Module with parameters to train (it has none)")
        self.reference.eval()
        self._buffers: dict[tuple, dict[str, torch.Tensor]] = {}
        self._batched = True
        self._flops: float | None = None

    def module(self) -> nn.Module:
        return copy.deepcopy(self.template)

    def buffers_on(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The module's buffers on ``device``, floating ones in ``dtype`` (cached)."""
        key = (str(device), dtype)
        if key not in self._buffers:
            self._buffers[key] = {n: (b.to(device=device, dtype=dtype) if b.is_floating_point() else b.to(device))
                                  for n, b in self.reference.named_buffers()}
        return self._buffers[key]

    def forward_chunk(self, W: torch.Tensor, ctx: Any) -> torch.Tensor:
        """Outputs (Jc, B, C) of the members W (Jc, P) on the batch ``ctx``."""
        from torch.func import functional_call, vmap

        x = ctx
        buffers = self.buffers_on(x.device, W.dtype)

        def one(theta: torch.Tensor) -> torch.Tensor:
            return functional_call(self.reference, {**self.unflatten(theta), **buffers}, (x,))

        if self._batched:
            try:
                return vmap(one)(W)
            except Exception as e:
                out = torch.stack([one(w) for w in W])   # the module's own error, if it has one
                self._batched = False
                reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
                warnings.warn(f"model {type(self.reference).__name__}: torch.func.vmap cannot batch its forward over "
                              f"the members ({type(e).__name__}: {reason}); evaluating them one at a time (slower)",
                              RuntimeWarning, stacklevel=2)
                return out
        return torch.stack([one(w) for w in W])

    def forward_flops(self) -> float:
        """FLOPs of one forward on one image of ``input_shape`` (torch's FLOP counter; at least
        2 P), for the cost estimates."""
        if self._flops is None:
            flops = 0.0
            try:
                from torch.utils.flop_counter import FlopCounterMode

                with torch.no_grad(), FlopCounterMode(display=False) as counter:
                    self.reference(torch.zeros((1, *self.input_shape)))
                flops = float(counter.get_total_flops())
            except Exception:   # a module the counter cannot run: the estimate below
                pass
            self._flops = max(flops, 2.0 * self.num_params)
        return self._flops


# -- picking the path ------------------------------------------------------------------------------
def _activation_of(mod: nn.Module) -> str | None:
    for name, cls in ACTIVATION_MODULES.items():
        if type(mod) is cls:
            return name
    return None


def _same_layout(module: nn.Module, spec: ModelSpec) -> bool:
    params = [(n, tuple(p.shape)) for n, p in module.named_parameters()]
    plain = not list(module.buffers()) and not any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())
    return plain and params == [(n, tuple(s)) for n, s in spec.shapes.items()]


def fast_spec(module: nn.Module) -> ModelSpec | None:
    """The project's own fast path when ``module`` is exactly one of its networks, else None."""
    if type(module) is PaperCNN:
        act = _activation_of(module.act1)
        if act is not None and _activation_of(module.act2) == act:
            spec: ModelSpec = PaperCNNSpec(act, module.pool_conv2)
            return spec if _same_layout(module, spec) else None
    if type(module) is DenseNet:
        layers = dict(module.net.named_children())
        fcs = [layers[k] for k in sorted((k for k in layers if k.startswith("fc")), key=lambda k: int(k[2:]))]
        acts = {_activation_of(m) for k, m in layers.items() if k.startswith("act")}
        if all(isinstance(f, nn.Linear) for f in fcs) and len(acts) <= 1 and None not in acts:
            act = acts.pop() if acts else "relu"
            spec = DenseSpec("custom", [f.out_features for f in fcs[:-1]], act)
            return spec if _same_layout(module, spec) else None
    return None


def spec_for_module(module: nn.Module, input_shape: Sequence[int] | None = None) -> ModelSpec:
    """The ModelSpec of any ``nn.Module``: the fast path of the project's own networks
    (:func:`fast_spec`), else :class:`ModuleSpec`."""
    if not isinstance(module, nn.Module):
        raise ConfigError("model", type(module).__name__, "an nn.Module")
    return fast_spec(module) or ModuleSpec(module, input_shape)


def build_custom(mcfg) -> ModelSpec:
    """``model=custom`` from the config: ``model.target(**model.kwargs)``."""
    if mcfg.get("target") in (None, ""):
        raise ConfigError("model.target", None, TARGET_HELP + " (model=custom needs one; from Python, "
                          "enkf_repro.train takes the nn.Module itself)")
    kwargs = mcfg.get("kwargs") or {}
    if hasattr(kwargs, "items") and not isinstance(kwargs, dict):
        from omegaconf import OmegaConf

        kwargs = OmegaConf.to_container(kwargs, resolve=True)
    return spec_for_module(build_module(str(mcfg.target), kwargs))
