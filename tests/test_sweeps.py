"""Sweeps through Hydra launchers: joblib and submitit's local executor each run a two-job sweep
(one run folder per job, `plot` collects both), the SLURM launcher config composes, launcher
overrides are checked before any job starts, and a failed job does not stop the others."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest

from enkf_repro.errors import ConfigError

# Two jobs (seed=1,2) of one tiny Figure 8 series each: J = 6, one batch (8 iterations).
SWEEP = ["-m", "figure=8", "scale=smoke", "only=relu", "figure.smoke.ensemble_size=6", "figure.smoke.ensemble_sizes=[]",
         "figure.smoke.overrides.train.max_batches=1", "figure.smoke.overrides.train.eval_every=4",
         "figure.smoke.overrides.dataset.test_size=100", "progress=false", "seed=1,2"]


def _env(root) -> dict:
    return {"ENKF_REPRO_DATA": str(root), "OMP_NUM_THREADS": "1"}


def _check_two_jobs(out):
    runs = sorted((out / "smoke" / "fig8").glob("*/metrics.csv.gz"))
    assert [p.parent.name.split("-")[2] for p in runs] == ["s1", "s2"]
    for csv in runs:
        df = pd.read_csv(csv)
        err = df[df.metric == "test_error"]
        assert list(err.iteration) == [0, 4, 8] and err.value.between(0, 100).all()
        assert (csv.parent / "done.json").is_file()
    return runs


def test_joblib_sweep_runs_two_jobs_and_plot_draws_both(cli, synthetic_root, tmp_path):
    out = tmp_path / "res"
    proc = cli("run", *SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"out_dir={out}",
               env=_env(synthetic_root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    _check_two_jobs(out)
    from enkf_repro.cli import main

    assert main(["plot", "figure=8", "scale=smoke", f"out_dir={out}"]) == 0   # `enkf-repro plot`, in-process
    assert (out / "smoke" / "fig8" / "fig8.png").stat().st_size > 1000
    from enkf_repro.experiments import get_figure
    from enkf_repro.report.render import select_runs
    from enkf_repro.runs.folder import read_runs

    drawn = select_runs(read_runs(out / "smoke" / "fig8"), get_figure("8"), [])
    assert sorted(drawn.seed.unique()) == [1, 2]   # both jobs' runs, one band over the two seeds


def test_submitit_local_sweep_runs_two_jobs(cli, synthetic_root, tmp_path):
    out = tmp_path / "res"
    proc = cli("run", *SWEEP, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", f"out_dir={out}",
               env=_env(synthetic_root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in proc.stdout + proc.stderr
    _check_two_jobs(out)
    # Hydra's sweep folder is outside out_dir (no logs/ there unless asked)
    assert not (out / "logs").exists()
    sweep = Path(re.search(r"sweep output dir : (\S+)", proc.stdout + proc.stderr).group(1))
    assert len(list(sweep.glob(".submitit/*/*_result.pkl"))) == 2   # each job ran as a submitit job


def test_slurm_launcher_config_composes(cli):
    proc = cli("run", "figure=8", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra")
    assert proc.returncode == 0, proc.stderr
    launcher = proc.stdout[proc.stdout.index("  launcher:"):]
    for line in ("_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
                 "partition: gpu", "gpus_per_task: 1", "timeout_min: 240", "max_num_timeout: 3"):
        assert line in launcher


@pytest.fixture
def prevalidate(synthetic_root, monkeypatch):
    from enkf_repro.runs.launch import prevalidate

    monkeypatch.setenv("ENKF_REPRO_DATA", str(synthetic_root))
    base = ["figure=fig8", "scale=smoke", "only=relu", "seed=1,2"]
    return lambda *extra: prevalidate(base + list(extra))


def test_launcher_overrides_are_checked_before_any_job(prevalidate, monkeypatch):
    prevalidate("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")            # valid: no error
    prevalidate("hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    with pytest.raises(ConfigError, match="hydra/launcher='jobib'.*basic, joblib, slurm"):
        prevalidate("hydra/launcher=jobib")
    with pytest.raises(ConfigError, match="n_jobs.*BasicLauncherConf"):
        prevalidate("hydra.launcher.n_jobs=2")                                 # basic launcher has no n_jobs
    with pytest.raises(ConfigError, match="distributed=true"):
        prevalidate("hydra/launcher=joblib", "distributed=true")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="distributed=True.*torchrun"):
        prevalidate("distributed=true")                                        # not started by torchrun
    prevalidate("distributed=true", "hydra/launcher=submitit_local")           # the job's tasks are the ranks
    import enkf_repro.runs.launch as cli_mod

    monkeypatch.setitem(cli_mod.PLUGIN_LAUNCHERS, "joblib", "hydra_plugins.not_installed_launcher")
    with pytest.raises(ConfigError, match=r"pip install 'enkf-repro\[cluster\]'"):
        prevalidate("hydra/launcher=joblib")


def test_a_failed_sweep_job_does_not_stop_the_others(cli, synthetic_root, tmp_path):
    out = tmp_path / "res"
    proc = cli("run", "-m", "optimizer.ensemble_size=4", "train.max_batches=1", "scale=smoke", "progress=false",
               "dataset.test_size=100", "optimizer.nonfinite=fail", "init.sigma=1e30,0.1", f"out_dir={out}",
               env=_env(synthetic_root))
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert f"enkf-repro: 1 of 1 runs diverged; their CSVs are kept under {out}/smoke/runs" in lines
    assert not any(line.startswith("Traceback") for line in lines)
    statuses = sorted(pd.read_json(p, typ="series")["status"] for p in out.glob("smoke/runs/*/done.json"))
    assert statuses == ["diverged", "finished"]   # the second job ran after the first failed


def test_a_submitit_job_with_several_tasks_gets_torch_distributed_env(monkeypatch):
    from enkf_repro.runs.distributed import _export_submitit_env, launcher_world_size

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")      # recorded, so what the export below sets is undone after the test
        monkeypatch.delenv(key)
    assert launcher_world_size() is None
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    for key, value in {"JOB_ID": "4242", "NTASKS": "2", "GLOBALID": "1", "LOCALID": "1", "NODEID": "0",
                       "JOB_NUM_NODES": "1"}.items():
        monkeypatch.setenv(f"SUBMITIT_LOCAL_{key}", value)
    assert launcher_world_size() == 2
    _export_submitit_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("1", "2", "1")
    assert int(os.environ["MASTER_PORT"]) > 0 and os.environ["MASTER_ADDR"]
