"""``enkf-repro bench``: time one EnKF iteration of the paper CNN against the hardware and a naive loop.

For each device, in one process: first a dense GEMM rate (the roofline reference), then for each
ensemble size J one full iteration (batched, chunked forward of all members on a batch of 64 +
the sequential update), as the median of several repeats after a warm-up, with device
synchronisation on GPU. The naive baseline is the published code's way: load each member's
weights into one nn.Module, forward, repeat; then the update sample by sample with explicit
covariance matrices (``optim.enkf.enkf_update_reference``). GFLOP/s count the cost model of
``runs/cost.py`` (forward J*B*0.95 MFLOP, update 4*J*d*P), whatever the implementation does
(when J < d our update forms a J x J matrix and does fewer operations).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .models.ensemble import EnsembleForward
from .models.paper_cnn import PaperCNNSpec
from .optim.enkf import enkf_update_, enkf_update_reference
from .runs.cost import describe, gemm_rate, sync, timed

CPU_SIZES = (100, 500, 1000)
GPU_SIZES = (1000, 5000, 10000, 20000)


def timed_together(fns, device: torch.device, repeats: int, before=None, warmup: int = 1) -> list[float]:
    """Median wall time in seconds of each of ``fns``, called in turn within every repeat (after
    ``warmup`` rounds); ``before()`` runs untimed before each call."""
    times: list[list[float]] = [[] for _ in fns]
    for k in range(warmup + repeats):
        for i, fn in enumerate(fns):
            if before is not None:
                before()
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if k >= warmup:
                times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def _status_kb(field: str) -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("nan")


class PeakMemory:
    """Memory a block adds at its peak: the CUDA allocator's peak, or on CPU the process's peak
    RSS (Linux VmHWM, reset through /proc/self/clear_refs) minus its RSS at the reset."""

    def __init__(self, device: torch.device):
        self.device = device
        self.base = 0.0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = float(torch.cuda.memory_allocated(self.device))
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        self.base = _status_kb("VmRSS")

    def peak_bytes(self) -> float:
        if self.device.type == "cuda":
            return float(torch.cuda.max_memory_allocated(self.device)) - self.base
        return _status_kb("VmHWM") - self.base


def naive_forward(spec: PaperCNNSpec, U: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The published code's forward: one nn.Module, weights loaded member by member."""
    net = spec.module().to(U.device)
    out = []
    with torch.no_grad():
        for theta in U:
            torch.nn.utils.vector_to_parameters(theta, net.parameters())
            out.append(net(x))
    return torch.stack(out)


def bench_size(J: int, spec, forward, x, Y, device, repeats: int, naive_budget: float, rate: float, mem,
               naive: dict) -> dict:
    """One row of the table: the timings of one ensemble size J (``naive`` caches the naive
    loop's cost per member across sizes)."""
    batch, C = x.shape[0], Y.shape[1]
    P, d = spec.num_params, batch * C
    U0 = torch.randn(J, P, device=device) * 0.1   # the starting ensemble, kept aside
    mem.reset()
    U = U0.clone()
    G = forward(U, x)

    # forward, update and full iteration interleaved in every repeat, so a change in the
    # machine's load hits all three alike (medians are then comparable: forward <= total)
    t_fwd, t_upd, t_tot = timed_together(
        [lambda: forward(U, x), lambda: enkf_update_(U, G, Y, 0.01, "sequential"),
         lambda: enkf_update_(U, forward(U, x), Y, 0.01, "sequential")],
        device, repeats, before=lambda: U.copy_(U0))
    peak = mem.peak_bytes()
    flops_fwd = J * batch * spec.forward_flops()
    flops_upd = 4.0 * J * d * P
    row = {"J": J, "chunk": forward.chunk_for(batch), "fwd_ms": t_fwd * 1e3, "upd_ms": t_upd * 1e3,
           "tot_ms": t_tot * 1e3, "img_s": J * batch / t_fwd, "gflops": (flops_fwd + flops_upd) / t_tot / 1e9,
           "roofline": (flops_fwd + flops_upd) / t_tot / rate, "peak_mb": peak / 2 ** 20,
           "ensemble_mb": U.numel() * 4 / 2 ** 20}
    if "member_s" not in naive:  # estimate the naive cost per member from a few members
        t0 = time.perf_counter()
        naive_forward(spec, U0[:8], x)
        sync(device)
        naive["member_s"] = (time.perf_counter() - t0) / 8
    if naive["member_s"] * J * 2 <= naive_budget:
        n_rep = 3 if naive["member_s"] * J * 6 <= naive_budget else 1
        t_nf = timed(lambda: naive_forward(spec, U0, x), device, n_rep, warmup=0)
        V = U0.clone()
        t_nu = timed(lambda: enkf_update_reference(V, G, Y, 0.01), device, n_rep, warmup=0)
        row.update(naive_fwd_ms=t_nf * 1e3, naive_tot_ms=(t_nf + t_nu) * 1e3,
                   speedup_fwd=t_nf / t_fwd, speedup_tot=(t_nf + t_nu) / t_tot)
    return row


