"""The library's entry points for scripts and notebooks: :func:`compose` (a run or figure config)
and :func:`train` (any PyTorch classifier trained by any method of the package)."""

from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from . import experiments, optim  # noqa: F401  (every figure and method registers its config schema)
from .config.compose import compose as _compose
from .config.identity import changed_settings, short_name
from .config.options import flatten_options, leaf_keys, resolve_option
from .config.overrides import format_value, normalize_figure_args
from .config.schema import METHOD_SECTIONS, name_of, schema_of
from .config.validate import validate
from .errors import ConfigError, DataError, DivergenceError
from .runs.folder import ENSEMBLE


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config of ``enkf-repro run <overrides>``, e.g. ``compose(["figure=8", "scale=smoke"])``
    (``figure=8`` as on the command line); pass it to :func:`enkf_repro.run_figure`."""
    return _compose(normalize_figure_args(list(overrides)))


def load_dataset(name: str = "fashion_mnist", **options: Any):
    """A built-in dataset as tensors (a ``Data``: ``train_x``, ``train_y``, ``test_x``, ``test_y``,
    ``num_classes``), read as ``enkf-repro run dataset=<name>`` reads it: from ``dataset.root``
    (``$ENKF_REPRO_DATA``, else ``~/.cache/enkf-repro/data``), downloaded through torchvision when
    missing and allowed. ``options`` are ``dataset.*`` keys (``test_only=True``, ``root=...``,
    ``test_size=2000``)."""
    from .data.datasets import load_data

    cfg = compose([f"dataset={name}"] + [f"dataset.{k}={format_value(v)}" for k, v in options.items()])
    return load_data(cfg.dataset)


# -- train(...) ----------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``model``: a copy of the given module holding the trained weights (the ensemble-mean network
    for the ensemble methods, the trained network for sgd / adam and the single-network methods),
    in eval mode. ``history``: the run's rows in the tidy schema of every run of this package
    (``enkf_repro.runs.results.COLUMNS``: ``iteration, epoch, metric, value, ...``; metrics
    ``test_error`` (in %; the RMSE for ``task="regression"``), ``test_loss``, the method's
    diagnostics, and at the end ``ensemble_nll`` / ``ensemble_ece`` of a classifying ensemble).
    ``networks``: the flat parameter vectors of every network the method evaluates (``""`` the
    mean / trained one, ``"best"`` EKI's best member, ...). ``ensemble``: the final ensemble
    (J, P) of an ensemble method (None for the others, or when not kept: ``keep_ensemble``);
    :meth:`predict` gives its predictions. ``config``: the resolved run config. ``run_dir``: the
    run folder under ``out_dir`` (None without ``out_dir``: the run used a temporary folder).
    ``status``: ``finished`` (trained now, possibly resuming a checkpoint), ``skipped`` (found
    finished in ``out_dir``) or ``reused`` (the same run finished elsewhere under ``out_dir``;
    copied). ``summary``: the run's summary (iterations, ``stopped_early`` when the method ended it)."""

    model: torch.nn.Module | None = field(repr=False)
    history: Any = field(repr=False)
    networks: dict[str, torch.Tensor] = field(repr=False)
    config: DictConfig = field(repr=False)
    run_dir: Path | None
    status: str
    summary: dict = field(default_factory=dict, repr=False)
    ensemble: torch.Tensor | None = field(default=None, repr=False)
    spec: Any = field(default=None, repr=False)     # the forward map (models' ModelSpec) of predict

    def final(self, metric: str = "test_error") -> float | None:
        """The last logged value of ``metric`` (e.g. the final test error in %), or None."""
        rows = self.history[self.history["metric"] == metric]
        return None if rows.empty else float(rows.sort_values("iteration")["value"].iloc[-1])

    @property
    def test_error(self) -> float | None:
        """The final test error (%) of the evaluated (mean) network (the RMSE for regression)."""
        return self.final("test_error")

    def predict(self, x: Any, y: Any = None, chunk_size: int | None = None):
        """The whole final ensemble's predictions on the inputs x (N, ...), one call: a
        ``Prediction`` with ``.mean`` and ``.std`` (the predictive mean and spread: of the class
        probabilities for classification, of the outputs for regression) and ``.outputs`` (J, N, D);
        with targets y also ``.error`` (of the predictive mean), ``.member_error`` (J,), ``.nll``
        and, for classification, ``.ece`` (%). On the CPU, where the ensemble is held."""
        from .models.ensemble import EnsembleForward
        from .optim.predictive import predict

        if self.ensemble is None:
            raise ConfigError("keep_ensemble", self.config.get("keep_ensemble"), "true, with an ensemble method "
                              f"(optimizer={self.config.optimizer.name} kept no ensemble here)")
        task = name_of(self.config.get("task", "classification"))
        x = _inputs(torch.as_tensor(x), "x")
        targets = None if y is None else torch.as_tensor(y)
        if targets is not None and task == "regression" and targets.dim() == 1:
            targets = targets.unsqueeze(-1)
        noise = self.config.get("noise")
        var = None
        if noise is not None:
            n = torch.as_tensor(OmegaConf.to_container(noise) if not isinstance(noise, (list, float)) else noise,
                                dtype=torch.float64)
            var = n if n.dim() == 1 else n.diagonal()
        return predict(EnsembleForward(self.spec, chunk_size), self.ensemble, x, targets, task, var)


