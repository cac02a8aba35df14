"""``enkf-repro list``: every figure, what it shows, and the cost of its runs at each scale.

Planning every figure at both scales composes about 160 run configs and needs torch (the
methods' schemas) and the figure modules: a few seconds. The printed table is kept in the cache
folder (``config/paths.py``), keyed by the package's and the configs' files (size and time), the
arguments and the measured rates, so a repeated ``list`` prints it at once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

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


def _cache_key(args: list[str]) -> str:
    h = hashlib.sha1(" ".join(args).encode())
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


def table(args: list[str]) -> str:
    """The table ``list`` prints (plans every figure at both scales)."""
    import torch

    from ..config.compose import compose
    from ..config.overrides import normalize_figure_args, split_flags
    from ..experiments.base import FIGURES, figure_ids
    from ..runs.cost import cached_rate, estimate_flops, estimate_seconds, measured_rate
    from ..runs.runner import plan

    _, overrides = split_flags(normalize_figure_args(args))
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


def list_main(args: list[str]) -> int:
    path = cache_dir() / f"list-{_cache_key(args)}.txt"
    try:
        text = path.read_text()
    except OSError:
        text = table(args)
        path = cache_dir() / f"list-{_cache_key(args)}.txt"   # a probe may have just saved a rate
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        except OSError:
            pass
    print(text)
    return 0
