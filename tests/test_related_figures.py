"""The issue-7 figures (eki_table, eki_scaling, thesis): plans, tiny end-to-end runs, paper numbers.

End-to-end runs go through the library (``run_figure`` / ``plot_figure``, what the CLI calls) in
this process, to stay fast; the command line itself is covered by test_cli.py.
"""

from __future__ import annotations

import functools

import pandas as pd
import pytest
from PIL import Image

from conftest import compose_run
from enkf_repro.errors import ConfigError
from enkf_repro.experiments import get_figure
from enkf_repro.report.render import plot_figure
from enkf_repro.runs.results import COLUMNS, read_runs
from enkf_repro.runs.runner import plan, run_figure, run_one


@functools.lru_cache(maxsize=None)
def planned(fig: str, scale: str):
    ov = [f"figure={fig}", f"scale={scale}"]
    return plan(compose_run(ov))


@pytest.mark.parametrize("fig,n", [("eki_table", 24), ("eki_scaling", 20), ("thesis", 4)])
def test_paper_plans_compose(fig, n):
    specs = planned(fig, "paper")
    assert len(specs) == n
    assert all(s.cfg.init.scheme.value == "glorot" and not s.cfg.dataset.test_only for s in specs)


def test_smoke_plans_use_the_t10k_split_for_both_datasets():
    specs = planned("eki_scaling", "smoke")
    assert len(specs) == 12 and all(s.cfg.dataset.test_only for s in specs)
    assert {s.cfg.dataset.name.value for s in specs} == {"mnist", "fashion_mnist"}


def test_eki_table_plan_settings():
    by = {s.label: s.cfg for s in planned("eki_table", "paper")}
    assert by["dnn3-eki_r"].optimizer.ensemble_size == 2000 and by["dnn3-eki_r"].optimizer.randomize
    assert list(by["dnn3-eki_r"].model.hidden) == [128, 128]
    assert by["dnn1-meki"].optimizer.momentum.value == "nesterov" and not by["dnn1-meki"].optimizer.randomize
    assert by["dnn4-sgd"].optimizer.momentum == 0.0 and by["dnn4-msgd"].optimizer.momentum == 0.9
    assert by["dnn2-eki"].train.epochs == 10
    assert "optimizer.ensemble_size" not in str(by["dnn2-sgd"].optimizer)


def test_unknown_method_in_a_figure_is_a_config_error():
    ov = ["figure=eki_table", "scale=smoke", "figure.smoke.optimizers=[sgd,ekx]"]
    with pytest.raises(ConfigError, match="ekx"):
        plan(compose_run(ov))


def test_bad_optimizer_values_are_config_errors():
    with pytest.raises(ConfigError, match="optimizer.h0"):
        compose_run(["optimizer=eki", "optimizer.h0=-1"])
    with pytest.raises(ConfigError, match="optimizer.momentum_coef"):
        compose_run(["optimizer=eki", "optimizer.momentum_coef=1.5"])
    with pytest.raises(Exception, match="heavy"):
        compose_run(["optimizer=eki", "optimizer.momentum=heavy"])


# synthetic data has full train/test files: no t10k-only split, the whole 320-image test set
SYNTH = ["dataset.test_only=false", "dataset.test_size=null", "progress=false"]


def run_and_plot(root, tmp_path, fig, *extra):
    ov = [f"figure={fig}", "scale=smoke", *SYNTH, f"dataset.root={root}", *extra, f"out_dir={tmp_path / 'res'}"]
    cfg = compose_run(ov)
    d = run_figure(cfg)
    paths = plot_figure(cfg, [])
    with Image.open(d / f"{fig}.png") as im:
        assert im.size[0] > 400 and im.size[1] > 150
    assert {p.suffix for p in paths} == {".png", ".pdf"}
    df = read_runs(d)
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS and df["finished"].all()
    return d, df


def test_tiny_eki_table_end_to_end(synthetic_root, tmp_path):
    d, df = run_and_plot(synthetic_root, tmp_path, "eki_table", "figure.smoke.ensemble_size=4", "only=dnn2",
                         "figure.smoke.overrides.train.max_batches=3", "figure.smoke.overrides.train.eval_every=3")
    assert df["run_dir"].nunique() == 6
    eki = df[df["series"] == "dnn2-eki_r"]
    assert {"test_error", "test_error_best", "random_gamma", "step_size"} <= set(eki["metric"])
    assert eki[eki.metric == "test_error"]["iteration"].max() == 3
    tab = pd.read_csv(d / "eki_table.csv")
    assert len(tab) == 2 + 4 * 2                       # 2 baselines + 4 methods x (mean, best)
    assert tab["accuracy"].between(0, 1).all()
    assert float(tab[tab.method == "sgd"]["reported"].iloc[0]) == 0.9735
    md = (d / "eki_table.md").read_text()
    assert "| EKI(R) (mean) |" in md and "(0.9721)" in md and "| DNN 2 |" in md
    values = {p.quantity: p.measure(df, None) for p in get_figure("eki_table").paper_numbers}
    assert len(values) == 12
    dnn2 = [v for q, v in values.items() if q.endswith("DNN 2")]
    assert len(dnn2) == 3 and all(v is not None and 0 <= v <= 1 for v in dnn2)


def test_tiny_eki_scaling_end_to_end(synthetic_root, tmp_path):
    _, df = run_and_plot(synthetic_root, tmp_path, "eki_scaling", "figure.smoke.ensemble_sizes=[3,5]",
                         "figure.smoke.overrides.train.max_batches=2", "figure.smoke.overrides.train.eval_every=2")
    assert df["run_dir"].nunique() == 8
    assert set(df["dataset"]) == {"mnist", "fashion_mnist"} and set(df["ensemble_size"]) == {3, 5}


def test_tiny_thesis_end_to_end(synthetic_root, tmp_path):
    _, df = run_and_plot(synthetic_root, tmp_path, "thesis", "train.batch_size=16",
                         "figure.smoke.overrides.train.epochs=2", "figure.smoke.overrides.train.max_batches=2",
                         "figure.smoke.overrides.train.eval_every=2")
    assert set(df["series"]) == {"ienk", "sgd", "nag", "adam"}
    ienk = df[(df["series"] == "ienk") & (df["metric"] == "test_error")]
    assert ienk["iteration"].tolist() == [0, 2, 4] and ienk["pass"].max() == 2
    values = [p.measure(df, None) for p in get_figure("thesis").paper_numbers]
    assert all(v is not None and 0 <= v <= 1 for v in values)


@pytest.mark.parametrize("args", [["optimizer=haber", "model=dnn2", "optimizer.ensemble_size=6"],
                                  ["optimizer=ienk_simple", "model=paper_cnn", "optimizer.mode=batch"],
                                  ["optimizer=eki", "model=paper_cnn", "optimizer.ensemble_size=5",
                                   "optimizer.loss=mse"]])
def test_single_runs_of_each_method_on_dense_and_cnn_models(synthetic_root, tmp_path, args):
    ov = [*args, f"dataset.root={synthetic_root}", "train.max_batches=2", "train.eval_every=2", "scale=smoke",
          "progress=false", f"out_dir={tmp_path}"]
    (spec,) = plan(compose_run(ov))
    assert run_one(spec)["status"] == "finished"
    err = read_runs(spec.dir.parent).query("metric == 'test_error'")
    assert err["iteration"].tolist() == [0, 2] and err["value"].between(0, 100).all()
