"""``enkf-repro list``: every figure, what it shows, and the cost of its runs at each scale."""

from __future__ import annotations

from ..config.compose import compose, normalize_figure_args, split_flags
from ..experiments.base import FIGURES, figure_ids
from ..runs.cost import estimate_flops, estimate_seconds
from ..runs.progress import duration as progress_duration
from ..runs.runner import plan


def _flops(f: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if f >= scale:
            return f"{f / scale:.3g} {unit}"
    return f"{f:.3g} FLOP"


def duration(s: float) -> str:
    return "<1 s" if s < 1 else "~" + progress_duration(s)


def list_main(args: list[str]) -> int:
    _, overrides = split_flags(normalize_figure_args(args))
    rows = []
    for fid in figure_ids():
        fig = FIGURES[fid]
        costs = []
        for scale in ("smoke", "paper"):
            if not fig.needs_runs:
                costs.append("drawn, no runs")
                continue
            specs = plan(compose(overrides + [f"figure={fig.config}", f"scale={scale}"]))
            flops = sum(estimate_flops(s.cfg) for s in specs)
            cpu = sum(estimate_seconds(s.cfg, 40e9, "cpu") for s in specs)
            gpu = sum(estimate_seconds(s.cfg, 100e12, "cuda") for s in specs)
            costs.append(f"{len(specs)} runs, {_flops(flops)} (CPU {duration(cpu)}, GPU {duration(gpu)})")
        rows.append((fid, fig.description, *costs))
    print("figure | what it shows | smoke | paper")
    print("--- | --- | --- | ---")
    for r in rows:
        print(" | ".join(r))
    print("\ncost: FLOPs from the cost model (enkf_repro/runs/cost.py); times at 40 GFLOP/s (a 2-core CPU, "
          "measured by `enkf-repro bench`) and at an assumed 100 TFLOP/s on a GPU, plus a fixed cost per step "
          "(per sample for IEnK); rough.")
    return 0