def bench_device(device: torch.device, sizes, repeats: int, naive_budget: float, precision: str,
                 chunk_size: int | None, batch: int, compile: bool, say) -> dict:
    torch.manual_seed(0)
    spec = PaperCNNSpec("logistic")
    C = 10
    rate = gemm_rate(device, precision)
    say(f"{device.type}: dense GEMM {rate / 1e9:.1f} GFLOP/s ({precision})")
    x = torch.rand(batch, 1, 28, 28, device=device)
    Y = F.one_hot(torch.randint(0, C, (batch,), device=device), C).float()
    forward = EnsembleForward(spec, chunk_size, precision, compile, device)
    mem = PeakMemory(device)
    rows, naive = [], {}
    for J in sizes:
        row = bench_size(J, spec, forward, x, Y, device, repeats, naive_budget, rate, mem, naive)
        rows.append(row)
        say(format_row(row))
    return {"device": describe(device), "gemm_gflops": rate / 1e9, "precision": precision, "rows": rows}


HEADER = ("| J | chunk | forward ms | update ms | total ms | member-images/s | GFLOP/s (cost model) | "
          "% of GEMM | peak MB added (ensemble MB) | naive fwd / total ms | speedup fwd / total |")


def format_row(r: dict) -> str:
    naive = (f"{r['naive_fwd_ms']:.0f} / {r['naive_tot_ms']:.0f} | {r['speedup_fwd']:.1f}x / {r['speedup_tot']:.1f}x"
             if "naive_fwd_ms" in r else "not run (over the time budget) | -")
    return (f"| {r['J']} | {r['chunk']} | {r['fwd_ms']:.1f} | {r['upd_ms']:.1f} | {r['tot_ms']:.1f} | "
            f"{r['img_s']:.3g} | {r['gflops']:.1f} | {100 * r['roofline']:.0f} % | "
            f"{r['peak_mb']:.0f} ({r['ensemble_mb']:.0f}) | {naive} |")


def table(result: dict) -> str:
    lines = [f"**{result['device']}**: dense GEMM {result['gemm_gflops']:.1f} GFLOP/s "
             f"({result['precision']}), batch 64, paper_cnn (P = 18,050), sequential update", "", HEADER,
             "|" + " --- |" * 11]
    lines += [format_row(r) for r in result["rows"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="enkf-repro bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda, or auto (CPU, plus CUDA when present)")
    ap.add_argument("--sizes", default=None, help="comma-separated J values (default: 100,500,1000 on CPU; "
                                                 "1000,5000,10000,20000 on GPU)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-budget", type=float, default=40.0,
                    help="seconds the naive baseline may take per size (it is skipped above)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--compile", action="store_true", help="torch.compile the per-chunk forward")
    ap.add_argument("--markdown", default=None, help="also write the tables to this Markdown file")
    args = ap.parse_args(argv)

    devices = []
    if args.device in ("auto", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if args.device == "cuda" and not torch.cuda.is_available():
        print("enkf-repro bench: error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    results = []
    for dev in devices:
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (
            CPU_SIZES if dev.type == "cpu" else GPU_SIZES)
        results.append(bench_device(dev, sizes, args.repeats, args.naive_budget, args.precision,
                                    args.chunk_size, args.batch, args.compile, say))
    command = "enkf-repro bench " + " ".join(argv if argv is not None else sys.argv[1:])
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = f"Measured {stamp} with `{command.strip()}` (torch {torch.__version__}).\n\n"
    text += "\n\n".join(table(r) for r in results) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
