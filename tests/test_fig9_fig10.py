"""Figures 9 and 10 end to end at a tiny size: run, CSV contents, plot, paper numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from PIL import Image
from test_letters import make_letter_folders

from enkf_repro.experiments import get_figure
from enkf_repro.optim.adaptive import decide, decide_as_run
from enkf_repro.runs.folder import read_runs


def _paper_numbers(fig_id, fig_dir, *overrides):
    """The figure's paper numbers read off the runs in ``fig_dir``, planned with ``overrides``."""
    from enkf_repro.config.compose import compose

    df = read_runs(fig_dir)
    cfg = compose([f"figure=fig{fig_id}", "scale=smoke", *overrides])
    return {p.quantity: p.measure(df, cfg) for p in get_figure(fig_id).paper_numbers}


def test_figure9_on_letter_folders(cli, tmp_path):
    make_letter_folders(tmp_path / "data", per_class=10, corrupt=1)   # 100 readable + 1 corrupt
    out = tmp_path / "res"
    args = ["figure=9", "scale=smoke", "figure.smoke.ensemble_sizes=[4,8]", "dataset.test_only_train_size=64",
            "figure.smoke.overrides.train.max_batches=1", "figure.smoke.overrides.train.eval_every=4",
            "progress=false", f"out_dir={out}"]
    proc = cli("run", *args, env={"ENKF_REPRO_DATA": str(tmp_path / "data")})
    assert proc.returncode == 0, proc.stderr
    # one warning line for the corrupt file (the data is loaded once for both runs)
    assert (proc.stdout + proc.stderr).count("skipped 1 unreadable image file (e.g. C/broken0.png)") == 1
    runs = sorted((out / "smoke" / "fig9").glob("*/metrics.csv.gz"))
    assert [p.parent.name.split("-")[0] for p in runs] == ["J4", "J8"]
    for csv in runs:
        err = pd.read_csv(csv).query("metric == 'test_error'")
        assert err["iteration"].tolist() == [0, 4, 8]     # 1 batch x r = 8, every 4 iterations
        assert err["dataset"].eq("notmnist").all() and err["value"].between(0, 100).all()
    proc = cli("plot", "figure=9", "scale=smoke", f"out_dir={out}")
    assert proc.returncode == 0, proc.stderr
    with Image.open(out / "smoke" / "fig9" / "fig9.png") as im:
        assert im.size[0] > 400
    # read after the paper's epoch of 60,000 letters: these runs see 64 images
    nums = _paper_numbers("9", out / "smoke" / "fig9", "figure.smoke.ensemble_sizes=[4,8]")
    assert all(v[0] is None and "not reached" in v[1] for v in nums.values()), nums


@pytest.mark.parametrize("rule", ["as_run", "printed"])
def test_figure10_fixed_and_adaptive(cli, synthetic_root, tmp_path, rule):
    out = tmp_path / "res"
    # epsilon = kappa = 100: every improvement shrinks (J 40 -> 30 -> 20 ..., r 8 -> 7 -> 6 ...)
    args = ["figure=10", "scale=smoke", "figure.smoke.ensemble_size=40", "train.max_batches=4",
            "train.eval_every=4", "optimizer.adaptive.tau=4", "optimizer.adaptive.epsilon=100",
            "optimizer.adaptive.kappa=100", "optimizer.adaptive.v=10", "optimizer.adaptive.b_l=10",
            "optimizer.adaptive.b_u=60", f"optimizer.adaptive.rule={rule}", "progress=false", f"out_dir={out}"]
    proc = cli("run", *args, env={"ENKF_REPRO_DATA": str(synthetic_root)})
    assert proc.returncode == 0, proc.stderr
    fig_dir = out / "smoke" / "fig10"
    (fixed,) = fig_dir.glob("fixed-J40-*/metrics.csv.gz")
    (adaptive,) = fig_dir.glob("adaptive-J40-*/metrics.csv.gz")
    f, a = pd.read_csv(fixed), pd.read_csv(adaptive)
    assert not f["metric"].str.startswith("adaptive_").any()
    assert f.query("metric == 'test_error'")["iteration"].max() == 4 * 8
    wide = a.pivot_table(index="iteration", columns="metric", values="value")
    # J, r and N at every evaluation
    assert wide[["test_error", "adaptive_ensemble_size", "adaptive_repetitions", "adaptive_budget"]].notna().all().all()
    # replay Algorithm 1 on the logged errors: every decision, J and r as the rule says (as_run:
    # the untrained error is t_0)
    J, r, shrinks, budget = 40, 8, 0, 4 * 8
    prev = wide.loc[0, "test_error"] if rule == "as_run" else None
    for it, row in wide.iterrows():
        finished = it >= budget or (rule == "printed" and it == wide.index.max())   # the epoch's end
        budget = row["adaptive_budget"]
        if it == 0 or it % 4 or finished:
            assert row["adaptive_decision"] == 0
            continue
        params = dict(epsilon=100, kappa=100, v=10, b_l=10, b_u=60)
        d = (decide_as_run(row["test_error"], prev, J, r, r_max=8, **params) if rule == "as_run"
             else decide(row["test_error"], prev, J, r, **params))
        assert row["ensemble_size"] == J                       # the J that produced this error
        assert (row["adaptive_decision"], row["adaptive_ensemble_size"], row["adaptive_repetitions"]) \
            == (d.action, d.ensemble_size, d.repetitions), it
        J, r, prev = d.ensemble_size, d.repetitions, row["test_error"]
        shrinks += d.action == -1
    assert shrinks >= 1
    assert wide["adaptive_budget"].iloc[-1] == wide.index.max()
    assert wide.index.max() < 4 * 8           # the adaptive run ends before the fixed one
    proc = cli("plot", "figure=10", "scale=smoke", f"out_dir={out}")
    assert proc.returncode == 0, proc.stderr
    with Image.open(fig_dir / "fig10.png") as im:
        assert im.size[0] > 500
    nums = _paper_numbers("10", fig_dir)
    gap, where = nums["test error there, adaptive - fixed (points)"]
    assert math.isfinite(gap) and where == f"at it {wide.index.max()}"   # where the adaptive run ends
    assert nums["ensemble size J at the end, adaptive"] == J
    assert all(v is None or math.isfinite(v if not isinstance(v, tuple) else v[0]) for v in nums.values())
