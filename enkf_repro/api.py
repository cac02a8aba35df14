"""The library's entry points for scripts and notebooks: :func:`compose` (a run or figure config)
and :func:`train` (any PyTorch classifier trained by any method of the package)."""

from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from . import experiments, optim  # noqa: F401  (every figure and method registers its config schema)
from .config.compose import compose as _compose
from .config.identity import changed_settings, short_name
from .config.overrides import did_you_mean, format_value, normalize_figure_args
from .config.schema import METHOD_SECTIONS, schema_of
from .config.validate import validate
from .errors import ConfigError, DataError, DivergenceError


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
    ``test_error`` in %, ``test_loss``, the method's diagnostics). ``networks``: the flat parameter
    vectors of every network the method evaluates (``""`` the mean / trained one, ``"best"`` EKI's
    best member, ...). ``config``: the resolved run config. ``run_dir``: the run folder under
    ``out_dir`` (None without ``out_dir``: the run used a temporary folder). ``status``:
    ``finished`` (trained now, possibly resuming a checkpoint), ``skipped`` (found finished in
    ``out_dir``) or ``reused`` (the same run finished elsewhere under ``out_dir``; copied).
    ``summary``: the run's summary (iterations, ``stopped_early`` when the method ended it)."""

    model: torch.nn.Module | None = field(repr=False)
    history: Any = field(repr=False)
    networks: dict[str, torch.Tensor] = field(repr=False)
    config: DictConfig = field(repr=False)
    run_dir: Path | None
    status: str
    summary: dict = field(default_factory=dict, repr=False)

    def final(self, metric: str = "test_error") -> float | None:
        """The last logged value of ``metric`` (e.g. the final test error in %), or None."""
        rows = self.history[self.history["metric"] == metric]
        return None if rows.empty else float(rows.sort_values("iteration")["value"].iloc[-1])

    @property
    def test_error(self) -> float | None:
        """The final test error (%) of the evaluated (mean) network."""
        return self.final("test_error")


# Config keys that train() sets itself or that do not apply to a run of it.
_NOT_OPTIONS = ("figure.", "scale.", "model.", "overrides", "optimizer.name", "only", "distributed", "time_budget",
                "out_dir", "dataset.name", "dataset.root", "dataset.download", "dataset.format", "dataset.test_only",
                "dataset.test_only_train_size", "dataset.fingerprint")


def _leaf_keys(cfg: DictConfig) -> list[str]:
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, Mapping) and v:
                walk(v, key)
            else:
                out.append(key)

    walk(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True), "")
    return [k for k in out if not any(k == n.rstrip(".") or k.startswith(n) for n in _NOT_OPTIONS if n.endswith("."))
            and k not in _NOT_OPTIONS]