# Config keys that train() sets itself or that do not apply to a run of it.
_NOT_OPTIONS = ("figure.", "scale.", "model.", "overrides", "optimizer.name", "only", "distributed", "time_budget",
                "out_dir", "dataset.name", "dataset.root", "dataset.download", "dataset.format", "dataset.test_only",
                "dataset.test_only_train_size", "dataset.fingerprint", "task", "noise", "ensemble_from")


def _labels(y: torch.Tensor, what: str) -> torch.Tensor:
    if y.dim() != 1:
        raise DataError(f"{what}: labels of shape {tuple(y.shape)}; expected integer class labels of shape (N,) "
                        "(real-valued targets: task='regression')")
    if y.is_floating_point():
        if not bool((y == y.round()).all()):
            raise DataError(f"{what}: labels must be integer class indices (got non-integral values; real-valued "
                            "targets: task='regression')")
    elif y.dtype == torch.bool:
        raise DataError(f"{what}: labels must be integer class indices, not booleans")
    y = y.long()
    if y.numel() and int(y.min()) < 0:
        raise DataError(f"{what}: labels must be class indices >= 0 (got {int(y.min())})")
    return y


def _values(y: torch.Tensor, what: str) -> torch.Tensor:
    """Real-valued targets (N, D) in float32 ((N,) becomes (N, 1))."""
    if y.dim() == 1:
        y = y.unsqueeze(1)
    if y.dim() != 2:
        raise DataError(f"{what}: targets of shape {tuple(y.shape)}; expected real values of shape (N, D) or (N,)")
    if y.dtype == torch.bool or y.is_complex():
        raise DataError(f"{what}: targets must be real numbers (got {y.dtype})")
    y = y.float()
    if not bool(torch.isfinite(y).all()):
        raise DataError(f"{what}: targets must be finite")
    return y


def _inputs(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dim() < 2:
        raise DataError(f"{what}: inputs of shape {tuple(x.shape)}; expected (N, ...), one row per sample")
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)     # 8-bit images to [0, 1], as the built-in datasets
    return x.float()


