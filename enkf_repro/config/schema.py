"""Structured configs: the schema that every YAML file under ``configs/`` is checked against,
and the single source of every default value.

Hydra composes ``configs/config.yaml`` with the groups ``dataset``, ``model``, ``optimizer``,
``scale`` and ``figure``; the dataclasses below make a misspelt key, a wrong type or an unknown
enum value fail at start-up. The optimizer group's schemas live beside their methods
(``enkf_repro/optim/*.py``) and register themselves in :data:`OPTIMIZER_SCHEMAS`. Value ranges
(``J >= 2``, ``sigma > 0`` ...) are checked by :mod:`.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


class Activation(str, Enum):
    logistic = "logistic"
    relu = "relu"
    tanh = "tanh"


class DatasetName(str, Enum):
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"
    notmnist = "notmnist"
    tensors = "tensors"  # tensors given to enkf_repro.train(...) in the same call (not from files)


class DataFormat(str, Enum):
    auto = "auto"      # IDX files if present, else one folder of PNGs per class
    idx = "idx"
    folder = "folder"


class ModelName(str, Enum):
    paper_cnn = "paper_cnn"
    mlp = "mlp"
    dnn1 = "dnn1"
    dnn2 = "dnn2"
    dnn3 = "dnn3"
    dnn4 = "dnn4"
    custom = "custom"  # any nn.Module: model.target=pkg.module:Factory, or a module given to enkf_repro.train


class InitScheme(str, Enum):
    normal = "normal"  # every weight ~ N(0, sigma^2) (the paper)
    glorot = "glorot"  # Glorot-normal weights (the 2019 thesis MLP, Kovachki & Stuart's DNNs)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    fp32 = "fp32"
    tf32 = "tf32"
    bf16 = "bf16"


class Kernel(str, Enum):
    auto = "auto"      # the fused Triton kernels where they exist and can run (CUDA), else torch
    triton = "triton"  # fused Triton kernels (paper_cnn; CUDA, or the CPU interpreter in tests)
    torch = "torch"    # PyTorch operations: the reference and the CPU path


class StatsPer(str, Enum):
    auto = "auto"            # per iteration for runs of at most one epoch, per epoch for longer runs
    iteration = "iteration"
    epoch = "epoch"


class GradientView(str, Enum):
    iteration = "iteration"  # per-iteration curves of the iteration epochs, per-unit mean histograms
    epoch = "epoch"          # pooled per epoch, histograms of all weight-gradient entries


class ScaleName(str, Enum):
    paper = "paper"
    smoke = "smoke"


@dataclass
class DatasetConfig:
    name: DatasetName = DatasetName.mnist
    # One sub-folder per dataset (mnist/, fashion-mnist/, notmnist/) holding the IDX .gz files.
    root: str = "${oc.env:ENKF_REPRO_DATA,'~/.cache/enkf-repro/data'}"
    # Build train/test from the t10k files alone: a fixed, seeded split of the 10,000 images.
    test_only: bool = False
    test_only_train_size: int = 8000
    split_seed: int = 0
    # Evaluate on a fixed, seeded subset of the test set (null: the whole test set).
    test_size: Optional[int] = None
    download: bool = True  # mnist / fashion_mnist through torchvision when files are missing
    format: DataFormat = DataFormat.auto
    # dataset=tensors: the identity of the tensors given to enkf_repro.train (a hash of their
    # shapes, dtypes and values, set by train), so other data make another run
    fingerprint: Optional[str] = None


@dataclass
class ModelConfig:
    name: ModelName = ModelName.paper_cnn
    activation: Activation = Activation.logistic
    # paper_cnn: the published code has no pool after conv2 (flatten 20*8*8 = 1280, 18,050
    # parameters); the paper's text pools both conv layers (flatten 20*4*4 = 320).
    pool_conv2: bool = False
    hidden: List[int] = field(default_factory=list)  # dense models: hidden layer widths
    # model=custom: an importable class or factory returning the nn.Module, "pkg.module:Name" (or
    # "pkg.module.Name", Hydra's _target_ style), called with ``kwargs``; its parameters are the
    # trained ones (the layout, the init prior over them and the evaluation come from the module)
    target: Optional[str] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)
    # model=custom given as an nn.Module to enkf_repro.train: its class and a hash of its
    # structure (repr, parameter names and shapes, buffers), set by train, so another network
    # makes another run
    fingerprint: Optional[str] = None


@dataclass
class InitConfig:
    scheme: InitScheme = InitScheme.normal
    sigma: float = 0.1
    # Biases of the ensemble methods' prior (every EnsembleMethod: enkf, eki, ...; the initial
    # ensemble and the (R) redraws): N(0, bias_sigma^2); null: the std of the same layer's weights
    # (sigma under scheme=normal, the Glorot std under glorot); 0: biases start at 0 in every member
    # and then stay 0, since every ensemble update is a combination of member differences. The
    # backprop baselines and the single-network methods (haber, ienk_simple) always start from
    # zero biases. The paper CNN has no biases.
    bias_sigma: Optional[float] = None


@dataclass
class EnsembleConfig:
    # Members per batched forward call; null: 16 on CPU (intermediates stay in cache); on CUDA the
    # fastest of a few sizes within a memory budget, timed once per device, model and batch size.
    chunk_size: Optional[int] = None
    # fp32: fp32 accuracy (IEEE, or 3xTF32 tensor cores in the fused kernels); tf32 / bf16: tensor
    # cores (accumulation in fp32); outputs always fp32. docs/gpu.md.
    precision: Precision = Precision.fp32
    # The update's large GEMMs: fp32 (IEEE) or tf32 (tensor cores); the small factors are fp64.
    update_precision: Precision = Precision.fp32
    compile: bool = False                  # torch.compile the per-chunk forward (torch kernel)
    kernel: Kernel = Kernel.auto


@dataclass
class TrainConfig:
    batch_size: int = 64
    epochs: float = 1.0
    max_batches: Optional[int] = None  # distinct training batches per epoch (null: all)
    # null: the method's default, a fixed order for ensemble methods (the paper's EnKF) and a
    # per-epoch reshuffle for backprop (SGD / Adam)
    shuffle: Optional[bool] = None
    # iterations between test-error evaluations; null: once per pass over the run's batches (an
    # epoch), whatever the dataset's size (938 steps of 64 on MNIST, 125 on its 8,000-image proxy)
    eval_every: Optional[int] = 500
    eval_batch_size: int = 2000


@dataclass
class InstrumentConfig:
    """Backprop runs (backprop.py): per-layer activation and weight-gradient statistics and
    gradient histograms in the run's CSV. Ensemble methods ignore it."""

    enabled: bool = True
    # Period of the mean/std rows: every iteration, or pooled over each epoch (50-epoch runs).
    stats_per: StatsPer = StatsPer.auto
    # Iterations between gradient histograms (plus the first and last iteration); null: 200
    # with per-iteration statistics, one epoch with per-epoch statistics.
    hist_every: Optional[int] = None
    # With per-epoch statistics: the epochs (0-based) whose statistics are also written at every
    # iteration (``*_iter`` rows) and whose per-unit mean gradients are histogrammed, one
    # histogram per epoch (Figures 4 and 7: 0, 10, 20, 30, 40). Empty: per-epoch rows only, and
    # per-unit histograms with the gradient histograms. Ignored with per-iteration statistics.
    iteration_epochs: List[int] = field(default_factory=list)


