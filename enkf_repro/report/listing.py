"""``list``: every figure, what it shows, and the cost of its runs at each scale, as a table.

Planning every figure at both scales composes about 160 run configs and needs torch (the
methods' schemas) and the figure modules: a few seconds. :func:`figure_table` keeps the table in
the cache folder (``config/paths.py``), keyed by the package's and the configs' files (size and
time), the overrides and the measured rates, so a repeated ``list`` prints it at once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from ..config.overrides import config_dir
from ..config.paths import cache_dir, rates_file

GPU_ASSUMED = 100e12   # FLOP/s assumed for a GPU when none was measured


def _flops(f: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if f >= scale:
            return f"{f / scale:.3g} {unit}"
    return f"{f:.3g} FLOP"


def duration(s: float) -> str:
    from ..runs.progress import duration as progress_duration

    return "<1 s" if s < 1 else "~" + progress_duration(s)


def _cache_key(overrides: Sequence[str]) -> str:
    h = hashlib.sha1(" ".join(overrides).encode())
    pkg = Path(__file__).resolve().parents[1]
    for root in (pkg, config_dir()):
        for p in sorted(root.rglob("*")):
            if p.suffix in (".py", ".yaml"):
                st = p.stat()
                h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    rates = rates_file()
    if rates.exists():
        h.update(rates.read_bytes())
    return h.hexdigest()[:16]


def _table(overrides: list[str]) -> str:
    """The table of :func:`figure_table`, planned afresh (every figure at both scales)."""
    import torch

    from ..config.compose import compose
    from ..experiments.base import FIGURES, figure_ids
    from ..runs.cost import cached_rate, estimate_flops, estimate_seconds, measured_rate
    from ..runs.runner import plan

    cpu_rate, cpu_src = measured_rate(torch.device("cpu"))
    gpu = cached_rate("cuda")
    gpu_rate, gpu_src = gpu if gpu is not None else (GPU_ASSUMED, "assumed (no GPU measured here)")
    rows = []
    for fid in figure_ids():
        fig = FIGURES[fid]
        costs = []
        for scale in ("smoke", "paper"):
            if not fig.needs_runs:
                costs.append("drawn, no runs")
                continue
            specs = plan(compose(fig.applicable(overrides) + [f"figure={fig.config}", f"scale={scale}"]))
            flops = sum(estimate_flops(s.cfg) for s in specs)
            cpu = sum(estimate_seconds(s.cfg, cpu_rate, "cpu") for s in specs)
            gpu_s = sum(estimate_seconds(s.cfg, gpu_rate, "cuda") for s in specs)
            costs.append(f"{len(specs)} runs, {_flops(flops)} (CPU {duration(cpu)}, GPU {duration(gpu_s)})")
        rows.append((fid, fig.description, *costs))
    lines = ["figure | what it shows | smoke | paper", "--- | --- | --- | ---"]
    lines += [" | ".join(r) for r in rows]
    lines += ["", f"cost: FLOPs from the cost model (enkf_repro/runs/cost.py) at {cpu_rate / 1e9:.0f} GFLOP/s on "
              f"this CPU ({cpu_src}) and {gpu_rate / 1e12:.0f} TFLOP/s on a GPU ({gpu_src}), plus a fixed cost "
              "per step (per sample for IEnK); rough. `enkf-repro bench` measures the rates."]
    return "\n".join(lines)


def figure_table(overrides: Sequence[str] = ()) -> str:
    """The table of every figure: its id, what it shows and, at smoke and at paper scale, its runs,
    their FLOPs and the estimated time on this CPU and on a GPU, with the composed configs
    changed by ``overrides`` (``["dataset.test_only=true"]``); then a line on the rates used.
    Kept in the cache folder and read back while nothing it depends on changed."""
    overrides = list(overrides)
    path = cache_dir() / f"list-{_cache_key(overrides)}.txt"
    try:
        return path.read_text()
    except OSError:
        pass
    text = _table(overrides)
    path = cache_dir() / f"list-{_cache_key(overrides)}.txt"   # a probe may have just saved a rate
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError:
        pass
    return text
