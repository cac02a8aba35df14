"""Reliability: resume after SIGKILL/SIGTERM, one-line errors for bad input, the non-finite
member policy, divergence, determinism, and never mixing configurations in a run folder."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import FILES, REPO, make_dataset, write_idx
from enkf_repro.errors import DivergenceError
from enkf_repro.runs.folder import RunFolder

# A single EnKF run on the synthetic data: 10 batches x r = 8 = 80 iterations.
RUN = ["optimizer.ensemble_size=24", "train.max_batches=10", "train.eval_every=8", "scale=smoke",
       "progress=false", "checkpoint_every=4"]


def _env(root: Path) -> dict:
    return {"ENKF_REPRO_DATA": str(root)}


def _csv(out: Path) -> Path:
    """The folder of the single run under ``out``."""
    (config,) = (out / "smoke" / "runs").glob("*/config.yaml")
    return config.parent


def _values(run: Path) -> pd.DataFrame:
    """Every column but the wall-clock one."""
    return RunFolder(run).rows().drop(columns="elapsed_s")


def _popen(args, env, out):
    full = dict(os.environ, PYTHONPATH=str(REPO), **env)
    return subprocess.Popen([sys.executable, "-m", "enkf_repro", "run", *args, f"out_dir={out}"], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(out: Path, proc, timeout=120.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if list((out / "smoke" / "runs").glob("*/checkpoint.pt")) if (out / "smoke" / "runs").exists() else []:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before its first checkpoint: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("optimizer", ["enkf", "sgd"])
def test_sigkill_then_rerun_gives_the_uninterrupted_csv(cli, synthetic_root, tmp_path, optimizer):
    args = RUN if optimizer == "enkf" else [a for a in RUN if "ensemble_size" not in a] + [
        "optimizer=sgd", "train.epochs=8", "train.eval_every=7"]
    ref = tmp_path / "ref"
    assert cli("run", *args, f"out_dir={ref}", env=_env(synthetic_root)).returncode == 0
    out = tmp_path / "killed"
    proc = _popen(args, _env(synthetic_root), out)
    _wait_for_checkpoint(out, proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    csv = _csv(out)
    assert not (csv / "done.json").exists()
    partial = RunFolder(csv).rows()  # readable mid-run: whole lines only
    assert len(partial) < len(RunFolder(_csv(ref)).rows())
    rerun = cli("run", *args, f"out_dir={out}", env=_env(synthetic_root))
    assert rerun.returncode == 0, rerun.stderr
    pd.testing.assert_frame_equal(_values(csv), _values(_csv(ref)))
    assert not (csv / "checkpoint.pt").exists() and (csv / "done.json").exists()


def test_sigterm_checkpoints_and_exits_then_resumes(cli, synthetic_root, tmp_path):
    out = tmp_path / "term"
    proc = _popen(RUN, _env(synthetic_root), out)
    _wait_for_checkpoint(out, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; checkpoint written" in err
    state = torch.load(next((out / "smoke" / "runs").glob("*/checkpoint.pt")), weights_only=False)
    it = state["state"]["loop"]["iteration"]
    assert 0 < it < 80
    assert cli("run", *RUN, f"out_dir={out}", env=_env(synthetic_root)).returncode == 0
    df = RunFolder(_csv(out)).rows()
    assert df[df.metric == "test_error"]["iteration"].tolist() == [0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80]


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_checkpoint_is_one_line_naming_it_and_restart_recovers(cli, synthetic_root, tmp_path, damage):
    """A checkpoint cut in half (a full disk, a kill during a copy) or overwritten: the rerun stops
    with exit 2 and one line naming the file and restart=true, which then starts the run over."""
    from enkf_repro.errors import Interrupted
    from enkf_repro.runs.loop import train_run
    from enkf_repro.runs.results import config_columns

    spec = _in_process_run(synthetic_root, tmp_path)
    rd = RunFolder(spec.dir).open(spec.cfg, config_columns(spec.cfg, "none", spec.label), checkpoint_every=4)
    rd.stop_requested = True   # as after SIGTERM: checkpoint at the first iteration, then stop
    with pytest.raises(Interrupted):
        train_run(spec.cfg, rd, spec.label)
    rd.close()
    ckpt = spec.dir / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a checkpoint" * 10)
    proc = cli("run", *RUN, f"out_dir={tmp_path}", env=_env(synthetic_root))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(ckpt) in lines[0] and "restart=true" in lines[0] and "Traceback" not in proc.stderr
    redo = cli("run", *RUN, "restart=true", f"out_dir={tmp_path}", env=_env(synthetic_root))
    assert redo.returncode == 0 and (spec.dir / "done.json").exists(), redo.stderr


def test_same_seed_same_config_gives_identical_csv_values(cli, synthetic_root, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert cli("run", *RUN, f"out_dir={out}", env=_env(synthetic_root)).returncode == 0
    da, db = (RunFolder(_csv(x)).rows_bytes().decode().splitlines() for x in (a, b))
    k = da[0].split(",").index("elapsed_s")
    strip = [",".join(c for i, c in enumerate(line.split(",")) if i != k) for line in da], \
            [",".join(c for i, c in enumerate(line.split(",")) if i != k) for line in db]
    assert strip[0] == strip[1]  # byte for byte, apart from the wall-clock column
    c = cli("run", *RUN, "seed=1", f"out_dir={tmp_path / 'c'}", env=_env(synthetic_root))
    assert c.returncode == 0
    assert not _values(_csv(tmp_path / "c"))["value"].equals(_values(_csv(a))["value"])


def test_restart_true_starts_over_and_finished_runs_are_skipped(cli, synthetic_root, tmp_path):
    env = _env(synthetic_root)
    assert cli("run", *RUN, f"out_dir={tmp_path}", env=env).returncode == 0
    again = cli("run", *RUN, f"out_dir={tmp_path}", env=env)
    assert "already finished" in again.stderr
    redo = cli("run", *RUN, "restart=true", f"out_dir={tmp_path}", env=env)
    assert redo.returncode == 0 and "finished in" in redo.stderr


def test_refuses_a_run_folder_holding_a_different_config(cli, synthetic_root, tmp_path):
    env = _env(synthetic_root)
    assert cli("run", *RUN, f"out_dir={tmp_path}", env=env).returncode == 0
    run_dir = _csv(tmp_path)
    (run_dir / "done.json").unlink()
    cfg = (run_dir / "config.yaml").read_text().replace("gamma: 0.01", "gamma: 0.5")
    (run_dir / "config.yaml").write_text(cfg)
    before = RunFolder(run_dir).rows_bytes()
    proc = cli("run", *RUN, f"out_dir={tmp_path}", env=env)
    assert proc.returncode == 2 and "different configuration" in proc.stderr
    assert RunFolder(run_dir).rows_bytes() == before


# -- bad input: exit code 2, one line naming the key, the value and what is allowed -------------------------

BAD_CONFIGS = [
    (["figure=99"], ["figure='99'", "8"]),
    (["optimizer.ensemble_size=1"], ["optimizer.ensemble_size=1", ">= 2"]),
    (["optimizer.ensemble_size=-5"], ["optimizer.ensemble_size=-5", ">= 2"]),
    (["optimizer.ensemble_size=abc"], ["optimizer.ensemble_size", "abc"]),
    (["init.sigma=0"], ["init.sigma=0", "> 0"]),
    (["init.sigma=-1"], ["init.sigma=-1", "> 0"]),
    (["optimizer.gamma=0"], ["optimizer.gamma=0", "> 0"]),
    (["optimizer.repetitions=0"], ["optimizer.repetitions=0", ">= 1"]),
    (["ensemble.chunk_size=0"], ["ensemble.chunk_size=0", ">= 1"]),
    (["train.batch_size=100000"], ["train.batch_size=100000", "640"]),
    (["model.activation=softmax"], ["model.activation", "softmax", "logistic", "relu", "tanh"]),
    (["optimizer.ensemble_sise=5"], ["ensemble_sise"]),
    (["dataset=cifar"], ["cifar"]),
    (["device=tpu"], ["device", "tpu", "cpu"]),
    (["optimizer.update_mode=joint"], ["optimizer.update_mode", "joint", "sequential", "batch"]),
    (["figure=8", "only=nosuchseries"], ["only='nosuchseries'", "relu-J5000"]),
    (["-m", "figure=8", "--cfg", "hydra"], ["-m --cfg", "one of"]),
]


@pytest.mark.parametrize("args,expect", BAD_CONFIGS, ids=[" ".join(a) for a, _ in BAD_CONFIGS])
def test_bad_config_fails_with_one_line(cli_inprocess, synthetic_root, tmp_path, args, expect):
    code, _, err = cli_inprocess("run", "progress=false", f"out_dir={tmp_path}", *args, env=_env(synthetic_root))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for e in expect:
        assert e in lines[0], (e, lines[0])
    assert not (tmp_path / "smoke").exists() and not (tmp_path / "paper").exists()  # no work done


def test_hydra_full_error_shows_the_traceback(cli_subprocess, tmp_path):
    proc = cli_subprocess("run", "init.sigma=0", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def _damage(root: Path, kind: str) -> str:
    d = root / "mnist"
    img = d / FILES["test_images"]
    if kind == "missing folder":
        shutil.rmtree(d)
        return str(d)
    if kind == "missing file":
        (d / FILES["train_labels"]).unlink()
        return FILES["train_labels"]
    if kind == "truncated gz":
        data = img.read_bytes()
        img.write_bytes(data[: len(data) // 2])
        return FILES["test_images"]
    if kind == "corrupt gz":
        img.write_bytes(b"this is not gzip at all" * 10)
        return FILES["test_images"]
    if kind == "wrong magic":
        x = np.zeros((320, 28, 28), np.uint8)
        with gzip.open(img, "wb") as f:
            f.write(bytes([0, 0, 8, 1]) + (320).to_bytes(4, "big") + x.tobytes())
        return FILES["test_images"]
    if kind == "count mismatch":
        write_idx(d / FILES["test_labels"], np.zeros(319, np.uint8))
        return FILES["test_labels"]
    if kind == "short payload":
        with gzip.open(img, "wb") as f:
            f.write(bytes([0, 0, 8, 3]) + b"".join(int(v).to_bytes(4, "big") for v in (320, 28, 28)) + b"\0" * 100)
        return FILES["test_images"]
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["missing folder", "missing file", "truncated gz", "corrupt gz", "wrong magic",
                                  "count mismatch", "short payload"])
def test_data_faults_give_one_line_naming_the_file(cli_inprocess, tmp_path, kind):
    from enkf_repro.data.datasets import _load_cpu

    _load_cpu.cache_clear()
    root = make_dataset(tmp_path / "data")
    name = _damage(root, kind)
    code, _, err = cli_inprocess("run", *RUN, "dataset.download=false", f"out_dir={tmp_path / 'out'}",
                                 env=_env(root))
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[")]
    assert code == 2, err
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in err, err


def test_missing_files_message_lists_the_fixes(cli_inprocess, tmp_path):
    root = tmp_path / "data"
    d = root / "mnist"
    d.mkdir(parents=True)
    from conftest import synthetic_images

    x, y = synthetic_images(100, 0)
    write_idx(d / FILES["test_images"], x)
    write_idx(d / FILES["test_labels"], y)
    code, _, err = cli_inprocess("run", *RUN, "dataset.download=false", f"out_dir={tmp_path / 'out'}",
                                 env=_env(root))
    line = err.strip()
    assert code == 2
    for part in (FILES["train_images"], str(d), "ENKF_REPRO_DATA", "dataset.test_only=true"):
        assert part in line


# -- numerical faults ------------------------------------------------------------------------------------------

def _in_process_run(root: Path, out: Path, extra=()):
    """The planned single run of RUN on ``root``'s data (``dataset.root`` set: nothing leaks into
    the environment of later tests)."""
    from conftest import compose_run
    from enkf_repro.runs.runner import plan

    cfg = compose_run([*RUN, f"out_dir={out}", f"dataset.root={root}", *extra])
    (spec,) = plan(cfg)
    return spec


def test_nonfinite_rows_and_members():
    from enkf_repro.optim.failure import nonfinite_members, nonfinite_rows

    U = torch.randn(6, 1000)
    U[1, 7] = float("nan")
    U[2, 999] = float("inf")
    U[3, 0] = -float("inf")
    U[4, 3], U[4, 5] = float("inf"), -float("inf")     # sum inf - inf = nan
    assert nonfinite_rows(U).tolist() == [False, True, True, True, True, False]
    assert nonfinite_rows(U.double()).tolist() == [False, True, True, True, True, False]
    G = torch.randn(6, 4, 10)
    G[5, 2, 3] = float("nan")
    assert nonfinite_members(G).tolist() == [False] * 5 + [True]
    assert nonfinite_members(G, U).tolist() == [False] + [True] * 5


def test_nonfinite_members_are_redrawn_and_counted(synthetic_root, tmp_path, monkeypatch):
    """Outputs of members 0 and 5 become NaN at every 10th forward: the update uses the finite
    members only (their rows equal an update of the finite sub-ensemble) and the bad members are
    redrawn finite; the CSV counts them."""
    from enkf_repro.models.ensemble import EnsembleForward
    from enkf_repro.optim import enkf as enkf_module
    from enkf_repro.optim.enkf import enkf_update_reference
    from enkf_repro.runs.runner import run_one

    calls = {"n": 0, "checked": False}
    original = EnsembleForward.__call__
    original_update = enkf_module.enkf_update_

    def faulty(self, U, x):
        G = original(self, U, x)
        calls["n"] += 1
        if calls["n"] % 10 == 0:
            G[[0, 5]] = float("nan")
        return G

    def checking_update(U, G, Y, gamma, mode):
        if calls["n"] % 10 == 0 and not calls["checked"]:
            assert U.shape[0] == 22 and torch.isfinite(G).all()   # 24 members minus the 2 bad ones
            want = enkf_update_reference(U.double(), G.double(), Y.double(), gamma, mode)
            got = original_update(U, G, Y, gamma, mode)
            assert (got.double() - want).abs().max() < 1e-4
            calls["checked"] = True
            return got
        return original_update(U, G, Y, gamma, mode)

    monkeypatch.setattr(EnsembleForward, "__call__", faulty)
    monkeypatch.setattr(enkf_module, "enkf_update_", checking_update)
    spec = _in_process_run(synthetic_root, tmp_path)
    status = run_one(spec)
    assert status["status"] == "finished" and calls["checked"]
    df = RunFolder(spec.dir).rows()
    steps = df[df.metric == "nonfinite_step"]
    assert steps["iteration"].tolist() == list(range(10, 81, 10)) and (steps["value"] == 2).all()
    total = df[df.metric == "nonfinite_members"]
    assert total["value"].iloc[-1] == 16
    assert np.isfinite(df[df.metric == "test_error"]["value"]).all()


def test_policy_fail_stops_with_divergence_and_keeps_the_csv(synthetic_root, tmp_path, monkeypatch):
    from enkf_repro.models.ensemble import EnsembleForward
    from enkf_repro.runs.runner import run_one

    original = EnsembleForward.__call__
    calls = {"n": 0}

    def faulty(self, U, x):
        G = original(self, U, x)
        calls["n"] += 1
        if calls["n"] == 20:
            G[3] = float("inf")
        return G

    monkeypatch.setattr(EnsembleForward, "__call__", faulty)
    spec = _in_process_run(synthetic_root, tmp_path, ["optimizer.nonfinite=fail"])
    status = run_one(spec)
    assert status["status"] == "diverged" and "non-finite" in status["message"]
    df = RunFolder(spec.dir).rows()
    assert df[df.metric == "test_error"]["iteration"].max() == 16   # the rows before the fault are kept


def test_whole_ensemble_nonfinite_is_a_divergence(synthetic_root, tmp_path, monkeypatch):
    from enkf_repro.models.ensemble import EnsembleForward

    original = EnsembleForward.__call__
    monkeypatch.setattr(EnsembleForward, "__call__", lambda self, U, x: original(self, U, x) * float("nan"))
    spec = _in_process_run(synthetic_root, tmp_path)
    from enkf_repro.runs.runner import run_one

    assert run_one(spec)["status"] == "diverged"


def test_diverged_run_exits_3_with_message(cli, synthetic_root, tmp_path):
    proc = cli("run", *RUN, "model.activation=relu", "init.sigma=1e20", f"out_dir={tmp_path}",
               env=_env(synthetic_root))  # float32 overflow: every member non-finite
    assert proc.returncode == 3, proc.stderr
    assert "diverged" in proc.stderr and "Traceback" not in proc.stderr
    assert RunFolder(_csv(tmp_path)).has_rows
    # the same command again reports the divergence (exit 3) without training or calling it finished
    stamp = RunFolder(_csv(tmp_path)).rows_path().stat().st_mtime_ns
    again = cli("run", *RUN, "model.activation=relu", "init.sigma=1e20", f"out_dir={tmp_path}",
                env=_env(synthetic_root))
    assert again.returncode == 3 and "diverged" in again.stderr and "already finished" not in again.stderr
    assert RunFolder(_csv(tmp_path)).rows_path().stat().st_mtime_ns == stamp
    from enkf_repro import read_runs

    assert not read_runs(tmp_path)["finished"].any()
    assert RunFolder(_csv(tmp_path)).state == "diverged" and RunFolder(tmp_path).state == "unfinished"


def test_divergence_error_is_an_enkf_repro_error():
    assert DivergenceError("x").exit_code == 3
