#!/usr/bin/env python
"""The steps of scripts/gpu_check.sh, one subcommand each, every result written to OUT as soon as
it is measured:

    env       OUT/env.txt         versions, the GPU, what Triton's launcher needs, the gate's verdict
    accuracy  OUT/accuracy.jsonl  fused vs PyTorch vs float64 forward at J = 64 and 5000, per precision
    bench     OUT/bench.jsonl     enkf-repro bench rows at J = 1000, 5000, 20000 per precision (forward,
                                  update, iteration, host times, errors), the naive loop at J = 1000,
                                  one epoch at J = 5000 (a measured fraction, extrapolated)
    profile   OUT/profile.txt     torch.profiler table of one J = 5000 iteration per precision
    summary   OUT/SUMMARY.md      step status, versions, test counts, tables, each GPU target met or missed

``--dry-run`` runs every step on the CPU at tiny sizes with the kernels in Triton's interpreter
(sizes stand in for the real ones; nothing is a measurement: every target is "not measured").
The summary reads only the files, imports no torch, and can run after any step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PRECISIONS = ("fp32", "tf32", "bf16")
BATCH = 64
# the real sizes, and what stands in for them in a dry run
ACCURACY_J = {"real": (64, 5000), "dry": (2, 4)}
BENCH_J = {"real": (1000, 5000, 20000), "dry": (1, 2, 3)}
DRY_BATCH = 4

# GPU targets (H200): name -> description
TARGETS = [
    ("fp32_5000", "a J = 5000 iteration <= 12 ms at fp32 accuracy (forward error <= 1e-5)"),
    ("tf32_5000", "a J = 5000 iteration <= 5 ms at tf32"),
    ("scaling", "J = 20000 <= 4.2x J = 5000 (fp32 and tf32 iterations)"),
    ("naive", ">= 30x the per-member loop at J = 1000 (full iteration, fp32)"),
    ("epoch", "one 60,000-image epoch of Figure 8 (7,500 iterations at J = 5000, fp32) <= 90 s"),
]


def _setup(dry: bool):
    """Device, sizes and kernel choice of a run (the interpreter must be on before Triton loads)."""
    if dry:
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    device = torch.device("cpu" if dry else "cuda")
    if not dry and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py: no CUDA device visible (use --dry-run on a machine without one)")
    return torch, device


def _append(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")


# -- env -------------------------------------------------------------------------------------

def step_env(out: Path, dry: bool) -> None:
    lines = []

    def say(line: str) -> None:
        lines.append(line)
        (out / "env.txt").write_text("\n".join(lines) + "\n")

    say(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    say(f"mode: {'dry run (CPU, Triton interpreter, tiny sizes)' if dry else 'GPU'}")
    say(f"python: {platform.python_version()} ({sys.executable})")
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        say(f"nvidia-smi: {smi.stdout.strip() or smi.stderr.strip()}")
    except (OSError, subprocess.TimeoutExpired) as e:
        say(f"nvidia-smi: not available ({type(e).__name__})")
    torch, device = _setup(dry)
    say(f"torch: {torch.__version__} (CUDA {torch.version.cuda})")
    from enkf_repro.models.ensemble import device_name, static_problem
    from enkf_repro.models.kernels import paper_cnn_triton as K

    say(f"triton: {K.triton_version()} (tested: {', '.join(K.TESTED_TRITON)}; "
        f"{K.untested_triton() or 'a tested release'})")
    for mod in ("hydra", "omegaconf", "pandas", "matplotlib", "pytest"):
        try:
            m = __import__(mod)
            say(f"{mod}: {getattr(m, '__version__', '?')}")
        except ImportError:
            say(f"{mod}: not installed")
    missing = K.launcher_prerequisites()
    say("launcher prerequisites: " + ("all present (C compiler, Python.h, libcuda.so.1, ptxas)" if not missing
                                      else "MISSING " + "; ".join(missing)))
    if device.type == "cuda":
        say(f"device: {device_name(device)}, {torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB")
    problem = static_problem(device) or "no static problem (the gate checks them at first use)"
    say(f"fused kernels on {device}: {problem}")
    say(f"ENKF_REPRO_CACHE: {os.environ.get('ENKF_REPRO_CACHE', '(default)')}")


# -- accuracy --------------------------------------------------------------------------------

def step_accuracy(out: Path, dry: bool) -> None:
    torch, device = _setup(dry)
    from enkf_repro.models.ensemble import EnsembleForward
    from enkf_repro.models.paper_cnn import PaperCNNSpec

    spec = PaperCNNSpec("logistic")
    batch = DRY_BATCH if dry else BATCH
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, 28, 28, generator=g).to(device)
    path = out / "accuracy.jsonl"
    for J in ACCURACY_J["dry" if dry else "real"]:
        U = (torch.randn(J, spec.num_params, generator=g) * 0.1).to(device)   # sigma = 0.1, the published prior
        with torch.no_grad():
            ref = EnsembleForward(spec, precision="fp32", device=device, kernel="torch")(U.double(), x.double())

        def err(a, b):
            return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()

        for precision in PRECISIONS:
            row = {"J": J, "batch": batch, "precision": precision, "sigma": 0.1}
            try:
                torch_out = EnsembleForward(spec, precision=precision, device=device, kernel="torch")(U, x)
                row["torch_vs_f64"] = err(torch_out, ref)
                fused = EnsembleForward(spec, precision=precision, device=device, kernel="triton")
                t0 = time.perf_counter()
                got = fused(U, x)
                row["first_call_s"] = time.perf_counter() - t0
                row.update(route=f"triton {fused.fused_mode}", chunk=fused.chunk_for(batch),
                           fused_vs_f64=err(got, ref), fused_vs_torch=err(got, torch_out))
            except Exception as e:  # noqa: BLE001 - the row says what failed, the next one runs
                row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            _append(path, row)
            print(json.dumps(row), flush=True)


# -- bench -----------------------------------------------------------------------------------

def step_bench(out: Path, dry: bool) -> None:
    _setup(dry)
    from enkf_repro.bench import main

    sizes = ",".join(str(j) for j in BENCH_J["dry" if dry else "real"])
    args = ["--sizes", sizes, "--precisions", ",".join(PRECISIONS), "--eki-J", "0", "--jsonl", str(out / "bench.jsonl")]
    if dry:   # the interpreter is only used when asked for: kernel=triton
        args += ["--device", "cpu", "--kernel", "triton", "--batch", str(DRY_BATCH), "--repeats", "1",
                 "--naive-budget", "0.2", "--epoch", "0.001", "--epoch-J", "2"]
    else:
        args += ["--device", "cuda", "--kernel", "auto", "--repeats", "5", "--naive-J", "1000", "--epoch", "0.02",
                 "--epoch-J", "5000"]
    code = main(args)
    if code:
        raise SystemExit(code)


# -- profile ---------------------------------------------------------------------------------

def step_profile(out: Path, dry: bool) -> None:
    torch, device = _setup(dry)
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from enkf_repro.models.ensemble import EnsembleForward
    from enkf_repro.models.paper_cnn import PaperCNNSpec
    from enkf_repro.optim.enkf import enkf_update_

    spec = PaperCNNSpec("logistic")
    J = 2 if dry else 5000
    batch = DRY_BATCH if dry else BATCH
    x = torch.rand(batch, 1, 28, 28, device=device)
    Y = F.one_hot(torch.randint(0, 10, (batch,), device=device), 10).float()
    path = out / "profile.txt"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for precision in ("fp32", "tf32"):
        forward = EnsembleForward(spec, precision=precision, device=device, kernel="triton" if dry else "auto")
        U = torch.randn(J, spec.num_params, device=device) * 0.1
        for _ in range(2):                       # warm-up: the gate, compilation, the allocator
            enkf_update_(U, forward(U, x), Y, 0.01, "sequential")
        if device.type == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            enkf_update_(U, forward(U, x), Y, 0.01, "sequential")
            if device.type == "cuda":
                torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60)
        with open(path, "a") as f:
            f.write(f"## one EnKF iteration, J = {J}, batch {batch}, precision {precision} "
                    f"(forward: {forward.kernel} {forward.fused_mode or ''})\n\n{table}\n\n")
        print(f"profiled {precision}", flush=True)


# -- summary ---------------------------------------------------------------------------------

def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass   # a line cut short by a killed step
    return rows


def _junit(path: Path) -> str:
    if not path.is_file():
        return "no junit file (the step did not run or was killed before pytest wrote it)"
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        return f"unreadable junit file ({e})"
    suites = [root] if root.tag == "testsuite" else list(root)
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    t = sum(float(s.get("time", 0)) for s in suites)
    failed = [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s
              if c.find("failure") is not None or c.find("error") is not None]
    text = (f"{n['tests']} tests: {n['tests'] - n['failures'] - n['errors'] - n['skipped']} passed, "
            f"{n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped ({t:.0f} s)")
    if failed:
        text += "; failed: " + ", ".join(failed[:10]) + (" ..." if len(failed) > 10 else "")
    return text


def targets(bench: list[dict], dry: bool) -> list[tuple[str, str, str]]:
    """(target, verdict, evidence) for each GPU target: met / missed / not measured."""
    if dry:
        return [(desc, "not measured", "dry run: CPU, Triton interpreter, tiny sizes") for _, desc in TARGETS]
    rows = {(r.get("what"), r.get("J")): r for r in bench}
    fp32, tf32 = rows.get(("paper_cnn fp32", 5000)), rows.get(("paper_cnn tf32", 5000))
    out = []

    def verdict(ok):
        return "met" if ok else "missed"

    if fp32:
        ok = fp32["tot_ms"] <= 12 and fp32.get("fwd_err", 1) <= 1e-5
        out.append((TARGETS[0][1], verdict(ok), f"{fp32['tot_ms']:.2f} ms ({fp32['route']}), forward error "
                    f"{fp32.get('fwd_err', float('nan')):.1e}, host {fp32.get('tot_host_ms', float('nan')):.2f} ms"))
    else:
        out.append((TARGETS[0][1], "not measured", "no fp32 row at J = 5000"))
    if tf32:
        out.append((TARGETS[1][1], verdict(tf32["tot_ms"] <= 5), f"{tf32['tot_ms']:.2f} ms ({tf32['route']}), "
                    f"host {tf32.get('tot_host_ms', float('nan')):.2f} ms"))
    else:
        out.append((TARGETS[1][1], "not measured", "no tf32 row at J = 5000"))
    ratios = {p: rows[(f"paper_cnn {p}", 20000)]["tot_ms"] / rows[(f"paper_cnn {p}", 5000)]["tot_ms"]
              for p in ("fp32", "tf32") if (f"paper_cnn {p}", 20000) in rows and (f"paper_cnn {p}", 5000) in rows}
    if ratios:
        out.append((TARGETS[2][1], verdict(all(r <= 4.2 for r in ratios.values()) and len(ratios) == 2),
                    ", ".join(f"{p} {r:.2f}x" for p, r in ratios.items())))
    else:
        out.append((TARGETS[2][1], "not measured", "no J = 20000 rows"))
    naive = rows.get(("paper_cnn fp32", 1000))
    if naive and "speedup_tot" in naive:
        out.append((TARGETS[3][1], verdict(naive["speedup_tot"] >= 30 and not naive.get("naive_extrapolated")),
                    f"{naive['speedup_tot']:.1f}x ({naive['naive_tot_ms']:.0f} ms naive vs {naive['tot_ms']:.1f} ms)"))
    else:
        out.append((TARGETS[3][1], "not measured", "no naive loop at J = 1000"))
    epoch = next((r for r in bench if r.get("what") == "epoch"), None)
    if epoch:
        out.append((TARGETS[4][1], verdict(epoch["epoch_s"] <= 90),
                    f"{epoch['epoch_s']:.0f} s ({epoch['ms_per_iteration']:.2f} ms per iteration, "
                    f"{epoch['s_per_eval']:.2f} s per evaluation; extrapolated from {epoch['iterations_timed']} "
                    "iterations)"))
    else:
        out.append((TARGETS[4][1], "not measured", "no epoch row"))
    return out


def step_summary(out: Path, dry: bool) -> None:
    lines = ["# GPU check: summary", ""]
    if dry:
        lines += ["**Dry run**: every step on the CPU at tiny sizes with the kernels in Triton's interpreter; "
                  "the numbers below are not GPU measurements.", ""]
    steps = [ln.split() for ln in (out / "check.log").read_text().splitlines()
             if ln.startswith("step ")] if (out / "check.log").is_file() else []
    lines += ["## Steps", "", "| step | status | seconds (limit) |", "| --- | --- | --- |"]
    for parts in steps:
        kv = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
        rc = kv.get("rc", "?")
        status = {"0": "ok", "124": "TIMED OUT", "137": "KILLED"}.get(rc, f"FAILED (rc {rc})")
        lines.append(f"| {parts[1]} | {status} | {kv.get('seconds', '?')} ({kv.get('limit', '?')}) |")
    lines += ["", "## GPU targets", "", "| target | verdict | evidence |", "| --- | --- | --- |"]
    bench = _jsonl(out / "bench.jsonl")
    for desc, verdict, evidence in targets(bench, dry):
        lines.append(f"| {desc} | **{verdict}** | {evidence} |")
    lines += ["", "## Versions and launcher prerequisites", "", "```"]
    lines += ((out / "env.txt").read_text().splitlines() if (out / "env.txt").is_file() else ["(no env.txt)"])
    lines += ["```", "", "## GPU tests", "", _junit(out / "gpu-tests.xml"), ""]
    lines += ["## Accuracy: normwise error of the logits (max |a - b| / max |b|)", "",
              "| J | precision | route | chunk | fused vs float64 | PyTorch vs float64 | fused vs PyTorch | "
              "first call s |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in _jsonl(out / "accuracy.jsonl"):
        if "error" in r:
            lines.append(f"| {r['J']} | {r['precision']} | FAILED: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['J']} | {r['precision']} | {r.get('route', '-')} | {r.get('chunk', '-')} | "
                     f"{r.get('fused_vs_f64', float('nan')):.1e} | {r.get('torch_vs_f64', float('nan')):.1e} | "
                     f"{r.get('fused_vs_torch', float('nan')):.1e} | {r.get('first_call_s', float('nan')):.1f} |")
    lines += ["", "## Benchmark rows (ms; host: time until the call returns)", "",
              "| what | J | route | chunk | forward (host) | update | iteration (host) | forward error | "
              "update error | naive iteration | speedup |", "|" + " --- |" * 11]
    for r in bench:
        if r.get("what") == "epoch":
            continue
        naive = (f"{'~' if r.get('naive_extrapolated') else ''}{r['naive_tot_ms']:.0f}" if "naive_tot_ms" in r else "-")
        speed = f"{r['speedup_tot']:.1f}x" if "speedup_tot" in r else "-"
        lines.append(f"| {r['what']} | {r['J']} | {r.get('route', '-')} | {r.get('chunk', '-')} | "
                     f"{r['fwd_ms']:.2f} ({r.get('fwd_host_ms', float('nan')):.2f}) | {r['upd_ms']:.2f} | "
                     f"{r['tot_ms']:.2f} ({r.get('tot_host_ms', float('nan')):.2f}) | "
                     f"{r.get('fwd_err', float('nan')):.1e} | {r.get('upd_err', float('nan')):.1e} | "
                     f"{naive} | {speed} |")
    for r in bench:
        if r.get("what") == "epoch":
            lines += ["", f"Epoch at J = {r['J']} ({r.get('precision', 'fp32')}): {r['epoch_s']:.1f} s extrapolated "
                      f"from {r['iterations_timed']} iterations ({r['ms_per_iteration']:.2f} ms each) and "
                      f"{r['evals_timed']} evaluations ({r['s_per_eval']:.2f} s each)."]
    lines += ["", "Files: env.txt, check.log (every step's output and status), gpu-tests.xml / gpu-tests.log, "
              "accuracy.jsonl, bench.jsonl, profile.txt."]
    tmp = out / "SUMMARY.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out / "SUMMARY.md")


STEPS = {"env": step_env, "accuracy": step_accuracy, "bench": step_bench, "profile": step_profile,
         "summary": step_summary}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=sorted(STEPS))
    ap.add_argument("out", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny sizes")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    STEPS[args.step](args.out, args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
