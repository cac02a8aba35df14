"""The paper's claims as checks, on hand-made tidy rows: each decides yes, no or "not decided"."""

from __future__ import annotations

import pandas as pd

from enkf_repro.api import compose
from enkf_repro.experiments import get_figure
from enkf_repro.experiments.fig8 import plateau


def curves(spec: dict) -> pd.DataFrame:
    """Tidy test-error rows: {(run, activation, J, optimizer): [(iteration, error), ...]}."""
    rows = []
    for (run, act, J, opt), points in spec.items():
        for it, v in points:
            rows.append({"run_dir": run, "activation": act, "ensemble_size": J, "optimizer": opt,
                         "iteration": it, "metric": "test_error", "value": v, "epoch": it / 64})
    return pd.DataFrame(rows)


def claim(fig: str, start: str):
    return next(c for c in get_figure(fig).claims if c.text.startswith(start))


CFG8 = compose(["figure=8", "scale=smoke"])


def test_figure8_claims_hold_on_the_papers_shape_and_fail_otherwise():
    paper = curves({
        ("a", "logistic", 5000, "enkf"): [(0, 90), (500, 6.11), (7504, 3.8)],
        ("b", "relu", 5000, "enkf"): [(0, 90), (500, 6.56), (7504, 3.75)],
        ("c", "tanh", 5000, "enkf"): [(0, 90), (500, 8.15), (7504, 4.51)],
        ("d", "logistic", 100, "enkf"): [(0, 90), (500, 50), (4000, 47), (7504, 47.5)],
        ("e", "logistic", 10000, "enkf"): [(0, 90), (500, 5), (7504, 3.0)],
    })
    for start in ("Logistic and ReLU", "The test error falls with J", "The smallest J", "Most of the gain"):
        evidence, holds = claim("8", start).check(paper, CFG8)
        assert holds is True, (start, evidence)
    assert plateau(paper[paper.run_dir == "d"]) == 47.25      # mean over the second half (4000, 7504)
    bad = paper.copy()
    bad.loc[(bad.run_dir == "c") & (bad.iteration == 7504), "value"] = 3.0    # tanh now best
    bad.loc[(bad.run_dir == "e") & (bad.iteration == 7504), "value"] = 4.0    # J = 10000 worse than 5000
    assert claim("8", "Logistic and ReLU").check(bad, CFG8)[1] is False
    assert claim("8", "The test error falls with J").check(bad, CFG8)[1] is False
    only = paper[paper.activation == "logistic"]
    evidence, holds = claim("8", "Logistic and ReLU").check(only, CFG8)
    assert holds is None and "logistic" in evidence


def test_figure9_and_10_claims():
    letters = curves({("a", "logistic", 5000, "enkf"): [(0, 90), (7504, 16.32)],
                      ("b", "logistic", 10000, "enkf"): [(0, 90), (7504, 15.1)]})
    assert get_figure("9").claims[0].check(letters, None)[1] is True
    fixed = curves({("f", "logistic", 5000, "enkf"): [(0, 90), (500, 6.1), (7504, 3.8)]})
    adaptive = curves({("g", "logistic", 5000, "enkf"): [(0, 90), (500, 6.2), (2800, 4.0)]})
    extra = [{"run_dir": "g", "iteration": it, "metric": m, "value": v, "epoch": 0.0}
             for it, J, r in ((0, 5000, 8), (500, 5000, 7), (2800, 4000, 3))
             for m, v in (("adaptive_ensemble_size", J), ("adaptive_repetitions", r))]
    df = pd.concat([fixed, adaptive, pd.DataFrame(extra)], ignore_index=True)
    same, cheaper = get_figure("10").claims
    assert same.check(df, None)[1] is True and cheaper.check(df, None)[1] is True
    assert "iterations fixed 7504, adaptive 2800" in cheaper.check(df, None)[0]
    worse = df.copy()
    worse.loc[(worse.run_dir == "g") & (worse.metric == "test_error") & (worse.iteration == 2800), "value"] = 6.0
    assert same.check(worse, None)[1] is False
