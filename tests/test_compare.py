"""`enkf-repro compare` and `enkf_repro.compare` / `read_runs` on a small sweep of synthetic runs:
groups and their means over seeds against a hand computation from the CSVs, the files, `where=`,
a run still going, and the one-line errors."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

import enkf_repro
from enkf_repro.errors import ConfigError, EnkfReproError
from enkf_repro.runs.results import COLUMNS

# 2 ensemble sizes x 2 seeds, 2 batches x r = 2: 4 iterations each, evaluated at every one.
SWEEP = ["optimizer.ensemble_size=4,6", "seed=0,1", "train.max_batches=2", "optimizer.repetitions=2",
         "train.eval_every=1", "scale=smoke", "progress=false"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, synthetic_root) -> Path:
    """The out_dir of the sweep (runs in <out_dir>/smoke/runs/); do not modify it, copy it."""
    import torch

    from enkf_repro.cli import main

    out = tmp_path_factory.mktemp("sweep")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny tensors; on a busy machine more threads only add contention
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ENKF_REPRO_DATA", str(synthetic_root))
            mp.delenv("HYDRA_FULL_ERROR", raising=False)
            assert main(["run", "-m", *SWEEP, f"out_dir={out}"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert len(list((out / "smoke" / "runs").glob("*/done.json"))) == 4
    return out


def by_hand(root: Path, metric: str = "test_error") -> pd.DataFrame:
    """Each run's last value of ``metric`` and its config's ensemble size and seed, straight from
    the files (complete lines only)."""
    rows = []
    for csv in sorted(root.rglob("metrics.csv*")):   # the plain CSV while a run goes, gzip once finished
        text = (gzip.decompress(csv.read_bytes()) if csv.suffix == ".gz" else csv.read_bytes()).decode()
        lines = text[: text.rfind("\n") + 1]
        df = pd.read_csv(pd.io.common.StringIO(lines))
        df = df[df.metric == metric].sort_values("iteration")
        cfg = yaml.safe_load((csv.parent / "config.yaml").read_text())
        rows.append({"J": cfg["optimizer"]["ensemble_size"], "seed": cfg["seed"], "final": df["value"].iloc[-1],
                     "last": df["iteration"].iloc[-1], "finished": (csv.parent / "done.json").exists(),
                     "curve": df.set_index("iteration")["value"]})
    return pd.DataFrame(rows)


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()
        return im.size


def test_compare_by_one_key_means_over_seeds(sweep, tmp_path):
    res = enkf_repro.compare(sweep, by="optimizer.ensemble_size", scale="smoke", out=tmp_path)
    hand = by_hand(sweep)
    assert list(res.table["optimizer.ensemble_size"]) == [4, 6]
    for _, row in res.table.iterrows():
        runs = hand[hand.J == row["optimizer.ensemble_size"]]
        assert row["runs"] == 2 and row["finished"] == 2 and row["last_iteration"] == 4
        assert row["final_mean"] == pytest.approx(runs["final"].mean())
        assert row["final_std"] == pytest.approx(runs["final"].std(ddof=0))
        curve = res.curves[res.curves["optimizer.ensemble_size"] == row["optimizer.ensemble_size"]]
        assert list(curve["iteration"]) == [0, 1, 2, 3, 4]
        assert curve["mean"].to_numpy() == pytest.approx(pd.concat(list(runs["curve"]), axis=1).mean(axis=1).to_numpy())
    assert res.notes == []    # nothing but the seed varies within a group
    names = sorted(p.name for p in res.paths)
    assert names == sorted(f"compare-ensemble_size.{ext}" for ext in ("png", "pdf", "md", "csv"))
    assert all(p.parent == tmp_path and p.stat().st_size > 0 for p in res.paths)
    w, h = png_size(tmp_path / "compare-ensemble_size.png")
    assert w > 500 and w / h < 2                     # one panel
    csv = pd.read_csv(tmp_path / "compare-ensemble_size.csv")
    assert list(csv.columns) == ["optimizer.ensemble_size", "metric", "final_mean", "final_std", "runs", "finished",
                                 "last_iteration", "last_iteration_min"]
    assert csv["final_mean"].to_numpy() == pytest.approx(res.table["final_mean"].to_numpy())
    assert "| optimizer.ensemble_size | mean | std | runs | finished | last iteration |" in res.markdown


def test_compare_command_prints_paths_and_table(cli, sweep, tmp_path):
    proc = cli("compare", f"out_dir={sweep}", "scale=smoke", "by=optimizer.ensemble_size", f"out={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:4] == [str(tmp_path / f"compare-ensemble_size.{e}") for e in ("png", "pdf", "md", "csv")]
    table = [ln for ln in lines if ln.startswith("| 4 |") or ln.startswith("| 6 |")]
    assert len(table) == 2 and all(ln.endswith("| 2 | 2 | 4 |") for ln in table)
    assert proc.stderr == ""


def test_compare_by_two_keys_adds_a_heat_map(sweep, tmp_path):
    res = enkf_repro.compare(sweep, by=["optimizer.ensemble_size", "seed"], metric="test_loss", out=tmp_path)
    hand = by_hand(sweep, "test_loss")
    assert len(res.table) == 4 and (res.table["runs"] == 1).all() and (res.table["final_std"] == 0).all()
    pairs = [tuple(x) for x in res.table[["optimizer.ensemble_size", "seed"]].to_numpy()]
    assert pairs == [(4, 0), (4, 1), (6, 0), (6, 1)]
    for _, row in res.table.iterrows():
        (final,) = hand[(hand.J == row["optimizer.ensemble_size"]) & (hand.seed == row["seed"])]["final"]
        assert row["final_mean"] == pytest.approx(final)
    png = tmp_path / "compare-ensemble_size-seed-test_loss.png"
    w, h = png_size(png)
    assert w / h > 2                                  # lines and the heat map side by side
    assert png.with_suffix(".pdf").stat().st_size > 1000


def test_where_keeps_matching_runs(cli, sweep, tmp_path):
    hand = by_hand(sweep)
    res = enkf_repro.compare(sweep, by="seed", where="optimizer.ensemble_size=6", out=tmp_path)
    assert list(res.table["seed"]) == [0, 1] and (res.table["runs"] == 1).all()
    assert list(res.table["final_mean"]) == pytest.approx(list(hand[hand.J == 6].sort_values("seed")["final"]))
    # a comma list means any of the values; a section means its name; a mapping works too
    res = enkf_repro.compare(sweep, by="seed", where=["optimizer.ensemble_size=4,6", "dataset=mnist"], out=tmp_path)
    assert list(res.table["runs"]) == [2, 2]
    assert res.notes and "optimizer.ensemble_size (4, 6)" in res.notes[0]   # averaged over J: said so
    res = enkf_repro.compare(sweep, by="seed", where={"optimizer.ensemble_size": [4]}, out=tmp_path)
    assert list(res.table["runs"]) == [1, 1]
    proc = cli("compare", f"out_dir={sweep}", "by=seed", "where=optimizer.ensemble_size=4", "where=seed=1",
               f"out={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert [ln[:5] for ln in proc.stdout.splitlines() if ln.startswith("| ") and ln[2].isdigit()] == ["| 1 |"]


def test_a_run_still_going_is_included(cli, sweep, tmp_path):
    out = tmp_path / "res"
    shutil.copytree(sweep, out)
    (going,) = (out / "smoke" / "runs").glob("*-J4-*s1-*")
    (going / "done.json").unlink()
    csv = going / "metrics.csv"
    lines = gzip.decompress((going / "metrics.csv.gz").read_bytes()).decode().splitlines(keepends=True)
    (going / "metrics.csv.gz").unlink()   # back to a run still writing its plain CSV
    cut = next(i for i, ln in enumerate(lines) if ",2,0." in ln)    # first row of iteration 2
    csv.write_text("".join(lines[:cut]) + lines[cut][:25])           # and half of it
    hand = by_hand(out)
    res = enkf_repro.compare(out, by="optimizer.ensemble_size")
    row = res.table[res.table["optimizer.ensemble_size"] == 4].iloc[0]
    assert row["runs"] == 2 and row["finished"] == 1
    assert row["last_iteration"] == 4 and row["last_iteration_min"] == 1
    assert row["final_mean"] == pytest.approx(hand[hand.J == 4]["final"].mean())
    assert "| 4 |" in res.markdown and "| 2 | 1 | 1-4 |" in res.markdown
    runs = enkf_repro.read_runs(out)
    assert runs.groupby("run_dir")["finished"].first().sum() == 3 and runs["run_dir"].nunique() == 4
    # without out=, the files go into the folder compared
    proc = cli("compare", f"out_dir={out}", "by=optimizer.ensemble_size", "scale=smoke", "folder=runs")
    assert proc.returncode == 0, proc.stderr
    assert "| 4 | " in proc.stdout and (out / "smoke" / "runs" / "compare-ensemble_size.png").is_file()


def test_read_runs_any_depth_and_config_columns(sweep):
    df = enkf_repro.read_runs(sweep)
    assert list(df.columns) == COLUMNS + ["finished", "mtime", "run_dir"]     # the default is unchanged
    assert df["run_dir"].nunique() == 4 and df["finished"].all()
    one = sorted((sweep / "smoke" / "runs").iterdir())[0]
    assert enkf_repro.read_runs(one)["run_dir"].nunique() == 1
    df = enkf_repro.read_runs(sweep, with_config=["optimizer.ensemble_size", "dataset", "train.max_batches"])
    assert (df["optimizer.ensemble_size"] == df["ensemble_size"]).all()
    assert set(df["dataset.name"]) == {"mnist"} and set(df["train.max_batches"]) == {2}
    every = enkf_repro.read_runs(sweep, with_config=True)
    assert {"optimizer.gamma", "model.activation", "init.sigma"} <= set(every.columns)
    with pytest.raises(ConfigError, match="did you mean 'ensemble_size'"):
        enkf_repro.read_runs(sweep, with_config="optimizer.ensemble_sise")


def test_errors_are_one_line(cli, sweep, tmp_path):
    def error(*args):
        proc = cli("compare", *args)
        assert proc.returncode == 2, proc.stdout
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        return proc.stderr

    (tmp_path / "empty").mkdir()
    assert "no runs under" in error(f"out_dir={tmp_path / 'empty'}", "by=seed")
    msg = error(f"out_dir={sweep}", "by=optimizer.gama")
    assert "'optimizer.gama' is in no run's config" in msg and "did you mean 'gamma'" in msg
    assert "its keys:" in msg and "ensemble_size" in msg and "the runs differ in optimizer.ensemble_size (4, 6)" in msg
    assert "did you mean 'optimizer.gamma'" in error(f"out_dir={sweep}", "by=gama")
    msg = error(f"out_dir={sweep}", "by=seed", "metric=test_eror")
    assert "did you mean 'test_error'" in msg and "test_loss" in msg and "ensemble_spread" in msg
    assert "matches where=optimizer.ensemble_size=5" in error(f"out_dir={sweep}", "by=seed",
                                                               "where=optimizer.ensemble_size=5")
    assert "a folder of runs under" in error(f"out_dir={sweep}", "scale=paper", "by=seed")
    assert "by=" in error(f"out_dir={sweep}")
    assert "did you mean 'metric'" in error(f"out_dir={sweep}", "by=seed", "metrc=test_loss")
    with pytest.raises(EnkfReproError, match="no runs under"):
        enkf_repro.compare(tmp_path / "empty", by="seed")
    assert cli("compare", "--help").stdout.startswith("usage: enkf-repro compare")