def _short_names(keys: list[str]) -> list[str]:
    """The shortest unambiguous name of each key (its last part where no other key ends so)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return sorted(n if last.count(n) == 1 else k for k, n in zip(keys, last))


def resolve_option(name: str, keys: list[str], method: str, value: Any = None) -> str:
    """The dotted config key an option of :func:`train` names: the key itself
    (``"optimizer.h0"``), a key's tail after a dot (``ensemble_size``, ``max_batches``,
    ``inflation.multiplicative``) when one key alone ends so, or the key with dots written as
    underscores (``init_sigma``). One ConfigError line otherwise, with the close valid names."""
    if name in keys:
        return name
    joined = [k for k in keys if k.replace(".", "_") == name]
    if len(joined) == 1:
        return joined[0]
    tail = [k for k in keys if k.endswith("." + name)]
    if len(tail) == 1:
        return tail[0]
    if len(tail) > 1:
        extra = " (init_sigma for init.sigma)" if name == "sigma" else ""
        raise ConfigError(name, value, f"ambiguous for method={method!r}: name one of "
                          + ", ".join(repr(t) for t in tail) + extra)
    names = _short_names(keys)
    hint = did_you_mean(name, keys if "." in name else names)
    raise ConfigError(name, value, f"{hint}not an option of train(method={method!r}); options: {', '.join(names)} "
                      "(or any dotted key, e.g. 'optimizer.h0')")


def _flatten_options(options: Mapping[str, Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in options.items():
        if isinstance(v, Mapping):
            out += [(f"{k}.{kk}", vv) for kk, vv in _flatten_options(v)]
        else:
            out.append((k, v))
    return out


def _labels(y: torch.Tensor, what: str) -> torch.Tensor:
    if y.dim() != 1:
        raise DataError(f"{what}: labels of shape {tuple(y.shape)}; expected integer class labels of shape (N,)")
    if y.is_floating_point():
        if not bool((y == y.round()).all()):
            raise DataError(f"{what}: labels must be integer class indices (got non-integral values)")
    elif y.dtype == torch.bool:
        raise DataError(f"{what}: labels must be integer class indices, not booleans")
    y = y.long()
    if y.numel() and int(y.min()) < 0:
        raise DataError(f"{what}: labels must be class indices >= 0 (got {int(y.min())})")
    return y


def _images(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dim() < 2:
        raise DataError(f"{what}: inputs of shape {tuple(x.shape)}; expected (N, ...), one row per sample")
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)     # 8-bit images to [0, 1], as the built-in datasets
    return x.float()


def as_tensors(data: Any, what: str = "train_data") -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs float32 (N, ...), labels int64 (N,)) from a pair (inputs, labels) of tensors or
    arrays, or from a ``torch.utils.data.Dataset`` of (input, label) items (read in order into
    memory). uint8 inputs are scaled to [0, 1]; other inputs are taken as they are."""
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
        raise DataError(f"{what}: expected (inputs, labels) tensors or a torch.utils.data.Dataset, "
                        f"got {type(data).__name__}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{what}: {x.shape[0]} inputs but {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise DataError(f"{what}: no samples")
    return _images(x, what), _labels(y, what)


def tensor_data(train_data: Any, test_data: Any = None, num_classes: int | None = None):
    """The in-memory ``Data`` (dataset ``tensors``) of :func:`train` and its fingerprint."""
    from .data.datasets import Data, fingerprint_tensors

    tx, ty = as_tensors(train_data, "train_data")
    vx, vy = as_tensors(test_data, "test_data") if test_data is not None else (tx, ty)
    if tuple(vx.shape[1:]) != tuple(tx.shape[1:]):
        raise DataError(f"test_data: inputs of shape {tuple(vx.shape[1:])}, train_data {tuple(tx.shape[1:])}")
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


def train(model: torch.nn.Module, train_data: Any, test_data: Any = None, method: str = "enkf", *,
          out_dir: str | Path | None = None, num_classes: int | None = None, overrides: Sequence[str] = (),
          **options: Any) -> TrainResult:
    """Train any PyTorch classifier with any method of this package, through the same loop,
    run folder and checkpoints as ``enkf-repro run``; returns when the run is done.

    Args:
        model: an ``nn.Module`` mapping inputs (B, ...) to logits (B, C) whose forward is a
            function of its parameters and buffers (evaluated in eval mode; buffers are constants).
            Its parameters are what is trained: their layout, the init prior over them
            (``init.scheme``, ``sigma``, ``init.bias_sigma``) and the evaluation come from it; its
            current weights are not used. Instances of the project's ``PaperCNN`` / ``DenseNet``
            get their fast paths; any other module the batched generic one (models/custom.py).
        train_data, test_data: ``(inputs, labels)`` tensors or arrays (inputs (N, ...), uint8
            scaled to [0, 1]; integer labels (N,)) or ``torch.utils.data.Dataset`` s of
            ``(tensor, label)`` items, read into memory and moved to the device. Without
            ``test_data`` the evaluation uses the training data (``test_error`` is then the
            training error).
        method: any of :func:`method_names` (``optimizer=<name>``: ``enkf``, ``eki``, ``sgd``, ...),
            with its variants by options (``randomize=True``, ``scheduler="data_misfit"``, ...).
        out_dir: write the run folder ``<out_dir>/<scale>/runs/<label>-s<seed>-<hash>/``
            (its config, metric rows, a checkpoint while running, the trained networks, a summary), so a
            rerun resumes an interrupted run or returns the finished one; None: a temporary folder,
            deleted afterwards.
        num_classes: the number of classes (default: the largest label + 1).
        overrides: extra config overrides in the command line's grammar (``["train.shuffle=true"]``).
        **options: config keys by name: flat where one key alone ends so (``ensemble_size``,
            ``gamma``, ``lr``, ``epochs``, ``batch_size``, ``max_batches``, ``eval_every``,
            ``seed``, ``sigma`` / ``init_sigma``, ``chunk_size``, ``device``, ``scheduler``,
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
    from .runs.results import COLUMNS
    from .runs.runner import RunSpec, run_one, settings_text

    if not isinstance(model, torch.nn.Module):
        raise ConfigError("model", type(model).__name__, "an nn.Module (a PyTorch network)")
    method = str(method)
    data, data_fp = tensor_data(train_data, test_data, num_classes)
    fixed = [f"optimizer={method}", "model=custom", "dataset=tensors", f"model.fingerprint={module_fingerprint(model)}",
             f"dataset.fingerprint={data_fp}"]
    base = compose(fixed)
    reads = schema_of(method).reads     # a section only some methods read is an option of those alone
    keys = [k for k in _leaf_keys(base) if k.split(".", 1)[0] not in set(METHOD_SECTIONS) - set(reads)]
    chosen = [(resolve_option(k, keys, method, v), v) for k, v in _flatten_options(options)]
    seen: dict[str, str] = {}
    for (key, _), (name, value) in zip(chosen, _flatten_options(options)):
        if key in seen:
            raise ConfigError(name, value, f"one name per setting: {seen[key]!r} already sets {key}")
        seen[key] = name
    user = [f"{k}={format_value(v)}" for k, v in chosen] + list(overrides)
    cfg = compose(fixed + user)
    if out_dir is not None:
        cfg.out_dir = str(out_dir)
    validate(cfg)
    if cfg.train.batch_size > data.train_x.shape[0]:
        raise ConfigError("batch_size", int(cfg.train.batch_size),
                          f"at most the number of training samples, {data.train_x.shape[0]}")
    spec_model = spec_for_module(model, tuple(data.train_x.shape[1:]))
    from .runs.loop import check_outputs

    check_outputs(spec_model, subset_test(data, cfg.dataset))
    changed = {k: v for k, v in changed_settings(cfg, base).items() if not k.endswith("fingerprint")}
    label = "-".join(p for p in (method, type(model).__name__, short_name(changed)) if p)[:120]

    tmp = None
    if out_dir is None:
        tmp = tempfile.mkdtemp(prefix="enkf-repro-train-")
        cfg.out_dir = tmp
    try:
        spec = RunSpec("none", None, label, int(cfg.seed), cfg, tuple(fixed + user), settings_text(changed))
        status = run_one(spec, bool(cfg.restart), data=data, model=spec_model)
        if status["status"] == "diverged":
            where = f"; its rows are kept in {spec.dir}" if tmp is None else ""
            raise DivergenceError(f"the run diverged: {status['message']}{where}")
        folder = spec.folder
        history = folder.rows().reindex(columns=COLUMNS)
        networks = dict(folder.params()["params"]) if folder.has_params() else {}
        summary = folder.summary()
        trained = _load_into(model, networks[""]) if "" in networks else None
        return TrainResult(trained, history, networks, cfg, None if tmp else spec.dir, status["status"], summary)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def method_names() -> list[str]:
    """The methods :func:`train` (and ``optimizer=``) accepts."""
    from .optim.base import METHODS

    return sorted(METHODS)
