"""Structured configs: the schema that every YAML file under ``configs/`` is checked against.

Hydra composes ``configs/config.yaml`` with the groups ``dataset``, ``model``, ``optimizer``,
``scale`` and ``figure``; the dataclasses below make a misspelt key, a wrong type or an unknown
enum value fail at start-up. Value ranges (``J >= 2``, ``sigma > 0`` ...) are checked by
:func:`validate`, which raises :class:`~enkf_repro.errors.ConfigError` with one line naming the
key, the value and what is allowed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .errors import ConfigError


class Activation(str, Enum):
    logistic = "logistic"
    relu = "relu"
    tanh = "tanh"


class DatasetName(str, Enum):
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"
    notmnist = "notmnist"


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


class InitScheme(str, Enum):
    normal = "normal"  # every weight ~ N(0, sigma^2), biases 0 (the paper)
    glorot = "glorot"  # Glorot-normal weights, biases 0 (the 2019 thesis MLP)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    fp32 = "fp32"
    tf32 = "tf32"
    bf16 = "bf16"


class UpdateMode(str, Enum):
    sequential = "sequential"  # the published code: the 64 samples of a batch one at a time
    batch = "batch"            # the textbook joint update with d = B * C


class NonfinitePolicy(str, Enum):
    redraw = "redraw"  # drop non-finite members from the statistics, redraw them around the mean
    fail = "fail"      # stop the run with a DivergenceError


class ShrinkMode(str, Enum):
    keep_mean = "keep_mean"  # Algorithm 1: drop the last members, shift the rest onto the old mean
    random = "random"        # drop a uniformly random subset (the mean moves by sampling noise)


class BudgetMode(str, Enum):
    epoch = "epoch"      # N = iterations done + what is left of the epoch at the new r
    literal = "literal"  # N = D_s / m * r with the new r, as printed in Algorithm 1


class StatsPer(str, Enum):
    auto = "auto"            # per iteration for runs of at most one epoch, per epoch for longer runs
    iteration = "iteration"
    epoch = "epoch"


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


@dataclass
class ModelConfig:
    name: ModelName = ModelName.paper_cnn
    activation: Activation = Activation.logistic
    # paper_cnn: the published code has no pool after conv2 (flatten 20*8*8 = 1280, 18,050
    # parameters); the paper's text pools both conv layers (flatten 20*4*4 = 320).
    pool_conv2: bool = False
    hidden: List[int] = field(default_factory=list)  # dense models: hidden layer widths


@dataclass
class InitConfig:
    scheme: InitScheme = InitScheme.normal
    sigma: float = 0.1


@dataclass
class EnsembleConfig:
    # Members per batched forward call; null picks a size that keeps intermediates in cache (CPU)
    # or within a fixed memory budget (CUDA).
    chunk_size: Optional[int] = None
    precision: Precision = Precision.fp32  # forward pass only; the update runs in fp32 or fp64
    compile: bool = False                  # torch.compile the per-chunk forward


@dataclass
class TrainConfig:
    batch_size: int = 64
    epochs: float = 1.0
    max_batches: Optional[int] = None  # distinct training batches per epoch (null: all)
    # null: the method's default, a fixed order for ensemble methods (the paper's EnKF) and a
    # per-epoch reshuffle for backprop (SGD / Adam)
    shuffle: Optional[bool] = None
    eval_every: int = 500              # iterations between test-error evaluations
    eval_batch_size: int = 2000


@dataclass
class AdaptiveConfig:
    """Algorithm 1 of the paper (adaptive J, r and iteration budget); see ``adaptive.py``."""

    enabled: bool = False
    tau: int = 500           # iterations between decisions (the evaluation cadence)
    epsilon: float = 10.0    # test-error threshold in percent
    kappa: float = 1.0       # improvement threshold in percentage points
    v: int = 1000            # members added or removed per decision
    b_l: int = 1000          # lower bound on J
    b_u: int = 10000         # upper bound on J (the published config uses 9000)
    shrink: ShrinkMode = ShrinkMode.keep_mean  # which members are dropped
    budget: BudgetMode = BudgetMode.epoch      # what N = D_s / m * r means when r changes mid-run
    use_initial_error: bool = False  # use the iteration-0 (untrained) error as t_0


@dataclass
class EnKFConfig:
    name: str = "enkf"
    ensemble_size: int = 5000  # J
    gamma: float = 0.01        # observation noise: Gamma = gamma * I
    repetitions: int = 8       # r: EnKF iterations per mini-batch
    update_mode: UpdateMode = UpdateMode.sequential
    nonfinite: NonfinitePolicy = NonfinitePolicy.redraw
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)


@dataclass
class SGDConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0


@dataclass
class AdamConfig:
    name: str = "adam"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0


class EKILoss(str, Enum):
    mse = "mse"                      # Psi = |G - y|^2 / 2 on the logits (mean over the batch)
    cross_entropy = "cross_entropy"  # Psi = -<y, log(G + delta)> on the softmax outputs


class Momentum(str, Enum):
    none = "none"
    nesterov = "nesterov"            # MEKI: v_n = u_n + lambda_n (u_n - u_{n-1})


class HaberOutput(str, Enum):
    logits = "logits"
    softmax = "softmax"


class IEnKMode(str, Enum):
    sample = "sample"  # the thesis: one update per training sample, in order
    batch = "batch"    # one update per mini-batch (coefficients summed over its samples)


@dataclass
class EKIConfig:
    """Kovachki & Stuart's EKI (eki.py): U <- U - h_n D(U) U, h_n = h0 / (||D||_F + eps)."""

    name: str = "eki"
    ensemble_size: int = 2000        # J
    h0: float = 2.0
    eps: float = 0.5
    loss: EKILoss = EKILoss.cross_entropy
    delta: float = 0.005             # cross_entropy: grad = -y / (G + delta)
    momentum: Momentum = Momentum.none
    momentum_coef: Optional[float] = None  # null: Nesterov's n / (n + 3); a number: constant lambda
    randomize: bool = False          # (R): redraw members as mean + gamma(n) * prior noise
    random_gamma0: float = 1.0       # gamma(n) = gamma0 / sqrt(1 + n / tau)
    random_tau: float = 100.0
    best_of: int = 512               # training samples (most recent batches) ranking the best member


