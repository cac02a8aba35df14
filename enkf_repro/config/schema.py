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
from typing import Any, ClassVar, Dict, List, NamedTuple, Optional, Tuple, Type

from omegaconf import MISSING, DictConfig, OmegaConf

from ..errors import ConfigError


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


class ScaleName(str, Enum):
    paper = "paper"
    smoke = "smoke"


class Task(str, Enum):
    classification = "classification"  # integer labels, one-hot targets; test_error in %
    regression = "regression"          # real-valued targets (N, D); test_error is the RMSE


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
    """What a figure runs at one scale (``figure.paper`` or ``figure.smoke``): the settings every
    figure has. A figure module subclasses it with the values it sweeps and its drawing choices
    and registers the subclass (``experiments/base.py``); its YAML types ``figure.paper`` and
    ``figure.smoke`` with it (``defaults: [/figure_settings@figure.paper: <config>, ...]``).

    ``overrides`` holds run-level settings (nested like the run config, e.g.
    ``{train: {max_batches: 40}}``) applied to every run of the figure at this scale;
    ``series_overrides`` run-level settings for single series, keyed by series label, applied
    after it (``{enkf: {train: {max_batches: 12}}}``)."""

    seeds: int = 1
    overrides: Dict[str, Any] = field(default_factory=dict)
    series_overrides: Dict[str, Any] = field(default_factory=dict)


@dataclass
class FigureConfig:
    id: str = "none"
    # the figure's own settings dataclass (a FigureSettings), per scale; empty without a figure
    paper: Any = field(default_factory=dict)
    smoke: Any = field(default_factory=dict)


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
    # run only the series with these dash-separated words ("relu", "logistic-J100"; "J100" is not
    # "J10000"), several with "|" ("relu|tanh"), or a glob of the whole series ("*J100*")
    only: Optional[str] = None
    # One ensemble over the ranks of a torchrun launch or a multi-task submitit job (distributed.py);
    # the same numbers as one process, so not part of the run identity.
    distributed: bool = False
    # Stop cleanly after this long (90s, 8m, 2h): the running run checkpoints, no further run starts,
    # exit 0 with the number of runs left; rerun to continue (runs/budget.py). Not part of a run's identity.
    time_budget: Optional[str] = None
    # The command-line overrides this config was composed with (set by ``compose``): they win
    # over a figure's per-series settings. Not part of the run identity.
    overrides: List[str] = field(default_factory=list)
    # What the targets are: class labels (the paper) or real values (N, D) given to enkf_repro.train;
    # the methods' outputs, losses and the evaluation follow it (optim/process.py).
    task: Task = Task.classification
    # Observation-noise covariance of one sample's D outputs for the ensemble Kalman methods: null
    # (gamma * I, the method's optimizer.gamma), D variances, or a D x D matrix (whitened once by its
    # Cholesky factor; the method's gamma is then 1). optim/observation.py.
    noise: Optional[Any] = None
    # Start the ensemble from a saved one: a run id (a finished run under out_dir) or the path of a
    # run folder or of its ensemble.pt (null: drawn from the init prior).
    ensemble_from: Optional[str] = None
    # Keep the final ensemble in the run folder (ensemble.pt): null keeps it up to 256 MiB, true
    # always, false never. Not part of the run identity.
    keep_ensemble: Optional[bool] = None
    # torch's CPU threads for the run (null: $OMP_NUM_THREADS when set, else the cores available to
    # this process). Lower it on a machine shared with other jobs. Not part of the run identity.
    threads: Optional[int] = None
    # Live logging besides the CSV (the record): csv (nothing more), tensorboard, mlflow, or several
    # ("tensorboard+mlflow" or a list); runs/loggers.py. logger_dir: where (null: <out_dir>/<scale>/<name>).
    logger: Any = "csv"
    logger_dir: Optional[str] = None


def name_of(value: Any) -> str:
    """The string of a config choice: an Enum member's value, or the value itself."""
    return str(getattr(value, "value", value))


