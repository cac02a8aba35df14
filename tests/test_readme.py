"""The README's library snippets run as written: every ```python block preceded by the marker
below is executed, in order, in one namespace (a later snippet uses an earlier one's ``result``),
and what the comments say it prints is checked."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- runs as written in tests/test_readme.py -->"


def snippets() -> list[str]:
    text = README.read_text()
    return re.findall(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, flags=re.S)


def test_the_readme_marks_its_library_snippets():
    blocks = snippets()
    assert len(blocks) == 3 and README.read_text().count(MARKER) == 3
    assert "task=\"regression\"" in blocks[0] and "proc.tell(" in blocks[1] and "result.predict(" in blocks[2]


def test_the_readme_library_snippets_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in snippets():
            exec(compile(block, str(README), "exec"), namespace)
    lines = out.getvalue().splitlines()
    # 1. the regression fit: "RMSE of the ensemble-mean network: 0.0023"
    assert float(lines[0]) == pytest.approx(0.0023, abs=5e-4) and namespace["result"].test_error < 0.01
    # 2. the ask / tell loop: "[1.99, 3.00] +/- [0.004, 0.010], after 7 steps"
    proc = namespace["proc"]
    assert np.allclose(proc.mean.numpy(), [1.99, 3.00], atol=0.01) and proc.steps == 7
    assert np.allclose(proc.ensemble.std(0).numpy(), [0.004, 0.010], atol=0.002)
    # 3. the kept ensemble's predictions
    p = namespace["p"]
    assert tuple(p.mean.shape) == tuple(p.std.shape) == (256, 1) and tuple(p.member_error.shape) == (50,)
    assert 0.001 < float(p.member_error.min()) and float(p.member_error.max()) < 0.02
    assert p.error == pytest.approx(0.0023, abs=5e-4) and float(p.std.mean()) == pytest.approx(0.0025, abs=5e-4)
