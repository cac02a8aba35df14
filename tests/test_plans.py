"""GPU plans (``list`` and ``reproduce dry_run=true`` on a named device at a measured or given
rate, with memory per run and a total), ``list``'s figures and scale and the key of its cached
table, and the small walls of the command line: ``plot`` without a figure, ``run --help``,
``bench --help``, another method's key, /proc/cpuinfo left open."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import pytest
import torch

from enkf_repro.errors import ConfigError


def test_rates_parse():
    from enkf_repro.runs.cost import parse_rate

    assert parse_rate("60T") == parse_rate("6e13") == parse_rate("60 TFLOP/s") == 60e12
    assert parse_rate("800G") == 800e9
    with pytest.raises(ConfigError, match="rate='fast' is not allowed: a rate in FLOP/s"):
        parse_rate("fast")


def test_memory_per_run_follows_the_ensemble():
    from enkf_repro.api import compose
    from enkf_repro.runs.memory import estimate_memory

    def mem(*ov, device="cuda"):
        return estimate_memory(compose(["optimizer=eki", "model=dnn2", *ov]), device)

    P = 84_060 + 10                                                    # DNN 2's parameters, roughly
    small, big = mem("optimizer.ensemble_size=500"), mem("optimizer.ensemble_size=5000")
    assert big - small >= 4 * 4500 * P                                  # at least the extra J x P fp32
    assert mem("optimizer.momentum=nesterov", "optimizer.ensemble_size=5000") - big >= 4 * 5000 * P
    assert mem("optimizer.ensemble_size=5000", device="cpu") < big      # a CPU chunk is 16 members
    sgd = estimate_memory(compose(["optimizer=sgd"]), "cuda")
    assert sgd < 400 * 2**20                                            # the data and one small network


def test_reproduce_dry_run_plans_a_named_device(cli, synthetic_root, tmp_path):
    base = ["reproduce", "scale=smoke", "figures=8,thesis", "dry_run=true", "device=cuda",
            f"dataset.root={synthetic_root}", f"out_dir={tmp_path}"]
    proc = cli(*base, "rate=60T", check=True)
    assert "on cuda (at 60000 GFLOP/s, given)" in proc.stderr
    lines = proc.stderr.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("figure | runs"))
    assert lines[head] == "figure | runs | to do | TFLOP to do | estimated on cuda | memory per run (largest)"
    rows = {ln.split(" | ")[0]: ln.split(" | ") for ln in lines[head + 2:] if " | " in ln}
    assert set(rows) == {"8", "thesis", "total"}
    assert int(rows["total"][1]) == int(rows["8"][1]) + int(rows["thesis"][1])
    assert rows["8"][5].endswith("B") and rows["total"][5] == max(rows["8"][5], rows["thesis"][5], key=_bytes)
    assert not list(tmp_path.rglob("*.csv*"))                            # nothing run
    unknown = cli(*base, check=True)
    assert "estimated ? on cuda (no cuda rate measured here: give rate=" in unknown.stderr


def _bytes(text):
    value, unit = text.split()
    return float(value) * {"bytes": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]


def test_list_plans_a_named_device_with_a_total(monkeypatch):
    from enkf_repro.experiments import base
    from enkf_repro.report.listing import figure_table

    monkeypatch.setattr(base, "figure_ids", lambda: ["8", "thesis"])
    text = figure_table(["device=cuda"], rate="50T")
    rows = [ln for ln in text.splitlines() if " | " in ln]
    assert rows[-1].startswith("total | every figure |") and len(rows) == 5
    assert all("cuda " in r and " per run)" in r for r in rows[2:])
    assert "50 TFLOP/s on cuda (given)" in text and "100 TFLOP" not in text
    none = figure_table(["device=cuda"])
    assert "cuda ?" in none and "no cuda rate measured here" in none


@pytest.mark.parametrize("only,labels", [
    ("J100", ["logistic-J100"]),                       # a word, not a prefix of J10000
    ("logistic-J100", ["logistic-J100"]),
    ("relu", ["relu-J5000"]),
    ("*J100*", ["logistic-J100", "logistic-J10000"]),  # a glob when asked for
    ("tanh|J10000", ["tanh-J5000", "logistic-J10000"]),
    ("J5000", ["logistic-J5000", "relu-J5000", "tanh-J5000"]),
])
def test_only_selects_series_by_whole_words(only, labels):
    from enkf_repro.config.compose import compose
    from enkf_repro.runs.runner import plan

    assert [s.label for s in plan(compose(["figure=fig8", "scale=paper", f"only={only}"]))] == labels
    with pytest.raises(ConfigError, match="only='J10' is not allowed: a pattern matching one of: logistic-J5000"):
        plan(compose(["figure=fig8", "scale=paper", "only=J10"]))


def test_list_names_figures_and_a_scale(cli):
    """``list figures=8,thesis scale=smoke``: those rows and that column only, totals over them;
    ``figure=`` (reproduce's spelling) and an unknown scale or figure are one line each; an
    override one figure cannot take names that figure."""
    proc = cli("list", "figures=8,thesis", "scale=smoke", check=True)
    rows = [ln.split(" | ") for ln in proc.stdout.splitlines() if " | " in ln]
    assert rows[0] == ["figure", "what it shows", "smoke"]
    assert [r[0] for r in rows[2:]] == ["8", "thesis", "total"] and all(len(r) == 3 for r in rows)
    runs = [int(r[2].split()[0]) for r in rows[2:]]
    assert runs[0] + runs[1] == runs[2] and rows[2][2].startswith("5 runs") and rows[-1][1] == "figures 8, thesis"
    twice = cli("list", "figures=8,fig8", "scale=smoke", check=True).stdout    # one row, counted once
    assert [ln.split(" | ")[2] for ln in twice.splitlines() if ln.startswith(("8 |", "total |"))] == [rows[2][2]] * 2
    for args, text in ((["figure=8"], "figure='8' is not allowed: list takes figures=ID,ID,..."),
                       (["scale=tiny"], "scale='tiny' is not allowed: smoke or paper"),
                       (["figures=8,99"], "figure='99' is not allowed: one of 1, 2, 3"),
                       (["figures=1,8", "optimizer.gamma=0.5"],
                        "figure 1 at scale=smoke: optimizer.gamma=0.5 is not allowed: optimizer has no key 'gamma'")):
        bad = cli("list", *args)
        assert bad.returncode == 2 and text in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_the_list_cache_follows_content_not_place(tmp_path):
    """A fresh clone (same files elsewhere, newer times) finds the table listed before; a changed
    config, a renamed file or other overrides do not."""
    import os
    import shutil

    from enkf_repro.config.overrides import config_dir
    from enkf_repro.report.listing import _cache_key

    pkg = Path(__file__).resolve().parents[1] / "enkf_repro"
    ignore = shutil.ignore_patterns("__pycache__")
    clones = []
    for name in ("a", "b"):
        root = tmp_path / name / "deeper" if name == "b" else tmp_path / name
        shutil.copytree(pkg, root / "enkf_repro", ignore=ignore)
        shutil.copytree(config_dir(), root / "configs", ignore=ignore)
        clones.append((root / "enkf_repro", root / "configs"))
    later = clones[1][1] / "scale" / "smoke.yaml"
    os.utime(later, (later.stat().st_atime, later.stat().st_mtime + 3600))
    key = _cache_key([], None, clones[0])
    assert _cache_key([], None, clones[1]) == key
    assert _cache_key(["dataset.test_only=true"], None, clones[0]) != key
    assert _cache_key([], "60T", clones[0]) != key
    with later.open("a") as f:
        f.write("# a comment\n")
    assert _cache_key([], None, clones[1]) != key
    moved = clones[0][1] / "scale" / "smoke.yaml"
    moved.rename(moved.with_name("tiny.yaml"))
    assert _cache_key([], None, clones[0]) != key


def test_plot_without_a_figure_lists_them(cli):
    proc = cli("plot", "scale=smoke")
    assert proc.returncode == 2 and "None" not in proc.stderr
    assert "plot needs figure=ID, one of 1, 2, 3" in proc.stderr and "thesis" in proc.stderr


def test_run_help_lists_real_choices(cli):
    out = cli("run", "--help").stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("optimizer:"))
    assert line == "optimizer: adam, eki, enkf, etki, haber, ienk_simple, sgd"
    assert "_schema" not in out and "figure_settings" not in out and "== Config ==" in out


def test_every_bench_flag_is_explained(capsys):
    from enkf_repro.bench import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    flags = [ln.split()[0] for ln in out.splitlines() if ln.startswith("  --")]
    assert len(flags) >= 15
    for flag in flags:                                   # each flag's entry runs on to a sentence of help
        block = out.split("\n  " + flag, 1)[1].split("\n  -", 1)[0]
        assert len(block.split()) > 3, (flag, block)


def test_another_methods_key_names_its_method(cli):
    proc = cli("run", "optimizer=enkf", "optimizer.h0=1")
    assert proc.returncode == 2
    assert "h0 belongs to optimizer=eki and optimizer=etki" in proc.stderr


def test_describing_the_cpu_leaves_no_file_open():
    from enkf_repro.runs.cost import describe

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        describe(torch.device("cpu"))
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
