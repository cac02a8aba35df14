"""`enkf-repro reproduce`: runs, plots and REPORT.md with the paper-versus-rerun table; the
library entries `reproduce` and `plot_figure` called in this process; which runs an override
matches."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from PIL import Image

from enkf_repro.experiments import get_figure
from enkf_repro.runs.cost import describe

# Two figures at smoke scale, shrunk further so the test takes seconds: Figure 2 (drawn) and a
# tiny Figure 8. `++` because Figure 2's config has no per-scale run overrides to override.
TINY = ["scale=smoke", "figures=2,8", "figure.smoke.ensemble_size=6", "figure.smoke.ensemble_sizes=[4]",
        "++figure.smoke.overrides.train.max_batches=2"]


def table_rows(report: str, header: str = "| figure | quantity | paper reports | this run | difference |"
               ) -> list[list[str]]:
    start = report.index(header)
    rows = []
    for line in report[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))])
    return rows


def test_reproduce_two_figures_writes_report_then_reruns_without_training(cli, synthetic_root, tmp_path):
    env = {"ENKF_REPRO_DATA": str(synthetic_root)}
    proc = cli("reproduce", *TINY, f"out_dir={tmp_path}", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "2 figures, 4 runs (0 already finished)" in proc.stderr and "estimated" in proc.stderr
    assert re.search(r"\[4/4\] fig 8 .*ETA", proc.stderr)
    report_path = tmp_path / "smoke" / "REPORT.md"
    report = report_path.read_text()
    assert report.startswith("# enkf-repro report (smoke scale)")
    assert "`enkf-repro reproduce scale=smoke figures=2,8" in report
    rows = table_rows(report)
    fig8 = [r for r in rows if r[0] == "8"]
    assert len(fig8) == 9
    for _fig, _quantity, paper, ours, diff in fig8:
        float(paper)  # the paper column stays a number
        # 2 batches x r = 8 = 16 iterations: neither iteration 500 nor the paper's epoch is reached
        assert ours.startswith("- (not reached: the run ends") and diff.startswith("not reached"), ours
    assert all(cell for row in rows for cell in row)  # no empty cell
    # the claims come first: the paper's statement, what is checked, its unit and threshold, the
    # evidence and a verdict
    assert report.index("## The paper's claims, judged on this run") < report.index("## Paper versus this run")
    claims = table_rows(report, "| figure | the paper | checked here | unit | threshold | evidence in this run "
                                "| holds? |")
    fig8 = get_figure("8").claims
    assert [c[2] for c in claims] == [c.text for c in fig8] and [c[1] for c in claims] == [c.sentence for c in fig8]
    assert all(c[3] and c[4] and c[5] and c[6] in ("yes", "**no**", "not decided") for c in claims)
    assert all(c[6] == "not decided" for c in claims)   # every one speaks of the paper's epoch
    # each figure's runs name the machine that trained them (a report may mix CPU and GPU runs)
    assert "4 runs (4 finished), " in report
    assert re.search(r"min of training in total on " + re.escape(describe(torch.device("cpu"))), report)
    for png in ("fig2/fig2.png", "fig8/fig8.png"):
        assert f"]({png})" in report
        with Image.open(tmp_path / "smoke" / png) as im:
            assert im.size[0] > 400
    csvs = sorted((tmp_path / "smoke" / "fig8").glob("*/metrics.csv.gz"))
    stamps = [c.stat().st_mtime_ns for c in csvs]
    again = cli("reproduce", *TINY, f"out_dir={tmp_path}", env=env)
    assert again.returncode == 0, again.stderr
    assert "(4 already finished); nothing to train" in again.stderr and "[1/" not in again.stderr
    assert [c.stat().st_mtime_ns for c in csvs] == stamps
    # time_budget=0 trains nothing: the report comes from the finished runs, the missing one counted
    gone = csvs[0].parent
    shutil.rmtree(gone)
    partial = cli("reproduce", *TINY, f"out_dir={tmp_path}", "time_budget=0", env=env)
    assert partial.returncode == 0, partial.stderr
    assert "time budget spent; 1 run left" in partial.stderr and "(1 run left)" in partial.stderr
    assert not gone.exists() and "4 runs (3 finished)" in report_path.read_text()


def test_reproduce_rejects_figure_and_bad_scale(cli):
    proc = cli("reproduce", "figure=8")
    assert proc.returncode == 2 and "figures=" in proc.stderr
    proc = cli("reproduce", "scale=huge")
    assert proc.returncode == 2 and "scale='huge'" in proc.stderr


def test_dry_run_prints_the_paper_scale_plan_on_the_proxies_and_trains_nothing(cli, data_root, tmp_path):
    proc = cli("reproduce", "scale=paper", "dataset.test_only=true", "dry_run=true", f"out_dir={tmp_path}",
               env={"ENKF_REPRO_DATA": str(data_root)})
    assert proc.returncode == 0, proc.stderr
    assert "figure | runs | to do | TFLOP to do | estimated" in proc.stderr
    fig1 = next(ln for ln in proc.stderr.splitlines() if ln.startswith("1 | "))
    assert fig1.split(" | ")[1] == "30"                       # 3 families x the paper's 10 seeds
    assert not any(tmp_path.iterdir())                         # nothing trained, nothing written


# The library entries in this process: one tiny run (Figure 8's tanh series) and the drawn Figure 2.
ONE_RUN = ["scale=smoke", "figure.smoke.ensemble_size=6", "figure.smoke.ensemble_sizes=[4]",
           "++figure.smoke.overrides.train.max_batches=2", "only=tanh"]


def test_reproduce_and_plot_figure_as_library_calls(synthetic_root, tmp_path, monkeypatch, capsys):
    import enkf_repro
    from enkf_repro.errors import EnkfReproError
    from enkf_repro.report import reproduce as module

    monkeypatch.setenv("ENKF_REPRO_DATA", str(synthetic_root))
    composed = []

    def counting(overrides):
        composed.append([o for o in overrides if o.startswith("figure=")])
        return compose(overrides)

    compose = module.compose
    monkeypatch.setattr(module, "compose", counting)
    cfg = enkf_repro.reproduce_config(ONE_RUN)   # figure.smoke.* settings kept for the figures that have them
    report = tmp_path / "smoke" / "REPORT.md"

    assert enkf_repro.reproduce(cfg, ["2", "8"], tmp_path, dry_run=True) == report
    err = capsys.readouterr().err
    assert "2 figures, 1 runs (0 already finished)" in err and "\n8 | 1 | 1 | " in err
    assert not any(tmp_path.iterdir())                         # a dry run writes nothing

    composed.clear()
    assert enkf_repro.reproduce(cfg, ["2", "8"], out_dir=tmp_path) == report
    assert composed == [["figure=fig2"], ["figure=fig8"]]      # each figure's config composed once
    assert cfg.out_dir == "results" and f"out_dir={tmp_path}" not in cfg.overrides   # the caller's config
    text = report.read_text()
    assert (f"`enkf-repro reproduce scale=smoke figures=2,8 figure.smoke.ensemble_size=6 "
            f"figure.smoke.ensemble_sizes=[4] ++figure.smoke.overrides.train.max_batches=2 only=tanh "
            f"out_dir={tmp_path}` on ") in text
    assert "](fig2/fig2.png)" in text and "](fig8/fig8.png)" in text
    assert "1 runs (1 finished), " in text
    assert f"report: {report}" in capsys.readouterr().err

    # plot_figure draws from the runs under the figure's folder, kept by the overrides given
    fig8 = enkf_repro.compose(["figure=8", "scale=smoke", f"out_dir={tmp_path}"])
    png, pdf = enkf_repro.plot_figure(fig8)
    assert (png, pdf) == (tmp_path / "smoke" / "fig8" / "fig8.png", tmp_path / "smoke" / "fig8" / "fig8.pdf")
    assert png.stat().st_size > 1000 and pdf.stat().st_size > 1000
    assert enkf_repro.plot_figure(fig8, ["model.activation=relu,tanh", "model.hidden=[]"]) == [png, pdf]
    with pytest.raises(EnkfReproError, match="under .* match model.activation=relu$"):
        enkf_repro.plot_figure(fig8, ["model.activation=relu"])


def test_reproduce_takes_figures_not_a_figure_config():
    import enkf_repro
    from enkf_repro.errors import ConfigError

    with pytest.raises(ConfigError, match="figure='8' is not allowed: reproduce takes figures="):
        enkf_repro.reproduce(enkf_repro.compose(["figure=8"]))


@pytest.mark.parametrize("value,text,same", [
    (0.1, "0.1", True), (0.1, "1e-1", True), (0.1, "0.10001", False), (4, "4.0", True),
    (True, "True", True), (True, "true", True), (False, "true", False),
    (None, "null", True), (None, "none", True), (None, "0", False),
    ([4, 8], "[4,8]", True), ((4, 8), "[4, 8]", True), ([4, 8], "[8,4]", False), ([], "[]", True),
    ("relu", "relu", True), ("relu", "tanh", False),
])
def test_a_config_value_matches_the_text_of_an_override(value, text, same):
    from enkf_repro.report.select import matches

    assert matches(value, text) is same