def as_tensors(data: Any, what: str = "train_data", task: str = "classification") -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs float32 (N, ...), targets) from a pair (inputs, targets) of tensors or arrays, or from
    a ``torch.utils.data.Dataset`` of (input, target) items (read in order into memory): integer
    labels int64 (N,) for classification, real values float32 (N, D) for regression. uint8 inputs
    are scaled to [0, 1]; other inputs are taken as they are."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for v in data)
    elif isinstance(data, torch.utils.data.Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        loader = torch.utils.data.DataLoader(data, batch_size=1024, shuffle=False, num_workers=0)
        xs, ys = [], []
        try:
            for xb, yb in loader:
                xs.append(torch.as_tensor(xb))
                ys.append(torch.as_tensor(yb))
        except (TypeError, ValueError) as e:
            raise DataError(f"{what}: a Dataset whose items are not (tensor, label) pairs ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120]}); give images as tensors, e.g. "
                            "transform=torchvision.transforms.ToTensor()") from None
        if not xs:
            raise DataError(f"{what}: the Dataset is empty")
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise DataError(f"{what}: expected (inputs, targets) tensors or a torch.utils.data.Dataset, "
                        f"got {type(data).__name__}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{what}: {x.shape[0]} inputs but {y.shape[0]} targets")
    if x.shape[0] == 0:
        raise DataError(f"{what}: no samples")
    return _inputs(x, what), (_values(y, what) if task == "regression" else _labels(y, what))


def tensor_data(train_data: Any, test_data: Any = None, num_classes: int | None = None,
                task: str = "classification"):
    """The in-memory ``Data`` (dataset ``tensors``) of :func:`train` and its fingerprint; for
    regression ``num_classes`` is the number of target columns D."""
    from .data.datasets import Data, fingerprint_tensors

    tx, ty = as_tensors(train_data, "train_data", task)
    vx, vy = as_tensors(test_data, "test_data", task) if test_data is not None else (tx, ty)
    if tuple(vx.shape[1:]) != tuple(tx.shape[1:]):
        raise DataError(f"test_data: inputs of shape {tuple(vx.shape[1:])}, train_data {tuple(tx.shape[1:])}")
    if task == "regression":
        if vy.shape[1] != ty.shape[1]:
            raise DataError(f"test_data: targets with {vy.shape[1]} columns, train_data {ty.shape[1]}")
        data = Data("tensors", tx, ty, vx, vy, int(ty.shape[1]))
        return data, fingerprint_tensors(tx, ty, vx, vy)
    top = int(max(ty.max(), vy.max())) + 1
    C = top if num_classes is None else int(num_classes)
    if C < top:
        raise DataError(f"num_classes={C}, but the labels go up to {top - 1}")
    if C < 2:
        raise DataError(f"{C} class(es): a classifier needs at least 2 (set num_classes=)")
    data = Data("tensors", tx, ty, vx, vy, C)
    return data, fingerprint_tensors(tx, ty, vx, vy, torch.tensor([C]))


def _load_into(module: torch.nn.Module, theta: torch.Tensor) -> torch.nn.Module:
    """A copy of ``module`` with the flat parameters ``theta`` (in ``parameters()`` order), in
    eval mode, on the module's own devices and dtypes."""
    out = copy.deepcopy(module)
    offset = 0
    with torch.no_grad():
        for p in out.parameters():
            n = p.numel()
            p.copy_(theta[offset: offset + n].view_as(p))
            offset += n
    return out.eval()


def _noise_option(noise: Any, method: str):
    """``noise=`` of :func:`train`: (the method's gamma key and value) for a number, or the D
    variances / D x D matrix as plain lists (``cfg.noise``)."""
    if noise is None:
        return None, None
    t = torch.as_tensor(noise, dtype=torch.float64)
    if t.dim() == 0:
        key = getattr(schema_of(method), "noise_key", None)
        if key is None:
            raise ConfigError("noise", float(t), f"D variances or a D x D matrix: method={method!r} has no gamma * I")
        return (f"optimizer.{key}", float(t)), None
    if t.dim() > 2:
        raise ConfigError("noise", f"a tensor of shape {tuple(t.shape)}", "a number, D variances or a D x D matrix")
    return None, t.tolist()


def _ensemble_source(source: Any) -> str:
    """``ensemble_from=`` of :func:`train` as the config's string: a run id, or an absolute path."""
    if isinstance(source, TrainResult):
        if source.run_dir is None:
            raise ConfigError("ensemble_from", "a TrainResult", "the result of a train() call with out_dir= (its "
                              "run folder holds the ensemble), a run folder, an ensemble.pt or a run id")
        return str(Path(source.run_dir).resolve())
    text = str(source)
    p = Path(text).expanduser()
    return str(p.resolve()) if p.exists() else text


def train(model: torch.nn.Module, train_data: Any, test_data: Any = None, method: str = "enkf", *,
          task: str = "classification", observe: Callable | None = None, noise: Any = None,
          ensemble_from: Any = None, out_dir: str | Path | None = None, num_classes: int | None = None,
          callbacks: Sequence[Callable] = (), overrides: Sequence[str] = (), **options: Any) -> TrainResult:
    """Train any PyTorch network with any method of this package, through the same loop, run
    folder and checkpoints as ``enkf-repro run``; returns when the run is done.

    Args:
        model: an ``nn.Module`` mapping inputs (B, ...) to outputs (B, C) (a classifier's logits)
            whose forward is a function of its parameters and buffers (evaluated in eval mode;
            buffers are constants). Its parameters are what is trained: their layout, the init
            prior over them (``init.scheme``, ``sigma``, ``init.bias_sigma``) and the evaluation
            come from it; its current weights are not used. Instances of the project's
            ``PaperCNN`` / ``DenseNet`` get their fast paths; any other module the batched generic
            one (models/custom.py).
        train_data, test_data: ``(inputs, targets)`` tensors or arrays (inputs (N, ...), uint8
            scaled to [0, 1]; integer labels (N,), or real values (N, D) for ``task="regression"``)
            or ``torch.utils.data.Dataset`` s of ``(tensor, target)`` items, read into memory and
            moved to the device. Without ``test_data`` the evaluation uses the training data
            (``test_error`` is then the training error).
        method: any of :func:`method_names` (``optimizer=<name>``: ``enkf``, ``eki``, ``sgd``, ...),
            with its variants by options (``randomize=True``, ``scheduler="data_misfit"``, ...).
        task: ``"classification"`` (labels; ``test_error`` in %) or ``"regression"`` (real-valued
            targets; the methods' raw outputs and Gaussian misfits: EKI's ``loss="mse"``, haber's
            and ienk_simple's ``output="logits"``, sgd / adam ``loss="mse"``; ``test_error`` is the
            RMSE and ``test_loss`` the mean squared error).
        observe: the observation operator, observables = observe(outputs): called on the outputs
            (J, B, C) of a chunk of members, returns (J, B, D) compared with the targets.
        noise: the observation noise Gamma of one sample's D outputs: a number (gamma * I, the
            method's ``gamma``), D variances or a D x D matrix (whitened once by its Cholesky
            factor; the method's gamma is then 1 and ``train_misfit`` the Gamma-weighted misfit).
        ensemble_from: start the ensemble from a saved one: a ``TrainResult`` of a run with
            ``out_dir``, a run folder, its ``ensemble.pt``, or a run id under ``out_dir``
            (``ensemble_size`` follows it unless given).
        out_dir: write the run folder ``<out_dir>/<scale>/runs/<label>-s<seed>-<hash>/``
            (its config, metric rows, a checkpoint while running, the trained networks, the final
            ensemble, a summary), so a rerun resumes an interrupted run or returns the finished
            one; None: a temporary folder, deleted afterwards.
        num_classes: the number of classes (default: the largest label + 1).
        callbacks: functions ``fn(iteration, metrics)`` called with every step's scalars and every
            evaluation's metrics (as the ``logger=`` plug-ins, runs/loggers.py).
        overrides: extra config overrides in the command line's grammar (``["train.shuffle=true"]``).
        **options: config keys by name: flat where one key alone ends so (``ensemble_size``,
            ``gamma``, ``lr``, ``epochs``, ``batch_size``, ``max_batches``, ``eval_every``,
            ``seed``, ``sigma`` / ``init_sigma``, ``chunk_size``, ``device``, ``scheduler``,
            ``threads``, ``logger="tensorboard"``, ``keep_ensemble``,
            ``inflation={"multiplicative": 1.01}``, ...), or dotted (``**{"optimizer.h0": 1.0}``);
            an unknown or ambiguous one is a ConfigError naming the valid ones.

    Raises:
        ConfigError / DataError: a bad option, value, model or data (before any training).
        DivergenceError: the run diverged (with ``out_dir``, its rows are kept in the run folder).
        Interrupted: SIGINT / SIGTERM; with ``out_dir`` a checkpoint was written and the same
            call resumes.
    """
    from .data.datasets import subset_test
    from .models.custom import module_fingerprint, spec_for_module
    from .models.forward_map import ObservedSpec, function_fingerprint
    from .optim.process import check_observation
    from .runs import loggers
    from .runs.loop import check_outputs, load_ensemble
    from .runs.results import COLUMNS
    from .runs.runner import RunSpec, run_one, settings_text

    if not isinstance(model, torch.nn.Module):
        raise ConfigError("model", type(model).__name__, "an nn.Module (a PyTorch network)")
    if task not in ("classification", "regression"):
        raise ConfigError("task", task, "'classification' (integer labels) or 'regression' (real-valued targets)")
    method = str(method)
    data, data_fp = tensor_data(train_data, test_data, num_classes, task)
    fingerprint = module_fingerprint(model) + (f"+{function_fingerprint(observe)}" if observe is not None else "")
    fixed = [f"optimizer={method}", "model=custom", "dataset=tensors", f"model.fingerprint={fingerprint}",
             f"dataset.fingerprint={data_fp}"]
    base = compose(fixed)
    reads = schema_of(method).reads     # a section only some methods read is an option of those alone
    keys = [k for k in leaf_keys(base, _NOT_OPTIONS) if k.split(".", 1)[0] not in set(METHOD_SECTIONS) - set(reads)]
    flat = flatten_options(options)
    chosen = [(resolve_option(k, keys, method, v), v) for k, v in flat]
    seen: dict[str, str] = {}
    for (key, _), (name, value) in zip(chosen, flat):
        if key in seen:
            raise ConfigError(name, value, f"one name per setting: {seen[key]!r} already sets {key}")
        seen[key] = name
    gamma, noise_list = _noise_option(noise, method)
    if gamma is not None:
        if gamma[0] in seen:
            raise ConfigError("noise", gamma[1], f"one name per setting: {seen[gamma[0]]!r} already sets {gamma[0]}")
        chosen.append(gamma)
    # implied by the task and the noise (so not in the run's name): raw outputs, gamma = 1
    implied = dict(getattr(schema_of(method), "regression", {})) if task == "regression" else {}
    if noise_list is not None and getattr(schema_of(method), "noise_key", None):
        implied[schema_of(method).noise_key] = 1.0
    if ensemble_from is not None:
        source = _ensemble_source(ensemble_from)
        if "optimizer.ensemble_size" in keys and "optimizer.ensemble_size" not in seen:
            implied["ensemble_size"] = int(load_ensemble(out_dir or ".", source).shape[0])
    fixed += [f"task={task}"] if task != "classification" else []
    fixed += [f"optimizer.{k}={format_value(getattr(v, 'value', v))}" for k, v in implied.items()
              if f"optimizer.{k}" not in seen]
    base = compose(fixed)
    user = [f"{k}={format_value(v)}" for k, v in chosen] + list(overrides)
    cfg = compose(fixed + user)
    for c in (cfg, base):
        c.noise = noise_list
        c.ensemble_from = source if ensemble_from is not None else None
    if out_dir is not None:
        cfg.out_dir = str(out_dir)
    validate(cfg)
    check_observation(cfg)
    loggers.logger_names(cfg.logger)
    if cfg.train.batch_size > data.train_x.shape[0]:
        raise ConfigError("batch_size", int(cfg.train.batch_size),
                          f"at most the number of training samples, {data.train_x.shape[0]}")
    spec_model = spec_for_module(model, tuple(data.train_x.shape[1:]))
    if observe is not None:
        spec_model = ObservedSpec(spec_model, observe)
    check_outputs(spec_model, subset_test(data, cfg.dataset), task == "regression")
    if noise_list is not None:
        from .optim.observation import Noise

        try:
            Noise(noise_list, int(data.train_y.shape[1]) if task == "regression" else data.num_classes)
        except ValueError as e:
            raise ConfigError("noise", "given", str(e)) from None
    changed = {k: v for k, v in changed_settings(cfg, base).items() if not k.endswith("fingerprint")}
    label = "-".join(p for p in (method, type(model).__name__, short_name(changed)) if p)[:120]

    tmp = None
    if out_dir is None:
        tmp = tempfile.mkdtemp(prefix="enkf-repro-train-")
        cfg.out_dir = tmp
    try:
        spec = RunSpec("none", None, label, int(cfg.seed), cfg, tuple(fixed + user), settings_text(changed))
        with loggers.callbacks(callbacks):
            status = run_one(spec, bool(cfg.restart), data=data, model=spec_model)
        if status["status"] == "diverged":
            where = f"; its rows are kept in {spec.dir}" if tmp is None else ""
            raise DivergenceError(f"the run diverged: {status['message']}{where}")
        folder = spec.folder
        history = folder.rows().reindex(columns=COLUMNS)
        networks = dict(folder.params()["params"]) if folder.has_params() else {}
        ensemble = None
        if (folder.path / ENSEMBLE).is_file():
            ensemble = torch.load(folder.path / ENSEMBLE, map_location="cpu", weights_only=True)["ensemble"]
        summary = folder.summary()
        trained = _load_into(model, networks[""]) if "" in networks else None
        return TrainResult(trained, history, networks, cfg, None if tmp else spec.dir, status["status"], summary,
                           ensemble, spec_model)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def method_names() -> list[str]:
    """The methods :func:`train` (and ``optimizer=``) accepts."""
    from .optim.base import METHODS

    return sorted(METHODS)
