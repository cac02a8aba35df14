"""Live views of a run (runs/loggers.py, runs/progress.py) and its CPU threads (``threads=``):
TensorBoard event files written by a smoke run, MLflow (the real one when installed, else a
stand-in module recording the calls), callbacks, the progress line's misfit and test error."""

from __future__ import annotations

import io
import sys
import types

import pytest
import torch

from custom_nets import TwoLayer
from enkf_repro import train
from enkf_repro.errors import ConfigError


def data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


OPTS = {"ensemble_size": 6, "batch_size": 16, "max_batches": 4, "eval_every": 2, "progress": False, "device": "cpu"}


def test_a_smoke_run_writes_tensorboard_event_files(cli, synthetic_root, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cli("run", "scale=smoke", "optimizer=etki", "optimizer.ensemble_size=8", "train.max_batches=4",
        "train.eval_every=2", "dataset=mnist", f"dataset.root={synthetic_root}", f"out_dir={tmp_path}",
        "logger=tensorboard", "progress=false", check=True)
    (run,) = (tmp_path / "smoke" / "tensorboard").iterdir()
    assert run.name == next((tmp_path / "smoke" / "runs").iterdir()).name       # named by the run folder
    acc = EventAccumulator(str(run))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"test_error", "test_loss", "train_misfit", "ensemble_spread", "ensemble_nll", "ensemble_ece"} <= tags
    steps = [e.step for e in acc.Scalars("test_error")]
    assert steps == [0, 2, 4]                                                    # every evaluation
    assert [e.step for e in acc.Scalars("train_misfit")] == [1, 2, 3, 4]         # every step
    csv = __import__("enkf_repro").read_runs(tmp_path)
    err = csv[csv.metric == "test_error"].sort_values("iteration")["value"].tolist()
    assert [e.value for e in acc.Scalars("test_error")] == pytest.approx(err)    # the CSV stays the record


def test_mlflow_logger_and_callbacks(tmp_path, monkeypatch):
    calls = []
    try:
        import mlflow  # noqa: F401
        real = True
    except ImportError:
        real = False
        fake = types.ModuleType("mlflow")
        fake.set_tracking_uri = lambda uri: calls.append(("uri", uri))
        fake.set_experiment = lambda name: calls.append(("experiment", name))
        fake.start_run = lambda run_name=None: calls.append(("start", run_name))
        fake.log_params = lambda p: calls.append(("params", dict(p)))
        fake.log_metrics = lambda m, step=None: calls.append(("metrics", step, dict(m)))
        fake.end_run = lambda: calls.append(("end",))
        monkeypatch.setitem(sys.modules, "mlflow", fake)
    seen = []
    r = train(TwoLayer(4), data(), method="eki", logger="mlflow", logger_dir=str(tmp_path / "mlruns"),
              callbacks=[lambda it, m: seen.append((it, m))], out_dir=tmp_path, **OPTS)
    assert r.status == "finished"
    evals = [m for it, m in seen if "test_error" in m]
    assert [it for it, m in seen if "test_error" in m] == [0, 2, 4]
    assert evals[-1]["test_error"] == pytest.approx(r.test_error)
    assert [it for it, m in seen if "train_loss" in m] == [1, 2, 3, 4]
    if real:
        import mlflow

        runs = mlflow.search_runs(experiment_names=["enkf-repro"])
        assert len(runs) >= 1
        return
    assert calls[0][0] == "uri" and calls[0][1].startswith("file://") and ("experiment", "enkf-repro") in calls
    assert ("start", r.run_dir.name) in calls and calls[-1] == ("end",)
    params = {k: v for c in calls if c[0] == "params" for k, v in c[1].items()}
    assert params["optimizer.name"] == "eki" and params["optimizer.ensemble_size"] == "6"
    metrics = [c for c in calls if c[0] == "metrics"]
    assert any("test_error" in m for _, _, m in metrics) and any(s == 4 for _, s, _ in metrics)


def test_logger_names_are_checked():
    with pytest.raises(ConfigError, match="logger='wandb' is not allowed: one of csv, tensorboard, mlflow"):
        train(TwoLayer(4), data(), method="eki", logger="wandb", **OPTS)
    from enkf_repro import register_logger
    from enkf_repro.runs import loggers

    got = []

    class Mine(loggers.Logger):
        def __init__(self, run):
            got.append(("open", run.name))

        def log(self, iteration, metrics):
            got.append(("log", iteration))

    register_logger("mine", Mine)
    try:
        train(TwoLayer(4), data(), method="etki", logger="csv+mine", **OPTS)
    finally:
        loggers.LOGGERS.pop("mine")
    assert got[0][0] == "open" and ("log", 4) in got


def test_the_progress_line_shows_the_misfit_and_the_test_error():
    from enkf_repro.runs.progress import LogLines

    out = io.StringIO()
    bar = LogLines(10, 0, "run", interval=0.0, stream=out)
    bar.note("misfit", torch.tensor(0.0123))
    bar.note("test error", 12.5, "%")
    bar.update(1)
    assert out.getvalue().strip().endswith("misfit 0.0123, test error 12.5 %")


def test_a_runs_progress_lines_carry_them(cli, synthetic_root, tmp_path, monkeypatch):
    from enkf_repro.runs import progress

    monkeypatch.setattr(progress.LogLines, "__init__", lambda self, *a, **k: _init(self, *a, **k))
    proc = cli("run", "scale=smoke", "optimizer=enkf", "optimizer.ensemble_size=6", "optimizer.repetitions=1",
               "train.max_batches=3", "train.eval_every=1", "dataset=mnist", f"dataset.root={synthetic_root}",
               f"out_dir={tmp_path}", check=True)
    lines = [ln for ln in proc.stderr.splitlines() if " it 3/3 " in ln]
    assert lines and "misfit " in lines[-1] and "test error " in lines[-1] and lines[-1].endswith(" %")


_original_init = __import__("enkf_repro.runs.progress", fromlist=["LogLines"]).LogLines.__init__


def _init(self, total, initial, desc, interval=30.0, stream=None):
    _original_init(self, total, initial, desc, 0.0, stream)


def test_threads_setting(monkeypatch):
    from omegaconf import OmegaConf

    from enkf_repro.api import compose
    from enkf_repro.config.identity import config_hash
    from enkf_repro.runs.loop import available_cores, run_threads

    cfg = OmegaConf.create({"threads": None})
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert run_threads(cfg) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert run_threads(cfg) == available_cores() >= 1
    assert run_threads(OmegaConf.create({"threads": 2})) == 2
    assert config_hash(compose(["threads=2"])) == config_hash(compose([]))     # not part of a run's identity
    seen = []
    before = torch.get_num_threads()
    train(TwoLayer(4), data(), method="etki", threads=2, callbacks=[lambda it, m: seen.append(torch.get_num_threads())],
          **OPTS)
    assert set(seen) == {2} and torch.get_num_threads() == before                # set for the run, then restored
    with pytest.raises(ConfigError, match="threads=0 is not allowed"):
        train(TwoLayer(4), data(), method="etki", threads=0, **OPTS)
