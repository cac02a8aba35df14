"""``list``: every figure, what it shows, and the cost of its runs at each scale, as a table: on
this CPU and on a planned device (``device=cuda``: a GPU's time from its measured or given rate
``rate=``, and the largest run's memory there), with a total row.

Planning every figure at both scales plans 177 runs from 56 Hydra compositions (one per figure,
scale and group choice of its variants, about 0.1 s each) and needs torch (the methods' schemas,
the models' sizes) and the figure modules: about 12 s on a 2-core CPU, with a bar on a terminal.
:func:`figure_table` keeps the table in the cache folder (``config/paths.py``), keyed by the
content of the package's and the configs' files, the overrides and the measured rates, so a later
``list`` of the same code, in this checkout or a fresh clone, prints it at once (about 0.05 s).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Sequence

from ..config.overrides import config_dir
from ..config.paths import cache_dir, rates_file
from ..errors import ConfigError


def _flops(f: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if f >= scale:
            return f"{f / scale:.3g} {unit}"
    return f"{f:.3g} FLOP"


def duration(s: float) -> str:
    from ..runs.progress import duration as progress_duration

    return "<1 s" if s < 1 else "~" + progress_duration(s)


def _cache_key(overrides: Sequence[str], rate, roots: Sequence[Path] | None = None) -> str:
    """The key of a cached table: the overrides, the rate, the measured rates and the content of
    every code and config file under ``roots`` (default: the package and its configs; relative
    paths and bytes, not where the files lie or when they were written), so a fresh clone or a
    checkout of code listed before on this machine finds its table."""
    h = hashlib.sha1((" ".join(overrides) + f"|rate={rate}").encode())
    if roots is None:
        roots = (Path(__file__).resolve().parents[1], config_dir())
    for root in roots:
        h.update(f"|{root.name}|".encode())
        for p in sorted(root.rglob("*")):
            if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts:
                h.update(f"{p.relative_to(root).as_posix()}\0".encode())
                h.update(hashlib.sha1(p.read_bytes()).digest())
    rates = rates_file()
    if rates.exists():
        h.update(rates.read_bytes())
    # without device= the plan is for this machine's GPU if it has one: a cache folder shared by a
    # CPU node and a GPU node keeps a table for each (read without importing torch)
    h.update(f"|gpu={os.path.exists('/dev/nvidiactl')}|{os.environ.get('CUDA_VISIBLE_DEVICES')}".encode())
    return h.hexdigest()[:16]


def plan_device(overrides: Sequence[str]) -> str:
    """The device the estimates are for: ``device=cuda`` (or cpu) among the overrides, else a
    GPU when this machine has one, else the CPU."""
    import torch

    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+") == "device" and value in ("cpu", "cuda"):
            return value
    return "cuda" if torch.cuda.is_available() else "cpu"


SCALES = ("smoke", "paper")


def _table(overrides: list[str], rate=None, figures: Sequence[str] | None = None,
           scales: Sequence[str] = SCALES) -> str:
    """The table of :func:`figure_table`, planned afresh."""
    from ..config.compose import compose
    from ..experiments.base import FIGURES, figure_ids, get_figure
    from ..runs.cost import device_rate, estimate_flops, estimate_seconds
    from ..runs.memory import estimate_memory
    from ..runs.progress import progress
    from ..runs.runner import plan

    ids = list(dict.fromkeys(get_figure(f).id for f in figures)) if figures else figure_ids()
    device = plan_device(overrides)
    cpu_rate, cpu_src = device_rate("cpu", rate if device == "cpu" else None)
    dev_rate, dev_src = (cpu_rate, cpu_src) if device == "cpu" else device_rate(device, rate)
    rows, totals = [], {s: [0, 0.0, 0.0, 0.0, 0.0] for s in scales}
    # on a terminal, a bar while the figures are planned (seconds; the table is then kept)
    bar = progress(len(scales) * len(ids), 0, "planning the figures (once; kept for the next list)",
                   enabled=sys.stderr.isatty())
    try:
        for fid in ids:
            fig = FIGURES[fid]
            costs = []
            for scale in scales:
                if not fig.needs_runs:
                    costs.append("drawn, no runs")
                    bar.update()
                    continue
                try:
                    specs = plan(compose(fig.applicable(overrides) + [f"figure={fig.config}", f"scale={scale}"]))
                except ConfigError as e:   # which figure a setting does not fit, and how to leave it out
                    raise ConfigError.line(f"figure {fid} at scale={scale}: {e} (list the figures it applies to "
                                           "with figures=ID,ID,...)") from None
                flops = sum(estimate_flops(s.cfg) for s in specs)
                cpu = sum(estimate_seconds(s.cfg, cpu_rate, "cpu") for s in specs)
                dev = sum(estimate_seconds(s.cfg, dev_rate, device) for s in specs) if dev_rate else float("nan")
                mem = max((estimate_memory(s.cfg, device) for s in specs), default=0.0)
                t = totals[scale]
                t[0], t[1], t[2], t[3], t[4] = t[0] + len(specs), t[1] + flops, t[2] + cpu, t[3] + dev, max(t[4], mem)
                costs.append(_cell(len(specs), flops, cpu, device, dev, mem))
                bar.update()
            rows.append((fid, fig.description, *costs))
    finally:
        bar.close()
    lines = [" | ".join(["figure", "what it shows", *scales]), " | ".join(["---"] * (2 + len(scales)))]
    lines += [" | ".join(r) for r in rows]
    which = "figures " + ", ".join(ids) if figures else "every figure"
    lines.append(" | ".join(["total", which] + [_cell(*totals[s][:3], device, *totals[s][3:]) for s in scales]))
    where = (f"{dev_rate / 1e12:.3g} TFLOP/s on {device} ({dev_src})" if dev_rate else f"{device}: {dev_src}")
    lines += ["", f"cost: FLOPs from the cost model (enkf_repro/runs/cost.py) at {cpu_rate / 1e9:.0f} GFLOP/s on "
              f"this CPU ({cpu_src})" + ("" if device == "cpu" else f" and {where}") + ", plus a fixed cost per step "
              f"(per sample for IEnK); rough. Memory: the largest run's peak on {device} (data, method state, a "
              "forward chunk). `enkf-repro list device=cuda rate=60T` plans for a GPU of 60 TFLOP/s; "
              "`enkf-repro bench` measures the rates."]
    return "\n".join(lines)


def _cell(runs: int, flops: float, cpu: float, device: str, dev: float, mem: float) -> str:
    from ..runs.results import human_bytes

    text = f"{runs} runs, {_flops(flops)} (CPU {duration(cpu)}"
    if device != "cpu":
        text += f", {device} {duration(dev) if dev == dev else '?'}"
    return text + f"; {human_bytes(mem)} per run)"


def figure_table(overrides: Sequence[str] = (), rate=None, figures: Sequence[str] | None = None,
                 scales: Sequence[str] = SCALES) -> str:
    """The table of ``figures`` (ids such as ``["8", "thesis"]``; default every figure): each one's
    id, what it shows and, at each of ``scales`` (smoke and paper), its runs, their FLOPs, the
    estimated time on this CPU and on the planned device (``device=cuda`` among the overrides, or
    this machine's GPU: at ``rate`` FLOP/s (a number or ``"60T"``) or the rate measured here) and
    the largest run's memory there, then a total row and a line on the rates used; the composed
    configs changed by ``overrides`` (``["dataset.test_only=true"]``). Kept in the cache folder and
    read back while nothing it depends on changed."""
    overrides, figures, scales = list(overrides), list(figures or []), list(scales)
    for scale in scales:
        if scale not in SCALES:
            raise ConfigError("scale", scale, "smoke or paper (or nothing for both)")
    asked = overrides + [f"figures={','.join(figures)}", f"scales={','.join(scales)}"]
    path = cache_dir() / f"list-{_cache_key(asked, rate)}.txt"
    try:
        return path.read_text()
    except OSError:
        pass
    text = _table(overrides, rate, figures, scales)
    path = cache_dir() / f"list-{_cache_key(asked, rate)}.txt"   # a probe may have just saved a rate
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError:
        pass
    return text

