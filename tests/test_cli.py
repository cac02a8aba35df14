"""The command-line contract: run / plot / list, Hydra flags, figure=8 mapping, CSV schema."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from conftest import TINY_FIG8
from enkf_repro.runs.folder import RunFolder
from enkf_repro.runs.results import COLUMNS


def test_help_lists_commands(cli):
    out = cli("--help", check=True).stdout
    for cmd in ("run", "plot", "compare", "list", "bench", "reproduce"):
        assert f"  {cmd}" in out


def test_list_prints_every_figure_with_costs(cli):
    import enkf_repro

    proc = cli("list", check=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("8 |")]
    assert lines, proc.stdout
    assert "runs" in lines[0] and "PFLOP" in lines[0]
    assert proc.stdout == enkf_repro.figure_table() + "\n"     # the library's table, kept from the call above


def test_importing_the_command_line_loads_no_numerics_or_plotting():
    """``enkf-repro --help`` answers at once: the commands import their modules when called."""
    import subprocess
    import sys

    from conftest import REPO

    probe = ("import sys, enkf_repro.cli; "
             "print(sorted(m for m in ('torch', 'pandas', 'matplotlib', 'omegaconf', 'hydra') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_cfg_job_shows_composed_figure_config(cli):
    proc = cli("run", "figure=8", "scale=smoke", "--cfg", "job", check=True)
    assert "id: '8'" in proc.stdout and "ensemble_size: 5000" in proc.stdout
    assert "name: smoke" in proc.stdout


def test_unknown_command_and_unknown_figure_are_one_line_errors(cli):
    proc = cli("frobnicate")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    proc = cli("run", "figure=99")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "figure='99'" in proc.stderr and "8" in proc.stderr


def test_end_to_end_run_and_plot_tiny_figure8(cli, synthetic_root, tmp_path):
    env = {"ENKF_REPRO_DATA": str(synthetic_root)}
    out = tmp_path / "res"
    proc = cli("run", *TINY_FIG8, f"out_dir={out}", env=env)
    assert proc.returncode == 0, proc.stderr
    runs = sorted((out / "smoke" / "fig8").glob("*/config.yaml"))
    assert len(runs) == 4  # logistic/relu/tanh at J=6 and logistic at J=4
    for config in runs:
        run = RunFolder(config.parent)
        df = run.rows()
        assert list(df.columns) == COLUMNS
        err = df[df.metric == "test_error"]
        assert err["value"].between(0, 100).all() and err["iteration"].iloc[0] == 0
        assert err["iteration"].max() == 3 * 8  # 3 batches x r = 8
        assert run.finished
        assert pd.to_numeric(df["value"]).notna().all()
    proc = cli("plot", "figure=8", "scale=smoke", f"out_dir={out}", env=env)
    assert proc.returncode == 0, proc.stderr
    png = out / "smoke" / "fig8" / "fig8.png"
    with Image.open(png) as im:
        assert im.size[0] > 500 and im.size[1] > 200
    assert (out / "smoke" / "fig8" / "fig8.pdf").stat().st_size > 1000
    # a second run is recognised as finished and does no training
    proc = cli("run", *TINY_FIG8, f"out_dir={out}", env=env)
    assert proc.returncode == 0 and proc.stderr.count("already finished") == 4


def test_multirun_sweeps_an_override(cli, synthetic_root, tmp_path):
    env = {"ENKF_REPRO_DATA": str(synthetic_root)}
    out = tmp_path / "res"
    proc = cli("run", "-m", *TINY_FIG8, "only=relu", "seed=1,2", f"out_dir={out}", env=env)
    assert proc.returncode == 0, proc.stderr
    dirs = sorted(p.name for p in (out / "smoke" / "fig8").iterdir() if p.is_dir())
    assert len(dirs) == 2 and all(d.startswith("relu-J6-s") for d in dirs)
    assert {d.split("-")[2] for d in dirs} == {"s1", "s2"}


def test_single_run_without_figure(cli, synthetic_root, tmp_path):
    env = {"ENKF_REPRO_DATA": str(synthetic_root)}
    proc = cli("run", "optimizer.ensemble_size=4", "train.max_batches=2", "train.eval_every=8",
               "scale=smoke", "progress=false", f"out_dir={tmp_path}", env=env)
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "smoke" / "runs").iterdir()
    assert run.name.startswith("enkf-paper_cnn-J4-eval_every8-max_batches2-s0-")   # what differs from the defaults


@pytest.mark.parametrize("figure_arg", ["figure=8", "figure=fig8"])
def test_figure_id_forms(cli, figure_arg):
    proc = cli("run", figure_arg, "--cfg", "job")
    assert proc.returncode == 0 and "id: '8'" in proc.stdout
