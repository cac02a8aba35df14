"""One ensemble over several processes: the row partition, the rows-only update against the
single-process one, two gloo ranks against one process (same seed), and the CLI under torchrun
(CSV written once, checkpoint interchangeable between 1 and 2 ranks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from enkf_repro.errors import ConfigError
from enkf_repro.optim.distributed_enkf import apply_low_rank_rows_, partition, redraw_rows_, row_range
from enkf_repro.optim.failure import redraw_members
from enkf_repro.optim.linalg import apply_low_rank_
from enkf_repro.runs.comm import LocalComm
from enkf_repro.runs.distributed import validate_distributed

REPO = Path(__file__).resolve().parents[1]
P_CNN = 18050          # paper_cnn parameters
ITERATIONS = 10


def test_partition_is_contiguous_balanced_and_covers_every_member():
    assert partition(11, 2) == [6, 5]
    assert partition(10, 4) == [3, 3, 2, 2]
    counts = partition(7, 3)
    assert [row_range(counts, k) for k in range(3)] == [(0, 3), (3, 5), (5, 7)]
    with pytest.raises(ValueError):
        partition(2, 3)


@pytest.mark.parametrize("J,d", [(12, 40), (50, 8)])   # J <= d (J x J path) and J > d (d x P path)
def test_rows_update_with_one_rank_is_the_single_process_update(J, d):
    g = torch.Generator().manual_seed(0)
    U = torch.randn(J, 300, generator=g) + 5.0
    W = torch.randn(J, d, generator=g, dtype=torch.float64) / J
    Z = torch.randn(J, d, generator=g, dtype=torch.float64)
    ref = apply_low_rank_(U.clone(), W, Z)
    out = apply_low_rank_rows_(U.clone(), W, Z, [J], 0, LocalComm(), block=128)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ref, U, atol=1e-3)   # the update did something


def test_rows_redraw_with_one_rank_is_redraw_members():
    U = torch.randn(9, 50, generator=torch.Generator().manual_seed(1))
    bad = torch.zeros(9, dtype=torch.bool)
    bad[[2, 7]] = True
    ref = redraw_members(U.clone(), bad, torch.Generator().manual_seed(5))
    out = redraw_rows_(U.clone(), bad, [7], [2], 0, torch.Generator().manual_seed(5), LocalComm())
    assert torch.allclose(out, ref, atol=1e-6) and torch.isfinite(out).all()


def test_validation_refuses_what_cannot_be_distributed(monkeypatch):
    base = {"optimizer": {"name": "enkf", "ensemble_size": 4, "adaptive": {"enabled": False}}}
    validate_distributed(OmegaConf.create(base))
    with pytest.raises(ConfigError, match="optimizer='sgd'"):
        validate_distributed(OmegaConf.create({"optimizer": {"name": "sgd"}}))
    adaptive = OmegaConf.create(base)
    adaptive.optimizer.adaptive.enabled = True
    with pytest.raises(ConfigError, match="adaptive"):
        validate_distributed(adaptive)
    last = OmegaConf.create(base)
    last.optimizer.eval_last_member = True
    with pytest.raises(ConfigError, match="eval_last_member"):
        validate_distributed(last)
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(ConfigError, match="ensemble_size=4"):
        validate_distributed(OmegaConf.create(base))


# -- two gloo processes against one ------------------------------------------------------------
# (J, B, update_mode, gamma, members set to NaN before an iteration): J <= d with the redraw path,
# and J > d (the d x P all-reduce) in batch mode. gamma = 1 keeps the ensemble spread (> 1e-3), so
# the comparison is not of a collapsed ensemble, and the update well conditioned: with the paper's
# gamma = 0.01 and J = 48 > d = 40, fp32 rounding alone (one process, fp32 against fp64) moves U by
# 6e-5 in 10 iterations, and the 2-rank result differs from the 1-process one by as much.
CASES = {"small_J": (11, 16, "sequential", 1.0, {3: [2], 6: [8]}), "large_J": (48, 4, "batch", 1.0, {})}


def _setup(J, B, mode, gamma):
    from enkf_repro.models import build_model
    from enkf_repro.models.ensemble import EnsembleForward

    cfg = OmegaConf.create({"optimizer": {"name": "enkf", "ensemble_size": J, "gamma": gamma, "update_mode": mode,
                                          "repetitions": 5,
                                          "nonfinite": "redraw"}, "init": {"scheme": "normal", "sigma": 0.1}})
    model = build_model(OmegaConf.create({"name": "paper_cnn", "activation": "logistic", "pool_conv2": False,
                                          "hidden": []}))
    forward = EnsembleForward(model, chunk_size=4)
    gen = torch.Generator().manual_seed(7)
    data = torch.Generator().manual_seed(3)
    batches = [(torch.rand(B, 1, 28, 28, generator=data),
                F.one_hot(torch.randint(0, 10, (B,), generator=data), 10).float()) for _ in range(2)]
    return cfg, model, forward, gen, batches


def _train(method, batches, nan_at, owner_rows):
    """ITERATIONS steps (r = 5 per batch); returns the comm elements of one clean step."""
    per_step = None
    for it in range(ITERATIONS):
        for j in nan_at.get(it, []):
            if j in owner_rows:
                method.U[j - owner_rows.start] = float("nan")
        before = dict(getattr(method, "comm", LocalComm()).sent)
        x, y = batches[it // 5]
        out = method.step(x, y)
        if "nonfinite_step" not in out and per_step is None and hasattr(method, "comm"):
            per_step = {k: v - before.get(k, 0) for k, v in method.comm.sent.items() if v - before.get(k, 0)}
    return per_step


def _rank_main(rank, world, store, out):
    import torch.distributed as dist

    from enkf_repro.optim.base import make_method
    from enkf_repro.optim.distributed_enkf import DistributedEnKF
    from enkf_repro.runs.comm import Comm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    comm = Comm("cpu")
    result = {}
    for name, (J, B, mode, gamma, nan_at) in CASES.items():
        cfg, model, forward, gen, batches = _setup(J, B, mode, gamma)
        method = make_method(cfg, model, forward, gen, "cpu", DistributedEnKF, comm=comm)
        lo, hi = row_range(method.counts, rank)
        per_step = _train(method, batches, nan_at, range(lo, hi))
        U = method.full_ensemble()
        mean = method.eval_params()[""]
        diag = method.diagnostics()
        if rank == 0:
            result[name] = {"U": U, "mean": mean, "diag": diag, "per_step": per_step, "counts": method.counts}
    if rank == 0:
        torch.save(result, out)
    dist.barrier()
    dist.destroy_process_group()


def test_two_gloo_processes_match_one_process_for_10_iterations(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "dist.pt"
    mp.start_processes(_rank_main, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, start_method="spawn")
    got = torch.load(out, weights_only=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the reference is small; threads only add contention on a busy machine
    try:
        _compare_with_one_process(got)
    finally:
        torch.set_num_threads(threads)


def _compare_with_one_process(got):
    from enkf_repro.optim.base import make_method

    for name, (J, B, mode, gamma, nan_at) in CASES.items():
        cfg, model, forward, gen, batches = _setup(J, B, mode, gamma)
        ref = make_method(cfg, model, forward, gen, "cpu")
        _train(ref, batches, nan_at, range(J))
        g = got[name]
        diff = float((g["U"] - ref.U).abs().max())
        print(f"{name}: J={J} over ranks {g['counts']}: max |U_2ranks - U_1process| = {diff:.3g}")
        assert diff <= 1e-5
        assert torch.allclose(g["mean"], ref.U.mean(0), atol=1e-6)
        ref_diag = ref.diagnostics()
        assert g["diag"]["nonfinite_members"] == ref_diag["nonfinite_members"] == sum(map(len, nan_at.values()))
        assert ref_diag["ensemble_spread"] > 1e-3
        assert g["diag"]["ensemble_spread"] == pytest.approx(ref_diag["ensemble_spread"], rel=1e-4)
        # what one clean iteration exchanged (elements handed in by rank 0), as documented
        m, d = max(g["counts"]), B * 10
        expect = {"all_gather": m * d, "all_reduce": P_CNN + (d * P_CNN if J > d else 0)}
        if J <= d:
            expect["reduce_scatter"] = 2 * m * P_CNN
        assert g["per_step"] == expect


# -- the command line under torchrun -----------------------------------------------------------
RUN = ["optimizer.ensemble_size=9", "train.max_batches=2", "train.eval_every=4", "scale=smoke",
       "dataset.test_size=200", "progress=false", "checkpoint_every=8"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_cmd(nproc: int, args: list[str], env: dict) -> tuple[list[str], dict]:
    """``torchrun --nproc_per_node=N -m enkf_repro run <args>`` (one thread per rank: 2 cores here)."""
    full = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    full.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "enkf_repro", "run", *args]
    return cmd, full


def _torchrun(nproc: int, args: list[str], env: dict) -> subprocess.CompletedProcess:
    cmd, full = _torchrun_cmd(nproc, args, env)
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=600, cwd=REPO)


def _csv(out: Path) -> Path:
    """The config file of the single run under ``out`` (its parent is the run's folder)."""
    (config,) = (out / "smoke" / "runs").glob("*/config.yaml")
    return config


def _compare(a: Path, b: Path) -> None:
    from enkf_repro.runs.folder import RunFolder

    da, db = RunFolder(a.parent).rows(), RunFolder(b.parent).rows()
    assert list(da[["iteration", "metric"]].itertuples(index=False)) == \
        list(db[["iteration", "metric"]].itertuples(index=False))
    pd.testing.assert_series_equal(da["value"], db["value"], rtol=1e-4, atol=1e-6)


def _run_in_process(args: list[str], monkeypatch, root: Path) -> None:
    """The single-process reference, run in this process (saves a Python start-up)."""
    from conftest import compose_run
    from enkf_repro.runs.runner import plan, run_one

    monkeypatch.setenv("ENKF_REPRO_DATA", str(root))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (spec,) = plan(compose_run(args))
        assert run_one(spec)["status"] == "finished"
    finally:
        torch.set_num_threads(threads)


def test_torchrun_two_ranks_write_one_csv_equal_to_one_process(synthetic_root, tmp_path, monkeypatch):
    env = {"ENKF_REPRO_DATA": str(synthetic_root), "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "one"
    _run_in_process([*RUN, f"out_dir={ref}"], monkeypatch, synthetic_root)
    out = tmp_path / "two"
    proc = _torchrun(2, [*RUN, "distributed=true", f"out_dir={out}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    csv = _csv(out)
    assert csv.parent.name == _csv(ref).parent.name          # same run identity as the 1-process run
    _compare(csv, _csv(ref))                                  # one set of rows, rank 0's
    assert (csv.parent / "done.json").is_file() and not (csv.parent / "checkpoint.pt").exists()
    assert '"ranks": 2' in (csv.parent / "done.json").read_text()


@pytest.mark.slow
def test_checkpoint_of_two_ranks_resumes_in_one_process(cli, synthetic_root, tmp_path):
    """A 2-rank run stopped by SIGTERM after its first checkpoint; one process finishes it."""
    import signal
    import time

    env = {"ENKF_REPRO_DATA": str(synthetic_root), "OMP_NUM_THREADS": "1"}
    args = [a for a in RUN if not a.startswith(("train.max_batches", "checkpoint_every"))] + [
        "train.max_batches=6", "checkpoint_every=4"]
    ref = tmp_path / "one"
    assert cli("run", *args, f"out_dir={ref}", env=env).returncode == 0
    out = tmp_path / "two"
    cmd, full = _torchrun_cmd(2, [*args, "distributed=true", f"out_dir={out}"], env)
    proc = subprocess.Popen(cmd, env=full, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not list(out.glob("smoke/runs/*/checkpoint.pt")):
        assert proc.poll() is None and time.time() - t0 < 300, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert "interrupted; checkpoint written to" in err and "interrupted (rank 1)" in err, err[-3000:]
    csv = _csv(out)
    assert not (csv.parent / "done.json").exists() and (csv.parent / "checkpoint.pt").exists()
    rerun = cli("run", *args, f"out_dir={out}", env=env)
    assert rerun.returncode == 0, rerun.stderr
    _compare(csv, _csv(ref))


@pytest.mark.slow
def test_a_submitit_job_with_two_tasks_is_one_distributed_run(cli, synthetic_root, tmp_path):
    """hydra/launcher=submitit_local with tasks_per_node=2: the job's two tasks become two ranks (the
    path a SLURM job with tasks_per_node=N takes)."""
    env = {"ENKF_REPRO_DATA": str(synthetic_root), "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "one"
    assert cli("run", *RUN, f"out_dir={ref}", env=env).returncode == 0
    out = tmp_path / "two"
    proc = cli("run", "-m", *RUN, "distributed=true", "hydra/launcher=submitit_local",
               "hydra.launcher.tasks_per_node=2", f"out_dir={out}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    csv = _csv(out)
    assert '"ranks": 2' in (csv.parent / "done.json").read_text()
    _compare(csv, _csv(ref))
