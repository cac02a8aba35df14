"""Time per EnKF iteration of one ensemble on 1 and on N ranks (gloo on CPU, NCCL on GPUs).

Runs the same single EnKF run through ``torchrun --nproc_per_node=N -m enkf_repro run ...
distributed=true`` for each N, into a temporary folder, and reads the per-iteration times from
the run's own CSV (``elapsed_s`` of the test-error rows, start-up excluded: the time between the
first and the last evaluation over the iterations between them). Prints a Markdown table.

    python scripts/bench_distributed.py                       # J = 400, 1 and 2 ranks, CPU
    python scripts/bench_distributed.py --ensemble-size 2000 --ranks 1,2,4 --device cuda

Needs the dataset (fashion_mnist by default) under $ENKF_REPRO_DATA. On a 2-core machine each
rank gets one thread (OMP_NUM_THREADS=cores/N), so N ranks split the same cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd


def run(ranks: int, args, out: Path) -> float:
    cores = os.cpu_count() or 1
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // ranks)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           "-m", "enkf_repro", "run", "optimizer=enkf", f"dataset={args.dataset}",
           f"optimizer.ensemble_size={args.ensemble_size}", "optimizer.repetitions=1",
           f"train.max_batches={args.iterations + 1}", f"train.eval_every={args.iterations // 2}",
           "dataset.test_size=500", "distributed=true", f"device={args.device}", "progress=false",
           "checkpoint_every=100000", f"out_dir={out}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"bench_distributed: {ranks} ranks failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    csv = next(out.glob("*/runs/*/metrics.csv.gz"))
    df = pd.read_csv(csv)
    ev = df[df.metric == "test_error"].sort_values("iteration")
    first, last = ev.iloc[1], ev.iloc[-1]   # row 0 is the untrained network at iteration 0
    return (last.elapsed_s - first.elapsed_s) / (last.iteration - first.iteration)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ensemble-size", type=int, default=400)
    p.add_argument("--ranks", default="1,2")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    rows = []
    for n in [int(x) for x in args.ranks.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append((n, 1000 * run(n, args, Path(tmp))))
    base = rows[0][1]
    print(f"paper_cnn, J = {args.ensemble_size}, batch 64, sequential update, {args.device}, "
          f"{os.cpu_count()} cores\n")
    print("| ranks | ms per iteration | speedup |")
    print("| --- | --- | --- |")
    for n, ms in rows:
        print(f"| {n} | {ms:.0f} | {base / ms:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
