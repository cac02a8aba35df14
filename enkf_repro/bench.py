"""``enkf-repro bench``: time one EnKF iteration of the paper CNN against the hardware and a naive loop.

For each device, in one process: first a dense GEMM rate (the roofline reference), then for each
forward precision and ensemble size J one full iteration (batched, chunked forward of all
members on a batch of 64 + the sequential update), as the median of several repeats after a
warm-up, with device synchronisation on GPU; forward, update and the full iteration are timed
interleaved in every repeat from the same starting ensemble. One row times an EKI step of the
dense DNN 2 at J = 2000 (Kovachki & Stuart's setting; 500 on CPU, ``--eki-J``). The naive baseline is the published
code's way: load each member's weights into one nn.Module, forward, repeat; then the update
sample by sample with explicit covariance matrices (``optim.enkf.enkf_update_reference``). It
is warmed up first, measured at J <= ``--naive-J`` (1000 on GPU) or while within the time budget,
and extrapolated linearly in J beyond (marked ``~``). GFLOP/s count the cost model of
``runs/cost.py`` (forward J*B*0.95 MFLOP, update 4*J*d*P), whatever the implementation does
(when J < d our update forms a J x J matrix and does fewer operations). ``--epoch`` times a
fraction of one 60,000-image epoch at J = 5000 (``--epoch-J``) (7504 iterations with 16 evaluations of the
mean network on 10,000 test images) and extrapolates it, marked so. The achieved rate is
remembered for the cost estimates of ``list`` and ``reproduce``.
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

from .models.dense import DenseSpec
from .models.ensemble import EnsembleForward
from .models.paper_cnn import PaperCNNSpec
from .optim.eki import eki_step_
from .optim.enkf import enkf_update_, enkf_update_reference
from .runs.cost import describe, gemm_rate, save_rate, sync, timed

CPU_SIZES = (100, 500, 1000)
GPU_SIZES = (1000, 5000, 10000, 20000)
EPOCH_ITERATIONS, EPOCH_EVALS, TEST_IMAGES = 7504, 16, 10000


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


def host_times(fns, device: torch.device, repeats: int, before=None) -> list[float]:
    """Median time in seconds until each of ``fns`` returns, the device idle at the call (work
    is queued asynchronously on a GPU, so this is the host's share unless the call waits for
    the device inside, e.g. to read a Cholesky factorisation's status); ``before()`` untimed."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            if before is not None:
                before()
            sync(device)
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
            sync(device)
    return [statistics.median(t) for t in times]


def forward_error(forward, spec, U: torch.Tensor, x: torch.Tensor, members: int = 64) -> float:
    """Normwise error (max |got - ref| / max |ref|) of the engine's forward on the first
    ``members`` members against the PyTorch path in float64."""
    W = U[:members]
    with torch.no_grad():
        got = forward(W, x).double()
        ref = spec.forward_chunk(W.double(), spec.prepare(x.double()))
    return ((got - ref).abs().max() / ref.abs().max()).item()


def update_error(U0: torch.Tensor, U1: torch.Tensor, G: torch.Tensor, Y: torch.Tensor, columns: int = 1024) -> float:
    """Normwise error of the update's increment U1 - U0 on the first ``columns`` parameters
    against the same update (same outputs G) in float64: the update acts on each column
    separately, so a column slice is exact."""
    c = min(columns, U0.shape[1])
    ref = enkf_update_(U0[:, :c].double().clone(), G.double(), Y.double(), 0.01, "sequential") - U0[:, :c].double()
    got = U1[:, :c].double() - U0[:, :c].double()
    scale = ref.abs().max().item()
    diff = (got - ref).abs().max().item()
    return diff / scale if scale > 0 else diff     # one member: no spread, no increment


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


class Naive:
    """The naive loop's times per member (forward, update): measured after a warm-up at J, or at the
    largest J <= ``max_J`` (the whole J on CPU) that fits the time budget, and extrapolated
    linearly in J beyond (both loops are linear in J)."""

    def __init__(self, spec, x, Y, device, budget: float, max_J: int | None):
        self.spec, self.x, self.Y, self.device = spec, x, Y, device
        self.budget, self.max_J = budget, max_J
        self.estimate: float | None = None       # seconds per member, forward, from a few members
        self.per_member = (0.0, 0.0)
        self.measured_J = 0

    def times(self, U0: torch.Tensor, G: torch.Tensor) -> tuple[float, float, bool]:
        """(forward s, update s, extrapolated?) of the naive loop for the ensemble U0."""
        J = U0.shape[0]
        if self.estimate is None:
            naive_forward(self.spec, U0[:4], self.x)   # warm-up: first CUDA calls, allocator
            t0 = time.perf_counter()
            naive_forward(self.spec, U0[:8], self.x)
            sync(self.device)
            self.estimate = (time.perf_counter() - t0) / 8
        cap = J if self.max_J is None else min(J, self.max_J)
        n = min(cap, max(8, int(self.budget / (3 * self.estimate))))   # update ~ twice the forward
        if n > self.measured_J:
            W, Gn = U0[:n], G[:n]
            t_f = timed(lambda: naive_forward(self.spec, W, self.x), self.device, 1, warmup=0)
            V = W.clone()
            t_u = timed(lambda: enkf_update_reference(V, Gn, self.Y, 0.01), self.device, 1, warmup=0)
            self.per_member, self.measured_J = (t_f / n, t_u / n), n
        f, u = self.per_member
        return f * J, u * J, self.measured_J != J


def bench_size(J: int, spec, forward, x, Y, device, repeats: int, rate: float, mem, naive: Naive | None,
               update_precision: str = "fp32") -> dict:
    """One row of the table: the timings of one ensemble size J."""
    from .models.ensemble import precision_scope

    batch, C = x.shape[0], Y.shape[1]
    P, d = spec.num_params, batch * C
    U0 = torch.randn(J, P, device=device) * 0.1   # the starting ensemble, kept aside
    mem.reset()
    U = U0.clone()
    G = forward(U, x)

    def update():
        with precision_scope(update_precision, device):
            enkf_update_(U, G, Y, 0.01, "sequential")

    def iteration():
        G2 = forward(U, x)
        with precision_scope(update_precision, device):
            enkf_update_(U, G2, Y, 0.01, "sequential")

    # forward, update and full iteration interleaved in every repeat, so a change in the
    # machine's load hits all three alike (medians are then comparable: forward <= total)
    t_fwd, t_upd, t_tot = timed_together([lambda: forward(U, x), update, iteration], device, repeats,
                                         before=lambda: U.copy_(U0))
    peak = mem.peak_bytes()
    chunk = forward.chunk_for(batch)       # before forward_error's smaller call below
    h_fwd, h_tot = host_times([lambda: forward(U, x), iteration], device, repeats, before=lambda: U.copy_(U0))
    U.copy_(U0)
    update()
    upd_err = update_error(U0, U, G, Y)
    fwd_err = forward_error(forward, spec, U0, x)
    flops = J * batch * spec.forward_flops() + 4.0 * J * d * P
    route = forward.kernel if forward.kernel == "torch" else f"triton {forward.fused_mode}"
    row = {"what": f"paper_cnn {forward.precision}", "J": J, "chunk": chunk, "route": route,
           "fwd_ms": t_fwd * 1e3, "fwd_host_ms": h_fwd * 1e3, "upd_ms": t_upd * 1e3, "tot_ms": t_tot * 1e3,
           "tot_host_ms": h_tot * 1e3, "fwd_err": fwd_err, "upd_err": upd_err, "update_precision": update_precision,
           "img_s": J * batch / t_fwd, "gflops": flops / t_tot / 1e9, "roofline": flops / t_tot / rate,
           "peak_mb": peak / 2 ** 20, "ensemble_mb": U.numel() * 4 / 2 ** 20}
    if naive is not None:
        t_nf, t_nu, extrapolated = naive.times(U0, G)
        row.update(naive_fwd_ms=t_nf * 1e3, naive_tot_ms=(t_nf + t_nu) * 1e3, speedup_fwd=t_nf / t_fwd,
                   speedup_tot=(t_nf + t_nu) / t_tot, naive_extrapolated=extrapolated)
    return row


def bench_eki(device, repeats: int, rate: float, mem, J: int = 2000, batch: int = 64) -> dict:
    """One EKI step (forward + Kovachki-Stuart update) of the dense DNN 2 (784-128-10) at J."""
    spec = DenseSpec("dnn2", [128])
    forward = EnsembleForward(spec, device=device)
    x = torch.rand(batch, 1, 28, 28, device=device)
    Y = F.one_hot(torch.randint(0, 10, (batch,), device=device), 10).float()
    U0 = torch.randn(J, spec.num_params, device=device) * 0.05
    mem.reset()
    U = U0.clone()
    G = torch.softmax(forward(U, x), -1)
    t_fwd, t_upd, t_tot = timed_together(
        [lambda: forward(U, x), lambda: eki_step_(U, G, Y, loss="cross_entropy"),
         lambda: eki_step_(U, torch.softmax(forward(U, x), -1), Y, loss="cross_entropy")],
        device, repeats, before=lambda: U.copy_(U0))
    flops = J * batch * spec.forward_flops() + 4.0 * J * batch * 10 * spec.num_params
    return {"what": "EKI dnn2", "J": J, "chunk": forward.chunk_for(batch), "route": forward.kernel,
            "fwd_ms": t_fwd * 1e3, "upd_ms": t_upd * 1e3, "tot_ms": t_tot * 1e3, "img_s": J * batch / t_fwd,
            "gflops": flops / t_tot / 1e9, "roofline": flops / t_tot / rate, "peak_mb": mem.peak_bytes() / 2 ** 20,
            "ensemble_mb": U.numel() * 4 / 2 ** 20}


def bench_epoch(device, forward, spec, fraction: float, J: int = 5000, batch: int = 64) -> dict:
    """A fraction of one 60,000-image epoch at J (7504 iterations, r = 8, 16 evaluations of the
    mean network on 10,000 test images), extrapolated to the whole epoch."""
    n = max(8, int(round(fraction * EPOCH_ITERATIONS)))
    evals = max(1, int(round(fraction * EPOCH_EVALS)))
    U = torch.randn(J, spec.num_params, device=device) * 0.1
    test = torch.rand(TEST_IMAGES, 1, 28, 28, device=device)
    labels = torch.randint(0, 10, (TEST_IMAGES,), device=device)
    x = torch.rand(batch, 1, 28, 28, device=device)
    Y = F.one_hot(torch.randint(0, 10, (batch,), device=device), 10).float()
    forward(U, x)   # warm-up, chunk probe
    sync(device)
    t0 = time.perf_counter()
    for it in range(n):
        if it % 8 == 0:
            x = torch.rand(batch, 1, 28, 28, device=device)
        enkf_update_(U, forward(U, x), Y, 0.01, "sequential")
    sync(device)
    t_it = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(evals):
        spec.evaluate(U.mean(0), test, labels, 2000)
    sync(device)
    t_eval = (time.perf_counter() - t0) / evals
    return {"J": J, "iterations_timed": n, "evals_timed": evals, "ms_per_iteration": t_it * 1e3,
            "s_per_eval": t_eval, "epoch_s": t_it * EPOCH_ITERATIONS + t_eval * EPOCH_EVALS,
            "extrapolated": n < EPOCH_ITERATIONS}


def bench_device(device: torch.device, sizes, repeats: int, naive_budget: float, precisions, chunk_size,
                 batch: int, compile: bool, kernel: str, update_precision: str, eki_J: int, epoch: float | None,
                 epoch_J: int, naive_J: int | None, say, jsonl: str | None = None) -> dict:
    torch.manual_seed(0)
    spec = PaperCNNSpec("logistic")
    x = torch.rand(batch, 1, 28, 28, device=device)
    Y = F.one_hot(torch.randint(0, 10, (batch,), device=device), 10).float()
    mem = PeakMemory(device)
    rates, rows = {}, []
    naive = Naive(spec, x, Y, device, naive_budget, naive_J)
    for precision in precisions:
        rates[precision] = rate = gemm_rate(device, precision)
        say(f"{device.type}: dense GEMM {rate / 1e9:.1f} GFLOP/s ({precision})")
        forward = EnsembleForward(spec, chunk_size, precision, compile, device, kernel)
        for J in sizes:
            rows.append(bench_size(J, spec, forward, x, Y, device, repeats, rate, mem,
                                   naive if precision == precisions[0] else None, update_precision))
            _append_jsonl(jsonl, {"device": describe(device), **rows[-1]})
            say(f"  {precision} J={J}: {rows[-1]['tot_ms']:.1f} ms per iteration "
                f"({rows[-1]['tot_host_ms']:.1f} ms on the host; {rows[-1]['route']})")
    if eki_J:
        rows.append(bench_eki(device, repeats, rates[precisions[0]], mem, eki_J))
        _append_jsonl(jsonl, {"device": describe(device), **rows[-1]})
        say(f"  EKI dnn2 J={eki_J}: {rows[-1]['tot_ms']:.1f} ms per step")
    epoch_row = None
    if epoch:
        forward = EnsembleForward(spec, chunk_size, precisions[0], compile, device, kernel)
        epoch_row = bench_epoch(device, forward, spec, epoch, epoch_J)
        epoch_row["precision"] = precisions[0]
        _append_jsonl(jsonl, {"device": describe(device), "what": "epoch", **epoch_row})
        say(f"  epoch at J={epoch_J}: {epoch_row['epoch_s']:.0f} s")
    routes = sorted({r["route"] for r in rows if r["what"].startswith("paper_cnn")})
    return {"device": describe(device), "kernel": ", ".join(routes) or kernel, "batch": batch,
            "gemm_gflops": {p: r / 1e9 for p, r in rates.items()}, "update_precision": update_precision,
            "rows": rows, "epoch": epoch_row}


def _append_jsonl(path: str | None, row: dict) -> None:
    """One JSON line per measurement, written as soon as it is measured."""
    if path:
        import json

        with open(path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")


HEADER = ("| what | J | chunk | route | forward ms (host) | update ms | total ms (host) | forward error | "
          "update error | member-images/s | GFLOP/s (cost model) | % of GEMM | peak MB added (ensemble MB) | "
          "naive fwd / total ms | speedup fwd / total |")
COLUMNS = 15


def _ms(r: dict, key: str) -> str:
    host = r.get(key.replace("_ms", "_host_ms"))
    return f"{r[key]:.1f}" + (f" ({host:.1f})" if host is not None else "")


def _err(r: dict, key: str) -> str:
    return f"{r[key]:.1e}" if r.get(key) is not None else "-"


def format_row(r: dict) -> str:
    if "naive_fwd_ms" in r:
        mark = "~" if r.get("naive_extrapolated") else ""
        naive = (f"{mark}{r['naive_fwd_ms']:.0f} / {mark}{r['naive_tot_ms']:.0f} | "
                 f"{mark}{r['speedup_fwd']:.1f}x / {mark}{r['speedup_tot']:.1f}x")
    else:
        naive = "- | -"
    return (f"| {r['what']} | {r['J']} | {r['chunk']} | {r.get('route', '-')} | {_ms(r, 'fwd_ms')} | "
            f"{r['upd_ms']:.1f} | {_ms(r, 'tot_ms')} | {_err(r, 'fwd_err')} | {_err(r, 'upd_err')} | "
            f"{r['img_s']:.3g} | {r['gflops']:.1f} | {100 * r['roofline']:.0f} % | "
            f"{r['peak_mb']:.0f} ({r['ensemble_mb']:.0f}) | {naive} |")


def table(result: dict) -> str:
    gemm = ", ".join(f"{v:.1f} ({k})" for k, v in result["gemm_gflops"].items())
    lines = [f"**{result['device']}**: dense GEMM GFLOP/s {gemm}; forward kernel {result['kernel']}, update "
             f"{result['update_precision']}; batch {result.get('batch', 64)}, paper_cnn (P = 18,050), sequential "
             "update. Host: time until "
             "the call returns. Errors: normwise against float64 (forward: 64 members; update: its increment on "
             "1024 parameters, same outputs)", "", HEADER, "|" + " --- |" * COLUMNS]
    lines += [format_row(r) for r in result["rows"]]
    if any(r.get("naive_extrapolated") for r in result["rows"]):
        lines += ["", "~: the naive loop measured at a smaller J and extrapolated linearly in J."]
    e = result.get("epoch")
    if e:
        mark = ("extrapolated from " + f"{e['iterations_timed']} iterations and {e['evals_timed']} evaluations"
                if e["extrapolated"] else "measured")
        lines += ["", f"One 60,000-image epoch at J = {e['J']} (7504 iterations, 16 evaluations on 10,000 test "
                  f"images): {e['epoch_s']:.0f} s ({e['ms_per_iteration']:.1f} ms per iteration, "
                  f"{e['s_per_eval']:.2f} s per evaluation; {mark})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="enkf-repro bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda, or auto (CPU, plus CUDA when present)")
    ap.add_argument("--sizes", default=None, help="comma-separated J values (default: 100,500,1000 on CPU; "
                                                 "1000,5000,10000,20000 on GPU)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per row after a warm-up; the median (3)")
    ap.add_argument("--naive-budget", type=float, default=40.0,
                    help="seconds the naive baseline may take per size on CPU (extrapolated above)")
    ap.add_argument("--naive-J", type=int, default=None,
                    help="measure the naive loop at most at this J, extrapolate beyond (default 1000 on GPU)")
    ap.add_argument("--precisions", default=None,
                    help="forward precisions, comma-separated (default: fp32 on CPU; fp32,tf32,bf16 on GPU)")
    ap.add_argument("--precision", default=None, help=argparse.SUPPRESS)   # the former single-precision flag
    ap.add_argument("--update-precision", default="fp32", choices=["fp32", "tf32"],
                    help="the update's large GEMMs: IEEE fp32 or TensorFloat-32 tensor cores (fp32)")
    ap.add_argument("--kernel", default="auto", choices=["auto", "triton", "torch"],
                    help="the forward: fused Triton kernels, the PyTorch path, or auto (Triton on CUDA when it "
                         "matches the PyTorch path)")
    ap.add_argument("--chunk-size", type=int, default=None,
                    help="members per batched forward call (default: 16 on CPU, timed on CUDA)")
    ap.add_argument("--batch", type=int, default=64, help="images per mini-batch B (64, the paper's)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the per-chunk forward")
    ap.add_argument("--eki-J", type=int, default=None,
                    help="J of the EKI dnn2 row (default 2000 on GPU, 500 on CPU; 0 skips it)")
    ap.add_argument("--epoch", nargs="?", type=float, const=-1.0, default=None, metavar="FRACTION",
                    help="also time one epoch (a fraction of it, extrapolated: default 0.1 on GPU, 0.002 on CPU)")
    ap.add_argument("--epoch-J", type=int, default=5000, help="J of the epoch timing (5000)")
    ap.add_argument("--markdown", default=None, help="also write the tables to this Markdown file")
    ap.add_argument("--jsonl", default=None, help="append each row to this file as a JSON line as soon as measured")
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
        gpu = dev.type == "cuda"
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (GPU_SIZES if gpu else CPU_SIZES)
        precisions = (args.precisions or args.precision or ("fp32,tf32,bf16" if gpu else "fp32")).split(",")
        epoch = None if args.epoch is None else (args.epoch if args.epoch > 0 else (0.1 if gpu else 0.002))
        naive_J = args.naive_J if args.naive_J is not None else (1000 if gpu else None)
        eki_J = args.eki_J if args.eki_J is not None else (2000 if gpu else 500)
        result = bench_device(dev, sizes, args.repeats, args.naive_budget, precisions, args.chunk_size, args.batch,
                              args.compile, args.kernel, args.update_precision, eki_J, epoch, args.epoch_J, naive_J,
                              say, args.jsonl)
        results.append(result)
        cnn = [r for r in result["rows"] if r["what"].startswith("paper_cnn")]
        if cnn:
            save_rate(dev.type, statistics.median(r["gflops"] for r in cnn) * 1e9, "enkf-repro bench",
                      device=result["device"])
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