# -- the methods' configs ---------------------------------------------------------------------
class MethodConfig:
    """Base of every method's config dataclass (``optim/<method>.py``): its fields are the keys
    and defaults of ``optimizer.*``, and the class declares what the rest of the package asks of
    a method, so that a run's identity (identity.py), the range checks (validate.py), the cost
    model (runs/cost.py) and the library API hold no knowledge of single methods.

    * ``neutral``: keys added after runs were made -> the value that reproduces those runs'
      numbers; the identity leaves such a key out while it holds that value, so the earlier runs
      keep their ids (a dataclass instance stands for its whole block at its defaults);
    * ``positive``: keys whose value must be > 0;
    * ``reads``: the sections of :data:`METHOD_SECTIONS` the method reads (they change its
      numbers, so they are part of its runs' identity and of no other method's);
    * ``check(cfg)``: ranges and cross-field rules beyond ``positive``, on the typed config, with
      the run config ``cfg`` for rules that involve other sections;
    * ``cost(run)``: (FLOPs, steps, step kind) of one run of the size ``run`` (:class:`RunSize`).
    """

    neutral: ClassVar[Dict[str, Any]] = {}
    positive: ClassVar[Tuple[str, ...]] = ()
    reads: ClassVar[Tuple[str, ...]] = ()

    def check(self, cfg: Any) -> None:
        """Raise a one-line ConfigError for the first bad value (nothing to check by default)."""

    def cost(self, run: "RunSize") -> "Cost":
        raise NotImplementedError(f"{type(self).__name__} declares no cost model (MethodConfig.cost)")


# Sections of the run config that only the methods naming them in ``MethodConfig.reads`` use: the
# instrumentation of backprop runs. They are part of those methods' run identity only.
METHOD_SECTIONS: Tuple[str, ...] = ("instrument",)


@dataclass(frozen=True)
class RunSize:
    """What one run processes, as plain numbers (runs/cost.py fills it in from the dataset, the
    model and the train settings): the input of ``MethodConfig.cost``."""

    batches: int                # mini-batches presented: the epochs times the batches per epoch
    per_epoch: int              # mini-batches per epoch
    batch_size: int             # B
    classes: int                # C
    params: int                 # P, parameters of one network
    forward_flops: float        # f, FLOPs of one network's forward pass on one image
    test_size: int              # images per evaluation
    eval_every: Optional[int]   # iterations between evaluations (None: once per epoch)

    def evaluations(self, per_batch: int = 1) -> int:
        """Evaluations of a run with ``per_batch`` iterations per mini-batch (the EnKF's r): every
        ``eval_every`` iterations (or once per epoch), plus the first and the last."""
        return self.batches * per_batch // (self.eval_every or self.per_epoch * per_batch) + 2

    def evaluation_flops(self, per_batch: int = 1) -> float:
        """FLOPs of those evaluations: one network over the test set each."""
        return self.evaluations(per_batch) * self.test_size * self.forward_flops


class Cost(NamedTuple):
    """The cost of one run: its FLOPs (forward passes, updates, evaluations), the number of its
    steps and what a step is: ``"step"`` (an iteration) or ``"sample"`` (one training sample, for
    methods bound by a fixed cost per sample)."""

    flops: float
    steps: int
    kind: str = "step"


# Figure settings by figure config name ("fig8" -> its FigureSettings subclass), registered by each
# figure module of ``enkf_repro.experiments``; configs/figure/<name>.yaml types its
# ``figure.paper`` / ``figure.smoke`` blocks with ``/figure_settings@figure.<scale>: <name>``.
FIGURE_SETTINGS: Dict[str, type] = {}

# Optimizer schemas by group option name ("enkf" -> EnKFConfig). Each method module of
# ``enkf_repro.optim`` registers its own dataclass here when it is imported
# (``optim.base.register_method``); configs/optimizer/<name>.yaml extends ``<name>_schema``.
OPTIMIZER_SCHEMAS: Dict[str, Type[MethodConfig]] = {}


def schema_of(name: Any) -> Type[MethodConfig]:
    """The registered config dataclass of ``optimizer=<name>``; one ConfigError line otherwise."""
    name = name_of(name)
    if name not in OPTIMIZER_SCHEMAS:
        raise ConfigError("optimizer.name", name,
                          "one of the registered methods: " + ", ".join(sorted(OPTIMIZER_SCHEMAS)))
    return OPTIMIZER_SCHEMAS[name]


def upgrade(cfg: Any) -> DictConfig:
    """A run config merged onto the structured schema (``Config``, its optimizer onto the method's
    dataclass): the keys that the config of an earlier run or a hand-built one lacks take their
    defaults, strings become Enum members, a misspelt key or a bad value fails. The one place
    where defaults are filled into a config; a composed config comes out equal to itself."""
    base = OmegaConf.structured(Config)
    base.optimizer = OmegaConf.structured(schema_of(cfg["optimizer"]["name"]))
    return OmegaConf.merge(base, cfg)


def method_config(node: Any) -> MethodConfig:
    """A method's typed config (its dataclass, Enum members for choices) from an optimizer node
    of a run config, upgraded onto the schema like :func:`upgrade`."""
    if isinstance(node, MethodConfig):
        return node
    schema = schema_of(node["name"])
    if not (isinstance(node, DictConfig) and OmegaConf.get_type(node) is schema):   # composed: complete
        node = OmegaConf.merge(OmegaConf.structured(schema), node)
    return OmegaConf.to_object(node)