@dataclass
class ScaleConfig:
    name: ScaleName = ScaleName.paper
    # A single run's preset at this scale (no figure=; nested like the run config), e.g.
    # {train: {max_batches: 16}} at smoke scale. Figures have their own per-scale settings.
    single: Dict[str, Any] = field(default_factory=dict)


@dataclass
class FigureSettings:
    """What a figure runs at one scale (``figure.paper`` or ``figure.smoke``).

    ``overrides`` holds run-level settings (nested like the run config, e.g.
    ``{train: {max_batches: 40}}``) applied to every run of the figure at this scale; the
    lists are the values the figure sweeps. Fields a figure does not use keep their defaults.
    """

    seeds: int = 1
    overrides: Dict[str, Any] = field(default_factory=dict)
    ensemble_size: Optional[int] = None
    ensemble_sizes: List[int] = field(default_factory=list)
    activations: List[Activation] = field(default_factory=list)
    sigmas: List[float] = field(default_factory=list)
    optimizers: List[str] = field(default_factory=list)
    # Run-level overrides for single series, keyed by series label (nested like ``overrides``,
    # applied after it), e.g. ``{enkf: {train: {max_batches: 12}}}``.
    series_overrides: Dict[str, Any] = field(default_factory=dict)
    # Figures 4 and 7: how the gradients are drawn. ``iteration``: the paper's panels, gradient
    # mean +/- std at every iteration of ``instrument.iteration_epochs`` and the histograms of the
    # per-unit mean gradient (falls back to ``epoch`` when a run has no per-iteration rows);
    # ``epoch``: mean +/- std pooled per epoch and histograms of all weight-gradient entries.
    gradient_view: GradientView = GradientView.iteration


class EnKFNetwork(str, Enum):
    mean = "mean"                 # the network with the ensemble-mean weights (Figures 8-10)
    last_member = "last_member"   # the last member's network (the published Figure 1 plot)


@dataclass
class FigureConfig:
    id: str = "none"
    # Figure 1: which EnKF network is drawn and compared with the paper (its runs log both)
    enkf_network: EnKFNetwork = EnKFNetwork.mean
    paper: FigureSettings = field(default_factory=FigureSettings)
    smoke: FigureSettings = field(default_factory=FigureSettings)


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    optimizer: Any = MISSING
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    instrument: InstrumentConfig = field(default_factory=InstrumentConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    figure: FigureConfig = field(default_factory=FigureConfig)
    seed: int = 0
    device: Device = Device.auto
    out_dir: str = "results"
    restart: bool = False        # ignore checkpoints and finished runs, start over
    checkpoint_every: int = 500  # iterations (or optimizer steps) between checkpoints
    progress: bool = True
    only: Optional[str] = None  # run only the series matching this pattern ("relu", "*J100", "relu|tanh")
    # One ensemble over the ranks of a torchrun launch or a multi-task submitit job (distributed.py);
    # the same numbers as one process, so not part of the run identity.
    distributed: bool = False
    # Stop cleanly after this long (90s, 8m, 2h): the running run checkpoints, no further run starts,
    # exit 0 with the number of runs left; rerun to continue (runs/budget.py). Not part of a run's identity.
    time_budget: Optional[str] = None
    # The command-line overrides this config was composed with (set by ``compose``): they win
    # over a figure's per-series settings. Not part of the run identity.
    overrides: List[str] = field(default_factory=list)


def name_of(value: Any) -> str:
    """The string of a config choice: an Enum member's value, or the value itself."""
    return str(getattr(value, "value", value))


# Optimizer schemas by group option name ("enkf" -> EnKFConfig). Each method module of
# ``enkf_repro.optim`` registers its own dataclass here when it is imported
# (``optim.base.register_method``); configs/optimizer/<name>.yaml extends ``<name>_schema``.
OPTIMIZER_SCHEMAS: Dict[str, type] = {}