@dataclass
class HaberConfig:
    """Haber, Lucka & Ruthotto's "never look back" EnKF (haber.py)."""

    name: str = "haber"
    ensemble_size: int = 100         # K fresh perturbations per step
    sigma: float = 0.01              # perturbation std, Omega ~ N(0, sigma^2 I)
    alpha: float = 1.0               # step size
    gamma: float = 1.0               # regularisation (damping) of the K x K Gauss-Newton system
    output: HaberOutput = HaberOutput.softmax


@dataclass
class IEnKSimpleConfig:
    """The 2019 thesis's simplified iterative EnKF (ienk.py)."""

    name: str = "ienk_simple"
    ensemble_size: int = 10          # K perturbations per layer
    lr: float = 0.001
    delta: float = 0.005
    mode: IEnKMode = IEnKMode.sample


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


@dataclass
class ScaleConfig:
    name: ScaleName = ScaleName.paper


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


@dataclass
class FigureConfig:
    id: str = "none"
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


# Optimizer schemas by group option name; yaml files in configs/optimizer extend them.
OPTIMIZER_SCHEMAS: Dict[str, type] = {
    "enkf": EnKFConfig,
    "sgd": SGDConfig,
    "adam": AdamConfig,
    "eki": EKIConfig,
    "haber": HaberConfig,
    "ienk_simple": IEnKSimpleConfig,
}


@functools.lru_cache(maxsize=None)
def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for name, schema in OPTIMIZER_SCHEMAS.items():
        cs.store(group="optimizer", name=f"{name}_schema", node=schema)


