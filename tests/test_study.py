"""A study of one's own from the shell: single runs at smoke scale, names and labels from the
resolved config, the CSV's settings column, sweeps that stop on Ctrl-C, reuse of a finished run,
one-line errors with the valid choices, progress lines in logs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from enkf_repro.runs.folder import RunFolder, RunWriter

TINY = ["optimizer.ensemble_size=4", "progress=false", "optimizer.repetitions=2"]


def _runs(out: Path, folder: str = "runs") -> list[Path]:
    return sorted(p for p in (out / "smoke" / folder).iterdir() if p.is_dir())


def test_a_single_run_at_smoke_scale_is_shrunk_and_named_by_its_settings(cli, synthetic_root, tmp_path):
    proc = cli("run", "scale=smoke", "optimizer.gamma=0.5", *TINY, f"out_dir={tmp_path}",
               env={"ENKF_REPRO_DATA": str(synthetic_root)})
    assert proc.returncode == 0, proc.stderr
    (run,) = _runs(tmp_path)
    assert run.name.startswith("enkf-paper_cnn-J4-r2-gamma0.5-s0-")       # what differs from the defaults
    done = json.loads((run / "done.json").read_text())
    assert done["batches"] == 10 and done["iterations"] == 20               # 640 images / 64 < 16 batches
    df = RunFolder(run).rows()
    settings = set(df["settings"].iloc[0].split(";"))
    assert {"optimizer.gamma=0.5", "optimizer.ensemble_size=4", "train.max_batches=16",
            "dataset.test_size=2000"} <= settings
    assert not (run / "run.lock").exists()                                  # no lock left behind
    assert not (tmp_path / "logs").exists()                                 # no Hydra logs unless asked


def test_a_figure_run_is_labelled_from_its_resolved_config(cli, synthetic_root, tmp_path):
    proc = cli("run", "figure=8", "scale=smoke", "only=relu", "optimizer.ensemble_size=5",
               "figure.smoke.overrides.train.max_batches=1", "progress=false", f"out_dir={tmp_path}",
               env={"ENKF_REPRO_DATA": str(synthetic_root)})
    assert proc.returncode == 0, proc.stderr
    (run,) = _runs(tmp_path, "fig8")
    assert run.name.startswith("relu-J5-s0-")                # not the series' nominal relu-J200
    assert "[1/1] fig 8 relu-J5 seed=0" in proc.stderr


def test_a_run_finished_in_another_folder_is_copied_not_retrained(cli, synthetic_root, tmp_path):
    env = {"ENKF_REPRO_DATA": str(synthetic_root)}
    fig = ["figure=8", "scale=smoke", "only=tanh", "figure.smoke.ensemble_size=4",
           "figure.smoke.overrides.train.max_batches=1", "progress=false", f"out_dir={tmp_path}"]
    assert cli("run", *fig, env=env).returncode == 0
    (source,) = _runs(tmp_path, "fig8")
    # the same run as a single run: same settings, so the same identity (hash)
    single = ["scale=smoke", "model.activation=tanh", "optimizer.ensemble_size=4", "train.max_batches=1",
              "train.eval_every=16", "dataset.test_size=2000", "progress=false", f"out_dir={tmp_path}"]
    proc = cli("run", *single, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "copied, not retrained" in proc.stderr
    (copy,) = _runs(tmp_path)
    assert copy.name.split("-")[-1] == source.name.split("-")[-1]
    a, b = RunFolder(source).rows(), RunFolder(copy).rows()
    assert set(b["figure"].astype(str)) == {"none"} and set(a["figure"].astype(str)) == {"8"}
    cols = ["iteration", "metric", "value", "elapsed_s"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert json.loads((copy / "done.json").read_text())["reused_from"] == str(source)


def test_one_interrupt_stops_the_whole_sweep_with_130_and_the_rerun_resumes(cli, synthetic_root, tmp_path,
                                                                              monkeypatch):
    env = {"ENKF_REPRO_DATA": str(synthetic_root)}
    args = ["run", "-m", "seed=0,1", "scale=smoke", "train.max_batches=4", "checkpoint_every=2", *TINY,
            f"out_dir={tmp_path}"]
    original = RunWriter.stop_if_requested
    calls = {"n": 0}

    def sigint_at_5(self, state_fn):          # as if SIGINT arrived during the 5th iteration of job 0
        calls["n"] += 1
        self.stop_requested = self.stop_requested or calls["n"] == 5
        return original(self, state_fn)

    monkeypatch.setattr(RunWriter, "stop_if_requested", sigint_at_5)
    proc = cli(*args, env=env)
    assert proc.returncode == 130, proc.stderr
    assert "rerun the same command to resume" in proc.stderr and "Error executing job" not in proc.stderr
    (run,) = _runs(tmp_path)                   # job 1 never started
    assert (run / "checkpoint.pt").exists() and not (run / "done.json").exists()
    monkeypatch.setattr(RunWriter, "stop_if_requested", original)
    proc = cli(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from iteration 5" in proc.stderr     # the checkpoint the stop wrote
    assert len(_runs(tmp_path)) == 2


@pytest.mark.parametrize("args,words", [
    (["optimizer.ensembel_size=3"], ["did you mean 'ensemble_size'"]),
    (["dataset=fashion-mnist"], ["did you mean 'fashion_mnist'", "mnist, notmnist"]),
    (["optimizer.ensemble_size=1", "--cfg", "job"], ["optimizer.ensemble_size=1", "an integer >= 2"]),
    (["figure=8", "only=nothing"], ["logistic-J5000, relu-J5000, tanh-J5000, logistic-J100"]),
])
def test_bad_input_is_one_line_with_the_valid_choices(cli, args, words):
    proc = cli("run", *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_only_lists_each_series_once(cli):
    line = cli("run", "figure=8", "only=nothing").stderr
    assert line.count("logistic-J5000") == 1


def test_progress_in_a_log_is_periodic_lines_with_rate_and_eta():
    from enkf_repro.runs.progress import LogLines

    out = io.StringIO()
    bar = LogLines(total=100, initial=0, desc="relu-J200", interval=0.0, stream=out)
    for _ in range(3):
        bar.update(10)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("relu-J200: it 30/100 (30.0 %), ")
    assert "it/s, ETA" in lines[-1]


def test_a_run_stopped_by_its_time_budget_resumes_to_the_uninterrupted_csv(cli, synthetic_root, tmp_path,
                                                                           monkeypatch):
    """time_budget=1h with a clock that runs out after 7 iterations: the run checkpoints, the
    command ends with exit 0 and the number of runs left; the rerun finishes it, and its CSV
    equals an uninterrupted run's (the wall-clock column aside)."""
    from enkf_repro.runs import budget

    env = {"ENKF_REPRO_DATA": str(synthetic_root)}
    args = ["scale=smoke", "train.max_batches=4", "checkpoint_every=3", "seed=0,1", *TINY]
    assert cli("run", "-m", *args, f"out_dir={tmp_path / 'ref'}", env=env).returncode == 0
    checks = {"n": 0}

    def expired():
        checks["n"] += 1
        return checks["n"] > 7

    monkeypatch.setattr(budget, "expired", expired)
    out = tmp_path / "budget"
    proc = cli("run", "-m", *args, "time_budget=1h", f"out_dir={out}", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "time budget spent" in proc.stderr and "1 run left: rerun the same command to continue" in proc.stderr
    monkeypatch.undo()
    budget.clear()
    assert cli("run", "-m", *args, "time_budget=1h", f"out_dir={out}", env=env).returncode == 0
    budget.clear()
    for a, b in zip(_runs(tmp_path / "ref"), _runs(out)):
        assert a.name == b.name
        pd.testing.assert_frame_equal(RunFolder(a).rows().drop(columns="elapsed_s"),
                                      RunFolder(b).rows().drop(columns="elapsed_s"))


def test_time_budget_values():
    from enkf_repro.config.validate import parse_duration
    from enkf_repro.errors import ConfigError

    assert [parse_duration(v) for v in ("90", "90s", "8m", "1h30m", "1.5h")] == [90, 90, 480, 5400, 5400]
    with pytest.raises(ConfigError, match="time_budget='soon'.*8m"):
        parse_duration("soon")
