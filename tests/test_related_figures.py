"""The related-method figures (eki_table, eki_scaling, thesis): plans, tiny end-to-end runs, paper
numbers, claims.

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
from enkf_repro.runs.folder import read_runs
from enkf_repro.runs.results import COLUMNS
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
    with pytest.raises(ConfigError, match="init.bias_sigma"):
        compose_run(["optimizer=eki", "init.bias_sigma=-0.1"])
    with pytest.raises(Exception, match="annealed"):
        compose_run(["optimizer=eki", "optimizer.random_schedule=annealed"])
    with pytest.raises(Exception, match="pairwise"):
        compose_run(["optimizer=ienk_simple", "optimizer.perturb=pairwise"])
    assert compose_run(["optimizer=eki"]).init.bias_sigma is None


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
    for claim in get_figure("eki_table").claims:               # judged on DNN 2, the one model run
        evidence, holds = claim.check(df, None)
        assert holds in (True, False) and evidence.startswith("DNN 2: ") and "test_error" in evidence
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
    # 2 epochs of 2 batches of 16 synthetic images: the thesis's 10 epochs of 60,000 are not reached
    values = [p.measure(df, None) for p in get_figure("thesis").paper_numbers]
    assert all(v[0] is None and v[1].startswith("not reached: the run ends at the paper's epoch") for v in values)
    for claim in get_figure("thesis").claims:
        evidence, holds = claim.check(df, None)
        assert holds is None and "not decided" in evidence


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


def test_thesis_plans_use_the_thesis_settings():
    """The thesis's README and code: batch 500, data in order, K = 10, IEnK per sample with all
    layers perturbed jointly at lr 0.001; the baselines at Keras's default rates (SGD and NAG
    0.01, Adam 0.001: what reproduces the thesis's numbers); evaluated once per epoch."""
    for scale, every in (("paper", None), ("smoke", 2)):          # None: once per epoch
        by = {s.label: s.cfg for s in planned("thesis", scale)}
        assert set(by) == {"ienk", "sgd", "nag", "adam"}
        for c in by.values():
            assert c.train.batch_size == 500 and c.train.shuffle is False and c.train.eval_every == every
            assert c.model.name.value == "mlp" and c.init.scheme.value == "glorot"
        assert {k: c.optimizer.lr for k, c in by.items()} == {"ienk": 0.001, "sgd": 0.01, "nag": 0.01, "adam": 0.001}
        ienk = by["ienk"].optimizer
        assert (ienk.perturb.value, ienk.mode.value, ienk.ensemble_size) == ("joint", "sample", 10)
        assert by["sgd"].optimizer.momentum == 0.0 and by["nag"].optimizer.nesterov


def final_rows(values: dict[str, float], models=("dnn1",), seeds=1, images: int = 600_000) -> pd.DataFrame:
    """Tidy rows of finished runs: for each series its accuracy (fraction) at the last
    evaluation, after ``images`` training images (the thesis's 10 epochs of 60,000 by default),
    and a worse one earlier (the checks must read the last)."""
    rows = []
    for series, acc in values.items():
        for seed in range(seeds):
            run = f"/runs/{series}-s{seed}"
            model = series.split("-")[0] if "-" in series else "mlp"
            for it, a in ((0, 0.1), (10, acc)):
                rows.append({"series": series, "run_dir": run, "iteration": it, "epoch": it / 5, "pass": it / 5,
                             "model": model, "batch_size": images // 10, "metric": "test_error",
                             "value": 100.0 * (1.0 - a)})
    return pd.DataFrame(rows)


def judge(fig: str, df: pd.DataFrame) -> list:
    return [c.check(df, None) for c in get_figure(fig).claims]


def _ienk_course(accuracy: list[float], train_loss: list[float]) -> pd.DataFrame:
    """IEnK rows as a run writes them: batch 500 (120 steps per thesis epoch), the test error
    after each epoch (and at 0), the training loss as each epoch's mean."""
    rows = [{"series": "ienk", "run_dir": "/runs/ienk-s0", "iteration": 120 * e, "batch_size": 500,
             "metric": "test_error", "value": 100.0 * (1.0 - a)} for e, a in enumerate([0.1] + accuracy)]
    rows += [{"series": "ienk", "run_dir": "/runs/ienk-s0", "iteration": 120 * (e + 1), "batch_size": 500,
              "metric": "train_loss", "value": v} for e, v in enumerate(train_loss)]
    return pd.DataFrame(rows)


