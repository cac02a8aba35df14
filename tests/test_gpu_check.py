"""scripts/gpu_check.py's summary: each GPU target met, missed or not measured from the rows the
steps wrote, step status from check.log (a killed step shows, what it measured stays)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def row(precision, J, tot, **kw):
    return {"what": f"paper_cnn {precision}", "J": J, "tot_ms": tot, "fwd_ms": tot / 2, "upd_ms": tot / 2,
            "route": "triton tf32x3", "fwd_err": 1e-6, **kw}


def verdicts(rows, dry=False):
    return [v for _, v, _ in gpu_check.targets(rows, dry)]


def test_each_target_is_met_missed_or_not_measured():
    rows = [row("fp32", 1000, 3.0, naive_tot_ms=300.0, speedup_tot=100.0, naive_extrapolated=False),
            row("fp32", 5000, 11.0), row("fp32", 20000, 44.0),
            row("tf32", 5000, 6.0), row("tf32", 20000, 20.0),
            {"what": "epoch", "J": 5000, "epoch_s": 95.0, "ms_per_iteration": 12.0, "s_per_eval": 0.3,
             "iterations_timed": 150, "evals_timed": 1}]
    assert verdicts(rows) == ["met", "missed", "met", "met", "missed"]
    rows[1]["fwd_err"] = 2e-5                       # fast but not at fp32 accuracy
    rows[0]["naive_extrapolated"] = True           # a speedup against an extrapolated loop is no measurement
    assert verdicts(rows)[0] == "missed" and verdicts(rows)[3] == "missed"
    assert verdicts(rows[:2]) == ["missed", "not measured", "not measured", "missed", "not measured"]
    assert verdicts(rows, dry=True) == ["not measured"] * 5


def test_summary_shows_a_timed_out_step_and_keeps_what_it_measured(tmp_path):
    (tmp_path / "check.log").write_text("== env\nstep env rc=0 seconds=3 limit=40\n"
                                        "== bench\nstep bench rc=124 seconds=150 limit=150\n")
    (tmp_path / "bench.jsonl").write_text(json.dumps(row("fp32", 5000, 9.0, tot_host_ms=2.0)) + "\n{\"cut")
    gpu_check.step_summary(tmp_path, dry=False)
    text = (tmp_path / "SUMMARY.md").read_text()
    assert "| env | ok | 3 (40) |" in text and "| bench | TIMED OUT | 150 (150) |" in text
    assert "| **met** | 9.00 ms (triton tf32x3)" in text and "no junit file" in text
    assert text.count("**not measured**") == 4
