"""Cost of the backprop instrumentation: the same training run with ``instrument.enabled=false``,
with per-iteration statistics (Figures 3 and 6), with per-epoch statistics, and with per-epoch
statistics plus every iteration of the listed epochs and the per-unit mean-gradient histograms
(``instrument.iteration_epochs``, Figures 4 and 7; here both epochs of the run, the worst case).

Each configuration runs through the real trainer (``backprop.train_backprop`` via the runner, CSV
writes included), the modes interleaved in every repeat so that load from other processes hits
them alike; the table gives the minimum and median wall time and the minimum process-CPU time
per optimizer step (the minimum is the steadiest estimate on a shared machine) and the overhead
against ``off``. Evaluation is kept negligible (a 256-image test subset, evaluated at the
start and the end only). Example:

    ENKF_REPRO_DATA=/path/to/data python scripts/bench_instrument.py --steps 200 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enkf_repro.api import compose  # noqa: E402
from enkf_repro.runs.folder import RunFolder
from enkf_repro.runs.runner import RunSpec, run_one  # noqa: E402

MODES = {
    "off": ["instrument.enabled=false"],
    "per-iteration": ["instrument.enabled=true", "instrument.stats_per=iteration"],
    "per-epoch": ["instrument.enabled=true", "instrument.stats_per=epoch"],
    "iter-epochs": ["instrument.enabled=true", "instrument.stats_per=epoch", "instrument.iteration_epochs=[0,1]"],
}


def time_run(overrides: list[str], out: Path) -> tuple[float, float, int]:
    cfg = compose(overrides + [f"out_dir={out}"])
    spec = RunSpec("none", None, "bench", 0, cfg, tuple(overrides))
    w0, c0 = time.perf_counter(), time.process_time()
    status = run_one(spec, restart=True)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    assert status["status"] == "finished", status
    rows = len(RunFolder(spec.dir).rows())
    return wall, cpu, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps per run (even)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (1 gives steadier numbers on a shared machine)")
    ap.add_argument("extra", nargs="*", help="further overrides, e.g. dataset.test_only=true")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    half = max(1, args.steps // 2)
    base = [f"optimizer={args.optimizer}", f"dataset={args.dataset}", f"init.sigma={args.sigma}",
            f"device={args.device}", "dataset.test_size=256", "train.eval_every=1000000",
            "progress=false", "checkpoint_every=1000000", *args.extra]
    # per-epoch statistics need more than one epoch: 2 epochs of steps/2 batches for every mode
    base += ["train.epochs=2", f"train.max_batches={half}"]
    results: dict[str, list[tuple[float, float, int]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        time_run(base + MODES["off"], Path(tmp))  # warm-up: data loading, allocator
        for r in range(args.repeats):
            order = list(MODES)[r % len(MODES):] + list(MODES)[: r % len(MODES)]
            for mode in order:
                results[mode].append(time_run(base + MODES[mode], Path(tmp)))
    steps = 2 * half
    import torch

    def per_step(res, k, how):
        return how(r[k] for r in res) / steps * 1e3

    base = {k: {how: per_step(results["off"], k, how) for how in (min, statistics.median)} for k in (0, 1)}
    print(f"{args.optimizer}, sigma={args.sigma}, {args.dataset}, {steps} steps per run, {args.repeats} "
          f"interleaved repeats, {torch.get_num_threads()} torch threads; ms per step (incl. start-up and "
          f"two evaluations), overhead against off")
    print(f"{'mode':<14} {'wall min':>9} {'overhead':>9} {'wall median':>12} {'overhead':>9} "
          f"{'CPU min':>8} {'overhead':>9} {'CSV rows':>9}")
    for mode, res in results.items():
        wmin, wmed, cmin = per_step(res, 0, min), per_step(res, 0, statistics.median), per_step(res, 1, min)
        print(f"{mode:<14} {wmin:>9.2f} {100 * (wmin / base[0][min] - 1):>8.1f}% {wmed:>12.2f} "
              f"{100 * (wmed / base[0][statistics.median] - 1):>8.1f}% {cmin:>8.2f} "
              f"{100 * (cmin / base[1][min] - 1):>8.1f}% {res[-1][2]:>9d}")
    print("all repeats (wall s): " + "; ".join(f"{m}: " + ", ".join(f"{w:.2f}" for w, _, _ in r)
                                               for m, r in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