def test_the_thesis_diagnosis_tells_a_drifting_iteration_from_overfitting_and_slow_learning():
    why = get_figure("thesis").claims[1].diagnose
    peak = [0.76, 0.82, 0.84, 0.85, 0.86, 0.86, 0.86, 0.85, 0.84, 0.82]
    drifts = why(_ienk_course(peak, [1.2, 0.7, 0.5, 0.41, 0.40, 0.37, 0.38, 0.43, 0.46, 0.53]), None)
    assert drifts == ("IEnK: best test accuracy 0.8600 after epoch 5, 0.8200 after epoch 10; training loss "
                      "(epoch means) 0.370 in epoch 6, 0.530 in epoch 10: its training loss rises with it, so the "
                      "iteration itself drifts away; it does not overfit")
    overfits = why(_ienk_course(peak, [1.2, 0.7, 0.5, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1]), None)
    assert overfits.endswith("0.100 in epoch 10: its training loss keeps falling: it overfits")
    slow = why(_ienk_course([0.5 + 0.03 * e for e in range(10)], [1.0] * 10), None)
    assert slow == ("IEnK: best test accuracy 0.7700 after epoch 10, 0.7700 after epoch 10 (still at its best at "
                    "the end: it learns more slowly than SGD)")
    assert why(_ienk_course([], []).iloc[0:0], None) is None


def test_eki_table_claims():
    df = final_rows({"dnn1-eki": 0.80, "dnn1-eki_r": 0.85, "dnn1-sgd": 0.90,
                     "dnn3-eki": 0.70, "dnn3-eki_r": 0.75, "dnn3-sgd": 0.65})
    (ev_r, r), (ev_s, sgd) = judge("eki_table", df)
    assert r is True and sgd is False                        # SGD is below EKI on DNN 3
    assert ev_r.startswith("DNN 1: EKI(R) 0.8500 vs EKI 0.8000 [K&S 0.9252 vs 0.9092]; DNN 3: EKI(R) 0.7500")
    assert "metric test_error at each run's last evaluation" in ev_r and "4 runs" in ev_s
    assert "DNN 3: SGD 0.6500 vs EKI 0.7000 [K&S 0.9798 vs 0.9424]" in ev_s
    (_, r), (_, sgd) = judge("eki_table", final_rows({"dnn2-eki": 0.8, "dnn2-sgd": 0.9}))
    assert r is None and sgd is True                         # no EKI(R) series: not decided
    (ev, r), _ = judge("eki_table", df[df.series != "dnn1-eki_r"])
    assert r is True and ev.startswith("DNN 3:")             # judged on the DNNs that have both


def test_thesis_claims():
    (ev_a, adam), (ev_c, close) = judge("thesis", final_rows({"ienk": 0.80, "sgd": 0.81, "adam": 0.9}, seeds=2))
    assert adam is True and close is True
    assert ev_a == "Adam 0.9000 vs IEnK 0.8000, after 10 epochs, mean over 2/2 runs; the thesis: 0.9699 vs 0.886"
    assert "IEnK - SGD = -0.0100" in ev_c
    _, (_, close) = judge("thesis", final_rows({"ienk": 0.70, "sgd": 0.81, "adam": 0.9}))
    assert close is False                                    # 11 points apart
    (ev, adam), (_, close) = judge("thesis", final_rows({"ienk": 0.95, "sgd": 0.94}))
    assert adam is None and "missing" in ev and close is True
    # runs that end before the thesis's 10 epochs (here after 2 of them) decide nothing
    (ev, adam), (ev_c, close) = judge("thesis", final_rows({"ienk": 0.80, "sgd": 0.81, "adam": 0.9}, images=120_000))
    assert adam is None and close is None and "not reached: the run ends at the paper's epoch 2" in ev