def config_dir() -> Path:
    """The folder of Hydra configs: packaged in a wheel, or ``configs/`` of a source checkout."""
    pkg = Path(__file__).resolve().parent
    for candidate in (pkg / "configs", pkg.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no Hydra configs found next to {pkg} (expected configs/config.yaml)")


def _check(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def validate(cfg: DictConfig) -> None:
    """Check value ranges that types alone cannot express; raise ConfigError on the first bad one."""
    opt = cfg.optimizer
    name = opt.name
    if "ensemble_size" in opt:
        _check(opt.ensemble_size >= 2, "optimizer.ensemble_size", opt.ensemble_size, "an integer >= 2 (J)")
    if "gamma" in opt:
        _check(opt.gamma > 0, "optimizer.gamma", opt.gamma, "a number > 0")
    if "repetitions" in opt:
        _check(opt.repetitions >= 1, "optimizer.repetitions", opt.repetitions, "an integer >= 1 (r)")
    if "lr" in opt:
        _check(opt.lr > 0, "optimizer.lr", opt.lr, "a number > 0")
    if name == "enkf" and opt.adaptive.enabled:
        a = opt.adaptive
        _check(a.tau >= 1, "optimizer.adaptive.tau", a.tau, "an integer >= 1")
        _check(a.v >= 1, "optimizer.adaptive.v", a.v, "an integer >= 1")
        _check(2 <= a.b_l <= a.b_u, "optimizer.adaptive.b_l", a.b_l,
               f"an integer with 2 <= b_l <= b_u = {a.b_u}")
        _check(a.epsilon > 0, "optimizer.adaptive.epsilon", a.epsilon, "a test error in percent > 0")
        _check(a.kappa >= 0, "optimizer.adaptive.kappa", a.kappa, "a number of percentage points >= 0")
        _check(a.tau % cfg.train.eval_every == 0, "optimizer.adaptive.tau", a.tau,
               f"a multiple of train.eval_every = {cfg.train.eval_every} (decisions use evaluations)")
    for key in ("h0", "eps", "alpha", "sigma", "random_gamma0", "random_tau"):
        if key in opt:
            _check(opt[key] > 0, f"optimizer.{key}", opt[key], "a number > 0")
    if "delta" in opt:
        _check(opt.delta >= 0, "optimizer.delta", opt.delta, "a number >= 0")
    if "best_of" in opt:
        _check(opt.best_of >= 0, "optimizer.best_of", opt.best_of, "an integer >= 0 (0: no best member)")
    if opt.get("momentum_coef") is not None:
        _check(0 <= opt.momentum_coef < 1, "optimizer.momentum_coef", opt.momentum_coef,
               "a number in [0, 1), or null for Nesterov's n / (n + 3)")
    _check(cfg.init.sigma > 0, "init.sigma", cfg.init.sigma, "a number > 0")
    cs = cfg.ensemble.chunk_size
    _check(cs is None or cs >= 1, "ensemble.chunk_size", cs, "an integer >= 1, or null for automatic")
    t = cfg.train
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, "an integer >= 1")
    _check(t.epochs > 0, "train.epochs", t.epochs, "a number > 0")
    _check(t.max_batches is None or t.max_batches >= 1, "train.max_batches", t.max_batches,
           "an integer >= 1, or null for the whole training set")
    _check(t.eval_every >= 1, "train.eval_every", t.eval_every, "an integer >= 1")
    _check(t.eval_batch_size >= 1, "train.eval_batch_size", t.eval_batch_size, "an integer >= 1")
    ts = cfg.dataset.test_size
    _check(ts is None or ts >= 1, "dataset.test_size", ts, "an integer >= 1, or null for the whole test set")
    n = cfg.dataset.test_only_train_size
    _check(n >= 1, "dataset.test_only_train_size", n,
           "an integer >= 1 (and below the number of images; the loader checks that)")
    he = cfg.instrument.hist_every
    _check(he is None or he >= 1, "instrument.hist_every", he, "an integer >= 1, or null for automatic")
    _check(cfg.checkpoint_every >= 1, "checkpoint_every", cfg.checkpoint_every, "an integer >= 1")
    for scale in ("paper", "smoke"):
        s = cfg.figure[scale].seeds
        _check(s >= 1, f"figure.{scale}.seeds", s, "an integer >= 1")
    if cfg.get("distributed", False):
        from .distributed import validate_distributed

        validate_distributed(cfg)


def to_plain(cfg: DictConfig) -> dict:
    """Resolved config as plain Python (enums as their string values)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
