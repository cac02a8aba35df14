"""`enkf-repro bench` on tiny sizes (its numbers are machine-dependent; its structure is not), and
the rates it leaves for the cost estimates of `list`."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from enkf_repro.bench import Naive, main


def test_bench_prints_one_table_with_the_eki_row_the_epoch_and_remembers_the_rate(capsys, tmp_path):
    md = tmp_path / "bench.md"
    assert main(["--device", "cpu", "--sizes", "8,12", "--repeats", "1", "--eki-J", "8", "--epoch", "0.002",
                 "--epoch-J", "8", "--naive-budget", "0.05", "--markdown", str(md)]) == 0
    out = capsys.readouterr()
    assert out.out.count("| what | J |") == 1 and "| what | J |" not in out.err   # the table once, on stdout
    rows = [ln for ln in out.out.splitlines() if ln.startswith("| paper_cnn") or ln.startswith("| EKI")]
    assert [r.split("|")[1].strip() for r in rows] == ["paper_cnn fp32", "paper_cnn fp32", "EKI dnn2"]
    assert re.search(r"One 60,000-image epoch at J = 8 .*extrapolated from 15 iterations", out.out)
    assert md.read_text().strip() == out.out.strip()
    rates = json.loads((Path(os.environ["ENKF_REPRO_CACHE"]) / "rates.json").read_text())
    assert rates["cpu"]["source"] == "enkf-repro bench" and rates["cpu"]["flops"] > 0


def test_naive_loop_is_measured_within_budget_and_extrapolated_beyond():
    import torch
    import torch.nn.functional as F

    from enkf_repro.models.paper_cnn import PaperCNNSpec

    spec = PaperCNNSpec("logistic")
    x = torch.rand(4, 1, 28, 28)
    Y = F.one_hot(torch.randint(0, 10, (4,)), 10).float()
    naive = Naive(spec, x, Y, torch.device("cpu"), budget=60.0, max_J=10)
    U = torch.randn(24, spec.num_params) * 0.1
    G = torch.randn(24, 4, 10)
    f10, u10, ext10 = naive.times(U[:10], G[:10])
    f24, u24, ext24 = naive.times(U, G)
    assert not ext10 and ext24 and naive.measured_J == 10       # measured at max_J, extrapolated beyond
    assert abs(f24 / f10 - 2.4) < 1e-9 and abs(u24 / u10 - 2.4) < 1e-9


def test_list_is_cached_and_says_where_its_rate_comes_from(cli):
    first = cli("list")
    assert first.returncode == 0 and "GFLOP/s on this CPU (" in first.stdout
    t0 = time.perf_counter()
    again = cli("list")
    assert again.stdout == first.stdout and time.perf_counter() - t0 < 1.0


def test_bench_rows_carry_host_times_errors_and_stream_to_jsonl(capsys, tmp_path):
    """Each row has the host's share of the forward and the iteration, the forward's and the
    update's error against float64 (fp32 on this CPU: fp32 accuracy), and is appended to the
    JSON-lines file as soon as it is measured (one line per row, the epoch last)."""
    jsonl = tmp_path / "rows.jsonl"
    assert main(["--device", "cpu", "--sizes", "6,9", "--repeats", "1", "--eki-J", "0", "--naive-budget", "0.05",
                 "--batch", "5", "--epoch", "0.001", "--epoch-J", "6", "--jsonl", str(jsonl)]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(r["what"], r["J"]) for r in rows] == [("paper_cnn fp32", 6), ("paper_cnn fp32", 9), ("epoch", 6)]
    for r in rows[:2]:
        assert r["route"] == "torch" and 0 < r["fwd_host_ms"] and 0 < r["tot_host_ms"]
        assert r["fwd_err"] < 1e-5 and r["upd_err"] < 1e-3
        assert f"| {r['fwd_err']:.1e} | {r['upd_err']:.1e} |" in out
    assert "batch 5," in out and "forward ms (host)" in out
