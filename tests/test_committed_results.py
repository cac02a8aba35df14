"""The committed results are the tool's own: every smoke run the figures plan is there, finished,
under its run id (the ids of earlier runs survive changes to the code), and rerunning a run gives
its committed CSV byte for byte (but the wall-clock column). The cheapest runs are rerun by
default, every run with ``-m slow``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enkf_repro.api import compose
from enkf_repro.experiments import FIGURES
from enkf_repro.runs.folder import RunFolder
from enkf_repro.runs.runner import plan, run_one

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "results" / "smoke"
COMMAND = ["scale=smoke", "dataset.test_only=true"]   # results/smoke/REPORT.md's command


def planned():
    """Every run the committed smoke report's command plans, with its figure."""
    out = []
    for fig in FIGURES.values():
        if fig.needs_runs:
            cfg = compose(COMMAND + [f"figure={fig.config}", f"out_dir={REPO / 'results'}"])
            out += [(fig.id, spec) for spec in plan(cfg)]
    return out


def data_root() -> Path | None:
    import os

    root = os.environ.get("ENKF_REPRO_DATA")
    return Path(root) if root and (Path(root) / "mnist" / "t10k-images-idx3-ubyte.gz").is_file() else None


def test_every_planned_smoke_run_is_committed_finished_under_its_id():
    missing = [f"{fid}: {spec.dir.relative_to(REPO)}" for fid, spec in planned() if spec.folder.state != "finished"]
    assert not missing, "planned smoke runs not committed finished: " + "; ".join(missing)


def test_every_committed_paper_run_is_one_the_paper_scale_plan_names():
    """results/paper holds only the tool's own runs: each finished folder there is a run that
    `reproduce scale=paper` plans today, under the same figure, label, seed and run id (so a
    rerun of the README's command finds it finished and trains nothing for it)."""
    names = set()
    for fig in FIGURES.values():
        if fig.needs_runs:
            cfg = compose(["scale=paper", f"figure={fig.config}", f"out_dir={REPO / 'results'}"])
            names |= {str(spec.dir.relative_to(REPO / "results" / "paper")) for spec in plan(cfg)}
    committed = sorted(str(d.parent.relative_to(REPO / "results" / "paper"))
                       for d in (REPO / "results" / "paper").glob("*/*/done.json"))
    assert len(committed) >= 49
    assert [c for c in committed if c not in names] == []
    assert all(RunFolder(REPO / "results" / "paper" / c).finished for c in committed)


def _values(folder: RunFolder) -> list[str]:
    lines = folder.rows_bytes().decode().splitlines()
    k = lines[0].split(",").index("elapsed_s")
    return [",".join(c for i, c in enumerate(line.split(",")) if i != k) for line in lines]


def _rerun(spec, root: Path) -> None:
    """Train ``spec`` again under ``root`` and compare its rows with the committed ones; a run
    starting from another's final state has that run trained under ``root`` first (the committed
    folders hold no state files: they are not committed)."""
    cfg = spec.cfg.copy()
    cfg.out_dir = str(root)
    cfg.progress = False
    cfg.dataset.root = str(data_root())
    again = type(spec)(spec.figure, spec.config_name, spec.label, spec.seed, cfg, spec.overrides, spec.settings)
    assert again.run_id == spec.run_id
    if again.folder.finished:
        return
    source_id = cfg.optimizer.get("state_from")
    if source_id:
        source = [s for _, s in planned() if s.run_id == source_id]
        assert source, f"{spec.dir}: its source run {source_id} is not planned"
        _rerun(source[0], root)
    assert run_one(again)["status"] == "finished"
    assert _values(again.folder) == _values(spec.folder), spec.dir


def _cheapest(n: int):
    runs = [(float(json.loads((spec.dir / "done.json").read_text())["elapsed_s"]), fid, spec)
            for fid, spec in planned() if spec.folder.finished]
    families = {}
    for _secs, fid, spec in sorted(runs, key=lambda r: r[0]):
        families.setdefault(str(spec.cfg.optimizer.name), (fid, spec))
    return list(families.values())[:n]


@pytest.mark.skipif(data_root() is None, reason="needs the MNIST files (ENKF_REPRO_DATA)")
def test_the_cheapest_committed_smoke_run_of_each_method_reproduces_its_csv(tmp_path):
    for _fid, spec in _cheapest(4):
        _rerun(spec, tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(data_root() is None, reason="needs the MNIST files (ENKF_REPRO_DATA)")
def test_every_committed_smoke_run_reproduces_its_csv(tmp_path):
    for _fid, spec in planned():
        _rerun(spec, tmp_path)
