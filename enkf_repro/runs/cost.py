"""Cost model of a run: FLOPs and a rough wall time, for plans and progress estimates.

The size of a run (``config.schema.RunSize``: the mini-batches it presents at its batch size, the
classes, the network's parameters P and forward FLOPs per image f, the images per evaluation) is
worked out here from the dataset (``data.datasets.dataset_sizes``, without reading files), the
model and the train settings; the FLOPs a method spends on it are its own config's
``cost(run)`` (``optim/<method>.py``): for the ensemble methods J B f (the forward of J networks)
plus about 4 J d P (the update, d = B C) per iteration, for backprop about 3 B f per step, plus an
evaluation of n_test f every ``train.eval_every`` iterations. Small models and per-sample methods
are bound by a fixed cost per step (kernel launches, Python) rather than by arithmetic, added from
:data:`STEP_OVERHEAD_S`.

Memory: runs/memory.py's plan (``estimate_memory`` there). The rate of a device
(:func:`device_rate`): a given one (``rate=``, :func:`parse_rate`), else the one measured here
(``enkf-repro bench``, remembered per device type), else, for the CPU only, a quick probe.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import time

import torch
from omegaconf import DictConfig

from ..config.paths import rates_file
from ..config.schema import Cost, RunSize, method_config, name_of
from ..data.datasets import DATASETS, dataset_sizes
from ..errors import ConfigError
from ..models.ensemble import precision_scope
from ..models.registry import build_model

# Seconds of fixed cost per step (kernel launches, Python), on top of the FLOPs: small models and
# per-sample methods are bound by these, not by arithmetic. Rough values from smoke runs on 2 CPU
# cores (thesis IEnK: ~7 ms per training sample; an EnKF or backprop step: ~2 ms).
STEP_OVERHEAD_S = {"cpu": {"step": 2e-3, "sample": 7e-3}, "cuda": {"step": 3e-4, "sample": 2e-3}}


def estimate_seconds(cfg: DictConfig, rate: float, device: str = "cpu") -> float:
    """Rough wall time of one run: its FLOPs at ``rate`` FLOP/s plus a fixed cost per step."""
    flops, steps, kind = estimate_cost(cfg)
    return flops / rate + steps * STEP_OVERHEAD_S["cuda" if device == "cuda" else "cpu"][kind]


def estimate_flops(cfg: DictConfig) -> float:
    """FLOPs of one run (forward + update, plus evaluations; module docstring)."""
    return estimate_cost(cfg)[0]


def run_size(cfg: DictConfig, model=None, sizes: tuple[int, int, int] | None = None) -> RunSize:
    """What the run ``cfg`` processes: its mini-batches (``train.epochs`` passes over the
    training set, or over ``train.max_batches`` batches of it), the network (``model``, default
    built from ``cfg.model``) and the test set; ``sizes``: (train images, test images, classes) of
    data given in memory (default: the dataset's, read from no file)."""
    model = build_model(cfg.model) if model is None else model
    if sizes is None:
        n_train, n_test = dataset_sizes(cfg.dataset, files=False)
        classes = len(DATASETS[name_of(cfg.dataset.name)].classes)
    else:
        n_train, n_test, classes = sizes
    B = int(cfg.train.batch_size)
    per_epoch = math.ceil(n_train / B)
    if cfg.train.max_batches:
        per_epoch = min(per_epoch, int(cfg.train.max_batches))
    return RunSize(batches=math.ceil(float(cfg.train.epochs) * per_epoch), per_epoch=per_epoch, batch_size=B,
                   classes=classes, params=model.num_params, forward_flops=model.forward_flops(), test_size=n_test,
                   eval_every=cfg.train.eval_every)


def estimate_cost(cfg: DictConfig) -> Cost:
    """(FLOPs, steps, step kind) of one run: what its method's config says the run's size costs
    (module docstring); steps are iterations, backprop steps, or training samples for methods bound
    by a cost per sample ("sample")."""
    return method_config(cfg.optimizer).cost(run_size(cfg))


_RATE_UNITS = {"": 1.0, "k": 1e3, "g": 1e9, "t": 1e12, "p": 1e15}


def parse_rate(text) -> float:
    """FLOP/s from ``6e13``, ``60T``, ``60 TFLOP/s``, ``800G``; ConfigError otherwise."""
    import re

    s = str(text).strip().lower().replace(" ", "").replace("flop/s", "").replace("flops", "").replace("flop", "")
    m = re.fullmatch(r"(\d+(?:\.\d*)?(?:e[+-]?\d+)?)([kgtp]?)", s)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError("rate", text, "a rate in FLOP/s > 0, e.g. rate=60T (60 TFLOP/s), rate=800G or rate=6e13")
    return float(m.group(1)) * _RATE_UNITS[m.group(2)]


def device_rate(device: str, rate=None) -> tuple[float | None, str]:
    """(FLOP/s, where it comes from) for estimates on ``device`` (cpu / cuda): ``rate`` when given,
    else the one measured here, else (cpu) a quick probe; (None, why) for a GPU never measured here."""
    if rate not in (None, ""):
        return parse_rate(rate), "given"
    if device == "cpu":
        return measured_rate(torch.device("cpu"))
    got = cached_rate(device)
    if got is not None:
        return got
    return None, f"no {device} rate measured here: give rate= (e.g. rate=60T) or run `enkf-repro bench` on the GPU"


# -- measuring the machine ------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_rate(device: torch.device, precision: str = "fp32") -> float:
    """Dense square GEMM FLOP/s in the forward's precision (the roofline reference)."""
    n = 2048 if device.type == "cpu" else 8192
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    with precision_scope("tf32" if precision == "tf32" else "fp32", device):
        t = timed(lambda: a @ b, device, repeats=5, warmup=2)
    return 2.0 * n ** 3 / t


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


# -- the rate the estimates use ------------------------------------------------------------------
# Share of the dense GEMM rate an EnKF iteration reaches when no benchmark was run (about 59 % at
# J = 500 on a 2-core CPU in `enkf-repro bench`; a rough prior for other work).
PROBE_FRACTION = 0.5


def save_rate(device_type: str, flops: float, source: str, **extra) -> None:
    """Remember a measured rate (FLOP/s of real work) for ``device_type`` (cpu / cuda)."""
    path = rates_file()
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        data = {}
    data[device_type] = {"flops": float(flops), "source": source,
                         "date": datetime.date.today().isoformat(), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def cached_rate(device_type: str) -> tuple[float, str] | None:
    """(FLOP/s, where it comes from) remembered for ``device_type``, or None."""
    try:
        entry = json.loads(rates_file().read_text())[device_type]
        return float(entry["flops"]), f"{entry['source']} on {entry['date']}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def measured_rate(device: torch.device) -> tuple[float, str]:
    """The rate for estimates on ``device``: the one ``enkf-repro bench`` measured (or an earlier
    probe), else a quick probe now (a dense GEMM times :data:`PROBE_FRACTION`), remembered."""
    got = cached_rate(device.type)
    if got is not None:
        return got
    rate = PROBE_FRACTION * gemm_rate(device)
    save_rate(device.type, rate, f"a GEMM probe x {PROBE_FRACTION:g}")
    return rate, f"a GEMM probe x {PROBE_FRACTION:g} just now"
