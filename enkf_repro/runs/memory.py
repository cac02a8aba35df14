"""The memory plan of a run: what it will hold on its device, estimated from its config before any
data is loaded, against the memory free there.

A run holds, at its peak (each part estimated where it is made):

* the dataset's images and labels on the device (``data/``: N x 1 x 28 x 28 fp32 per split);
* the ensemble forward: its outputs (J x B x C, fp32) and one chunk's intermediates, at each
  batch size the method forwards (``models/ensemble.py`` :func:`forward_memory`);
* the method's own tensors: the ensemble U (J x P, fp32), the update's factors and work space,
  a momentum or noise copy of U (``optim/``: the method class's ``memory(opt, run)``);
* one network's evaluation on ``train.eval_batch_size`` test images;
* with ``distributed=true``, J / ranks members per process, and on rank 0 the whole ensemble
  gathered at each checkpoint.

The memory free is the host's available RAM on CPU (``MemAvailable``, within a cgroup's limit)
and ``torch.cuda.mem_get_info`` on CUDA (plus what this process's caching allocator holds
unused). A run whose plan exceeds it stops before any work with one line: what it needs, what is
free, and the settings that make it fit (a smaller J, a chunk size, more ranks).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..config.schema import method_config, name_of
from ..data.datasets import dataset_sizes
from ..errors import OutOfMemory
from ..models.base import ModelSpec
from ..models.ensemble import forward_memory, resolve_device
from ..models.registry import build_model
from ..optim.base import get_method
from ..optim.distributed_enkf import DISTRIBUTED_METHODS
from .cost import run_size
from .results import human_bytes

IMAGE_BYTES = 4 * 28 * 28 + 8   # one image (fp32) and its label (int64) on the device


@dataclass
class MemoryPlan:
    """A run's estimated peak memory on ``device`` by part (bytes), and the memory free there."""

    device: torch.device
    parts: dict[str, int]
    free: int | None
    where: str                    # what ``free`` measures

    @property
    def need(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.free is None or self.need <= self.free

    def largest(self, n: int = 3) -> str:
        """The ``n`` largest parts: ``"ensemble U (J x P, fp32) 1.44 TB, forward ... 25.6 MB"``."""
        top = sorted(self.parts.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{k} {human_bytes(v)}" for k, v in top)


# -- what is free ----------------------------------------------------------------------------------
def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat_value(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def host_free() -> tuple[int | None, str]:
    """Bytes of host RAM a new allocation can take: ``MemAvailable``, or less within a cgroup's
    memory limit (its limit minus its use, page cache counted as free)."""
    free, where = None, "host RAM (MemAvailable)"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None, where
    # cgroup v2, then v1: the limit minus the use (the page cache is reclaimable)
    for limit_path, use_path, stat_path, cache_key in (
            ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat", "file"),
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
             "/sys/fs/cgroup/memory/memory.stat", "total_cache")):
        limit, use = _read_int(limit_path), _read_int(use_path)
        if limit is not None and use is not None and limit < (1 << 60):
            room = limit - use + _stat_value(stat_path, cache_key)
            if room < free:
                free, where = max(0, room), "host RAM within this container's memory limit"
            break
    return free, where


def device_free(device: torch.device) -> tuple[int | None, str]:
    """Bytes free for this process on ``device`` and what that measures."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free) + max(0, int(unused)), f"{device} memory (cudaMemGetInfo)"
    return host_free()


# -- the plan --------------------------------------------------------------------------------------
def plan_memory(cfg, device: torch.device | None = None, model: ModelSpec | None = None,
                sizes: tuple[int, int, int] | None = None, world: int = 1, free: int | None = None,
                where: str = "") -> MemoryPlan:
    """The memory plan of the run ``cfg`` (module docstring) on ``device`` (default: its own),
    with ``model`` (default: built from ``cfg.model``) and data of ``sizes`` (train, test,
    classes; default: the dataset's), as one of ``world`` ranks; ``free``: the memory free there
    (default: measured). Builds nothing large and loads nothing."""
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    model = build_model(cfg.model) if model is None else model
    run = run_size(cfg, model, sizes)
    opt = method_config(cfg.optimizer)
    J = int(getattr(opt, "ensemble_size", 0) or 0)
    rows = math.ceil(J / world) if world > 1 and J else J
    if rows != J:
        opt = replace(opt, ensemble_size=rows)
    need = get_method(opt.name).memory(opt, run)
    train_images = dataset_sizes(cfg.dataset, files=False)[0] if sizes is None else sizes[0]
    parts: dict[str, int] = {"dataset on the device": IMAGE_BYTES * (train_images + run.test_size)}
    if need.members:
        forwards = [forward_memory(model, need.members, b, run.classes, device, cfg.ensemble.chunk_size,
                                   cfg.ensemble.precision) for b in need.batches]
        parts.update(max(forwards, key=lambda f: sum(f.values())))
    parts.update(need.buffers)
    parts["evaluation of one network"] = model.activation_bytes(int(cfg.train.eval_batch_size))
    if world > 1 and J:
        parts["whole ensemble gathered on rank 0 at checkpoints"] = 2 * 4 * J * run.params
    if free is None:
        free, where = device_free(device)
    return MemoryPlan(device, parts, free, where)


def _largest_fitting(fits, lo: int, hi: int) -> int | None:
    """The largest n in [lo, hi] with fits(n) (fits decreasing in n), or None."""
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def fixes(cfg, plan: MemoryPlan, **kw: Any) -> list[str]:
    """Settings that make the run ``cfg`` fit in ``plan.free``, each alone: the largest chunk size
    and the fewest ranks (both resume the same run), the largest ensemble size (another run)."""
    if plan.free is None:
        return []
    out = []
    kw = {**kw, "device": plan.device, "free": plan.free, "where": plan.where}

    def fits_with(**changes) -> bool:
        c = cfg.copy()
        for key, value in changes.items():
            section, name = key.split(".")
            c[section][name] = value
        return plan_memory(c, **kw).fits

    J = int(cfg.optimizer.get("ensemble_size") or 0)
    chunk_parts = [v for k, v in plan.parts.items() if k.startswith("forward chunk")]
    chunk = int(cfg.ensemble.chunk_size or 0)
    if chunk_parts and chunk_parts[0] > 0:
        top = chunk - 1 if chunk > 1 else 1 << 16
        best = _largest_fitting(lambda n: fits_with(**{"ensemble.chunk_size": n}), 1, top)
        if best is not None:
            out.append(f"ensemble.chunk_size={best}")
    # ranks on other GPUs (processes on one host share its RAM: no help on CPU)
    if J and plan.device.type == "cuda" and name_of(cfg.optimizer.name) in DISTRIBUTED_METHODS \
            and kw.get("world", 1) == 1:
        ranks = next((n for n in (2, 4, 8, 16, 32, 64) if plan_memory(cfg, **{**kw, "world": n}).fits), None)
        if ranks is not None:
            out.append(f"{ranks} ranks: torchrun --nproc_per_node={ranks} -m enkf_repro run ... distributed=true "
                       f"(one GPU each; several nodes with --nnodes)")
    if J > 2:
        best = _largest_fitting(lambda n: fits_with(**{"optimizer.ensemble_size": n}), 2, J - 1)
        if best is not None:
            out.append(f"optimizer.ensemble_size={best} or less")
    return out


def memory_line(cfg, plan: MemoryPlan, **kw: Any) -> str:
    """The one line of a run that does not fit: the need by part, the memory free, the fixes."""
    J = cfg.optimizer.get("ensemble_size")
    what = f"optimizer.ensemble_size={J}: " if J else ""
    fix = fixes(cfg, plan, **kw)
    todo = ("make it fit with " + ", or ".join(fix)) if fix else \
        "no ensemble size, chunk size or number of ranks makes it fit: use a device with more memory"
    return (f"{what}the run needs about {human_bytes(plan.need)} on {plan.device} ({plan.largest()}) but "
            f"{human_bytes(plan.free)} of {plan.where} is free; {todo}")


def check_memory(cfg, device: torch.device | None = None, model: ModelSpec | None = None,
                 sizes: tuple[int, int, int] | None = None, world: int = 1, free: int | None = None,
                 where: str = "") -> MemoryPlan:
    """The plan of ``cfg`` (``free``: the memory free, default measured); an ``OutOfMemory`` line
    (exit code 2) when it does not fit."""
    model = build_model(cfg.model) if model is None else model
    plan = plan_memory(cfg, device, model, sizes, world, free, where)
    if not plan.fits:
        raise OutOfMemory(memory_line(cfg, plan, model=model, sizes=sizes, world=world))
    return plan


def estimate_memory(cfg, device: str = "cuda") -> float:
    """Peak bytes of one run on ``device``: the plan's need, without measuring what is free there."""
    return float(plan_memory(cfg, torch.device(device), free=0, where="not measured").need)
