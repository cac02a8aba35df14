#!/usr/bin/env python
"""Time the fused Triton forward of the paper's CNN against the PyTorch path, on CUDA.

For each ensemble size J and precision: the PyTorch path (``EnsembleForward`` over
``PaperCNNSpec.forward_chunk``, its own chunking) and the Triton path
(``enkf_repro.models.kernels.paper_cnn_triton.forward``) at several chunk sizes (h budgets), on one
batch of 64 images. Before any timing, every Triton output is checked against the PyTorch
path in fp32 (normwise max relative error; tolerance ``K.TOLERANCE``: 1e-5 fp32 and
tf32x3, for which the PyTorch column is its fp32 path, 5e-3 tf32, 2e-2 bf16) and a
failure is reported in the table and by the exit status. Times are medians of repeated calls,
each bracketed by torch.cuda.synchronize(). Before timing a precision, every kernel
configuration is timed on one chunk (``paper_cnn_triton.tune``) and the fastest is used.

    python scripts/bench_kernels.py                      # J = 1000, 5000, 10000, 20000 on CUDA
    python scripts/bench_kernels.py --markdown bench.md  # also write the table to a file
    python scripts/bench_kernels.py --smoke              # tiny shapes, CPU, Triton interpreter

Runs in about a minute or two on one H100/H200-class GPU (the PyTorch path at J = 20000
dominates). ``--smoke`` only checks that the script works (the times mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

if "--smoke" in sys.argv:                      # the interpreter must be on before triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from enkf_repro.models import PaperCNNSpec  # noqa: E402
from enkf_repro.models.ensemble import EnsembleForward  # noqa: E402
from enkf_repro.models.kernels import paper_cnn_triton as K  # noqa: E402

TOL = K.TOLERANCE
# the PyTorch path's mode to compare each Triton precision with
TORCH_PRECISION = {"fp32": "fp32", "tf32": "tf32", "bf16": "bf16", "tf32x3": "fp32"}


def members(n: int, pool_conv2: bool, device) -> torch.Tensor:
    """(n, P) fp32 members with per-layer scales that keep the activations in their working range."""
    g = torch.Generator(device=device).manual_seed(0)
    parts = [torch.randn(n, 250, generator=g, device=device) * 0.3,
             torch.randn(n, 5000, generator=g, device=device) * 0.1,
             torch.randn(n, 10 * K.flat_features(pool_conv2), generator=g, device=device) * 0.1]
    return torch.cat(parts, 1)


def rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, device, max_repeats: int, seconds: float, min_repeats: int = 3) -> float:
    """Median wall time of fn() in ms; fn has run at least once before (compiled, warm)."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t
    n = max(min_repeats, min(max_repeats, int(seconds / max(first, 1e-6))))
    times = []
    for _ in range(n):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--J", default="1000,5000,10000,20000", help="ensemble sizes (comma-separated)")
    ap.add_argument("--precisions", default="fp32,tf32,bf16,tf32x3")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--activation", default="logistic", choices=K.ACTIVATIONS)
    ap.add_argument("--pool-conv2", action="store_true")
    ap.add_argument("--budgets", default="16,48,256",
                    help="h budgets per chunk in MiB for the Triton path (comma-separated)")
    ap.add_argument("--repeats", type=int, default=20, help="most timed calls per cell")
    ap.add_argument("--seconds", type=float, default=1.0, help="about this much timing per cell")
    ap.add_argument("--no-tune", action="store_true", help="use the default kernel configurations")
    ap.add_argument("--markdown", type=Path, help="also write the table to this file")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny shapes on the CPU with Triton's interpreter: checks the script, not speed")
    args = ap.parse_args(argv)

    if args.smoke:
        device = torch.device("cpu")
        Js, B, budgets = [5], 3, [2 * 3 * K.H_PER_IMAGE * 4 / 2**20]   # 2 members per chunk (fp32)
        args.repeats, args.seconds, args.no_tune = 1, 0.0, True
        min_repeats = 1
    else:
        if not torch.cuda.is_available():
            print("bench_kernels.py needs a CUDA device (or --smoke to check the script on CPU)")
            return 2
        device = torch.device("cuda")
        Js, B = [int(j) for j in args.J.split(",")], args.batch
        budgets = [float(b) for b in args.budgets.split(",")]
        min_repeats = 3
    precisions = args.precisions.split(",")
    if not K.available():
        print("Triton is not available (not installed, or no CUDA device)")
        return 2

    import triton

    spec = PaperCNNSpec(args.activation, args.pool_conv2)
    U_all = members(max(Js), args.pool_conv2, device)
    x = torch.rand(B, 1, 28, 28, generator=torch.Generator(device=device).manual_seed(1), device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"
    lines = [
        f"Fused Triton forward vs PyTorch path, paper_cnn ({args.activation}, "
        f"pool_conv2={args.pool_conv2}), batch {B}",
        "",
        f"- device: {name}",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- torch {torch.__version__}, triton {triton.__version__}",
        f"- command: `python scripts/bench_kernels.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "- times: median ms of one forward of all J members (synchronized); errors: normwise max "
        "relative error against the PyTorch path in fp32 (its column for tf32x3 is that fp32 path)",
        "",
    ]
    if not args.no_tune:
        for p in precisions:
            t = K.tune(U_all, x, args.activation, args.pool_conv2, p)
            times = ", ".join(f"{n} {ms:.3f}" for n, ms in {**t.get("conv1", {}), **t.get("conv2", {})}.items())
            failed = "; ".join(f"{n}: {why}" for n, why in t["failed"].items())
            lines.append(f"- tuning ({p}, one chunk of {t['members']} members), ms: {times}; "
                         f"using {' + '.join(t['best'] or ('defaults',))}" + (f"; failed: {failed}" if failed else ""))
        lines.append("")
    cols = " | ".join(f"Triton ms, h {b:g} MiB chunks" for b in budgets)
    lines += [f"| J | precision | PyTorch ms | {cols}"
              + " | speedup | Triton error | PyTorch error | check |",
              "|" + " --- |" * (7 + len(budgets))]
    print("\n".join(lines), flush=True)

    failed = False
    for J in Js:
        U = U_all[:J]
        torch_runs = {}                             # PyTorch precision -> (output, median ms)
        for q in ["fp32"] + sorted({TORCH_PRECISION[p] for p in precisions} - {"fp32"}):
            fwd = EnsembleForward(spec, None, q, device=device)
            out = fwd(U, x)
            torch_runs[q] = (out, median_ms(lambda fwd=fwd, U=U: fwd(U, x), device, args.repeats,
                                            args.seconds, min_repeats))
        ref = torch_runs["fp32"][0]
        for p in precisions:
            out_torch, t_torch = torch_runs[TORCH_PRECISION[p]]
            chunks = [K.recommended_chunk(B, p, int(b * 2**20)) for b in budgets]
            # check first (this also compiles and warms up)
            err = max(rel(K.forward(U, x, args.activation, args.pool_conv2, p, chunk=cs), ref)
                      for cs in chunks)
            ok = err < TOL[p]
            failed |= not ok
            t_tri = [median_ms(lambda cs=cs, U=U, p=p: K.forward(U, x, args.activation, args.pool_conv2, p, chunk=cs),
                               device, args.repeats, args.seconds, min_repeats) for cs in chunks]
            row = (f"| {J} | {p} | {t_torch:.2f} | "
                   + " | ".join(f"{t:.2f} ({cs})" for t, cs in zip(t_tri, chunks))
                   + f" | {t_torch / min(t_tri):.1f}x | {err:.1e} | {rel(out_torch, ref):.1e} | "
                   + ("ok" if ok else f"FAIL (tol {TOL[p]:g})") + " |")
            lines.append(row)
            print(row, flush=True)
        del torch_runs, ref
    lines += ["", "Triton cells: median ms (members per chunk)."]
    print(lines[-1])
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
