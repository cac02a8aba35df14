"""Faults a long run meets, each reproduced: a full disk (injected ENOSPC, and a real tiny tmpfs
where one can be mounted), an ensemble that does not fit (the plan before any work, and an
out-of-memory error during the forward), damaged run files, and checkpoints holding pickled
objects. Each gives one line and its exit code, and nothing is lost: the rerun after the fault
gives the CSV of an undisturbed run. docs/faults.md lists them."""

from __future__ import annotations

import builtins
import errno
import gzip
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import REPO, TINY_FIG8, compose_run
from enkf_repro.runs.folder import RunFolder

# One EnKF run on the synthetic data: 4 batches x r = 8 = 32 iterations, a checkpoint every 4.
RUN = ["optimizer.ensemble_size=24", "train.max_batches=4", "train.eval_every=8", "scale=smoke", "progress=false",
       "checkpoint_every=4"]


def _env(root: Path) -> dict:
    return {"ENKF_REPRO_DATA": str(root)}


def _run_dir(out: Path) -> Path:
    (run,) = (p for p in (Path(out) / "smoke" / "runs").iterdir() if p.is_dir())
    return run


def _values(run: Path) -> pd.DataFrame:
    """The run's rows but the wall-clock column."""
    return RunFolder(run).rows().drop(columns="elapsed_s")


def _lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


def _leftovers(out: Path) -> list[str]:
    """Temporary files and lock files left under ``out``."""
    return sorted(p.name for p in Path(out).rglob("*") if p.name.endswith(".tmp") or p.name == "run.lock")


@pytest.fixture(scope="module")
def reference(synthetic_root, tmp_path_factory) -> pd.DataFrame:
    """The rows of RUN undisturbed (every column but the wall clock)."""
    from enkf_repro.runs.runner import plan, run_one

    out = tmp_path_factory.mktemp("reference")
    (spec,) = plan(compose_run([*RUN, f"out_dir={out}", f"dataset.root={synthetic_root}"]))
    assert run_one(spec)["status"] == "finished"
    return _values(spec.dir)


# -- a full disk -------------------------------------------------------------------------------------------
class FullDisk:
    """Files opened for writing under ``root`` whose name ends with ``name``: the ``nth`` one
    opened (``.tmp`` files, written whole) or the ``nth`` write (``metrics.csv``, appended to)
    fails with ENOSPC after writing part of its bytes, as a full disk does; the free space
    reported is ``free`` bytes. torch.save turns the error into its own RuntimeError
    ("unexpected pos ..."), as on a real full disk."""

    def __init__(self, root: Path, name: str, nth: int = 1, free: int = 900):
        self.root, self.name, self.nth, self.free = str(root), name, nth, free
        self.calls = 0
        self.opened = 0
        self.failed = False

    def open(self, real_open):
        disk = self

        class Faulty:
            def __init__(self, fh, doomed):
                self._fh, self._doomed = fh, doomed

            def write(self, data):
                if not disk.failed:
                    disk.calls += 1
                    if self._doomed or (disk.name.endswith(".csv") and disk.calls >= disk.nth):
                        disk.failed = True
                        self._fh.write(data[: len(data) // 3])
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return self._fh.write(data)

            def __getattr__(self, key):
                return getattr(self._fh, key)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._fh.close()

        def opener(file, mode="r", *args, **kwargs):
            fh = real_open(file, mode, *args, **kwargs)
            writing = any(c in mode for c in "wa+")
            if writing and str(file).startswith(disk.root) and str(file).endswith(disk.name):
                disk.opened += 1
                return Faulty(fh, disk.name.endswith(".tmp") and disk.opened == disk.nth)
            return fh

        return opener


@pytest.mark.parametrize("name,nth,hint", [
    pytest.param("config.yaml.tmp", 1, "no checkpoint was written yet", marks=pytest.mark.slow),
    ("checkpoint.pt.tmp", 1, "no checkpoint was written yet"),
    ("checkpoint.pt.tmp", 3, "(iteration 8) is intact"),
    ("metrics.csv", 4, "(iteration 12) is intact"),
    pytest.param("params.pt.tmp", 1, "(iteration 32) is intact", marks=pytest.mark.slow),
    ("metrics.csv.gz.tmp", 1, "(iteration 32) is intact"),
    pytest.param("done.json.tmp", 1, "(iteration 32) is intact", marks=pytest.mark.slow),
])
def test_a_full_disk_is_one_line_and_the_rerun_gives_the_undisturbed_csv(cli, synthetic_root, tmp_path, monkeypatch,
                                                                           reference, name, nth, hint):
    """ENOSPC while writing each of a run's files: exit 2, one line naming the file, the bytes
    needed and free and the last good checkpoint; no temporary file, no lock left; the rerun
    resumes (or starts over) and its CSV equals an undisturbed run's."""
    from enkf_repro.runs import results

    disk = FullDisk(tmp_path, name, nth)
    monkeypatch.setattr(builtins, "open", disk.open(builtins.open))
    monkeypatch.setattr(results, "free_bytes", lambda path: disk.free)
    proc = cli("run", *RUN, f"out_dir={tmp_path}", env=_env(synthetic_root))
    monkeypatch.undo()
    lines = _lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and disk.failed, proc.stderr
    final = name.removesuffix(".tmp")
    assert f"/{final}: no space left on device (it needs " in lines[0] and ", 900 bytes free)" in lines[0]
    assert hint in lines[0] and "rerun the same command" in lines[0], lines[0]
    assert _leftovers(tmp_path) == []
    run = _run_dir(tmp_path)
    if "intact" in hint:
        assert RunFolder(run).has_checkpoint
    again = cli("run", *RUN, f"out_dir={tmp_path}", env=_env(synthetic_root))
    assert again.returncode == 0, again.stderr
    pd.testing.assert_frame_equal(_values(run), reference)
    assert _leftovers(tmp_path) == []


def test_atomic_writes_keep_the_old_file_and_leave_no_temporary_one(tmp_path, monkeypatch):
    from enkf_repro.errors import WriteFailed
    from enkf_repro.runs import results
    from enkf_repro.runs.folder import save_atomic

    target = tmp_path / "REPORT.md"
    results.write_text_atomic(target, "old\n")
    monkeypatch.setattr(builtins, "open", FullDisk(tmp_path, ".tmp").open(builtins.open))
    with pytest.raises(WriteFailed, match=r"REPORT.md: no space left on device \(it needs 1.2 kB, .* free\); the "
                                          r"file was left as it was: free space and run the command again"):
        results.write_text_atomic(target, "x" * 1200)
    monkeypatch.setattr(builtins, "open", FullDisk(tmp_path, ".tmp").open(builtins.open))
    with pytest.raises(WriteFailed, match=r"state.pt: no space left on device \(it needs \d.\d+ kB"):
        save_atomic({"x": torch.zeros(1000)}, tmp_path / "state.pt")
    monkeypatch.undo()
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["REPORT.md"]


def test_a_figure_that_cannot_be_written_is_one_line(cli, synthetic_root, tmp_path, monkeypatch):
    """compare (as plot) saves its figure through report/render.save_figure: ENOSPC is one line
    naming the PNG, with no temporary file left."""
    import matplotlib.figure

    env = _env(synthetic_root)
    assert cli("run", *RUN, "checkpoint_every=100", f"out_dir={tmp_path}", env=env).returncode == 0
    real = matplotlib.figure.Figure.savefig

    def full(self, fname, *args, **kwargs):
        if isinstance(fname, (str, Path)):
            Path(fname).write_bytes(b"\x89PNG partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fname))
        return real(self, fname, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    proc = cli("compare", "by=seed", f"out_dir={tmp_path}", "scale=smoke", env=env)
    lines = _lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "compare-seed.png: no space left on device (it needs " in lines[0] and " free); the runs " in lines[0]
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("compare-seed.*"))


def _unshare_tmpfs() -> bool:
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /tmp"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _unshare_tmpfs(), reason="no tiny tmpfs here (unshare -rm and mount not allowed)")
def test_a_real_tiny_tmpfs_fills_up_then_the_rerun_resumes(synthetic_root, tmp_path, reference):
    """The run on a 2.6 MB tmpfs (a checkpoint is 1.7 MB: the second one does not fit beside the
    first): torch.save's own error becomes one line, exit 2; grown to 20 MB, the rerun resumes
    from the first checkpoint and gives the undisturbed CSV."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    run = (f"{sys.executable} -m enkf_repro run " + " ".join(RUN) + f" out_dir={mnt}")
    script = (f"mount -t tmpfs -o size=2600k none {mnt} && {run}; echo rc=$?; "
              f"ls -a {mnt}/smoke/runs/*/; mount -o remount,size=20m {mnt} && {run}; echo rc=$?; "
              f"cp -r {mnt}/. {tmp_path}/copy")
    env = dict(os.environ, PYTHONPATH=str(REPO), ENKF_REPRO_DATA=str(synthetic_root))
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    first, second = proc.stdout.split("rc=")[1:3]
    assert first.startswith("2"), proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("enkf-repro: cannot write")]
    assert len(errors) == 1 and "checkpoint.pt: no space left on device (it needs 1.7" in errors[0], proc.stderr
    assert "(iteration 4) is intact" in errors[0] and "Traceback" not in proc.stderr
    assert "run.lock" not in first and ".tmp" not in first     # the listing after the fault
    assert second.startswith("0") and "resumed from iteration 4" in proc.stderr, proc.stderr
    pd.testing.assert_frame_equal(_values(_run_dir(tmp_path / "copy")), reference)


# -- memory ----------------------------------------------------------------------------------------------
def test_an_ensemble_that_does_not_fit_stops_before_any_work(cli, synthetic_root, tmp_path, monkeypatch):
    """J = 2e7 (the ensemble alone 1.44 TB): one line with the need, the free memory and the
    largest J that fits, exit 2, in about a second, before the data are read."""
    from enkf_repro.data import datasets
    from enkf_repro.runs import memory

    def no_data(*a, **k):
        raise AssertionError("data loaded")

    monkeypatch.setattr(datasets, "_load_cpu", no_data)
    monkeypatch.setattr(memory, "host_free", lambda: (16 * 10 ** 9, "host RAM (MemAvailable)"))
    t0 = time.perf_counter()
    proc = cli("run", "optimizer.ensemble_size=20000000", *RUN[1:], f"out_dir={tmp_path}", env=_env(synthetic_root))
    code, err = proc.returncode, proc.stderr
    seconds = time.perf_counter() - t0
    lines = _lines(err)
    assert code == 2 and len(lines) == 1, err
    line = lines[0]
    assert "optimizer.ensemble_size=20000000: the run needs about 3.57 TB on cpu" in line
    assert "ensemble U (20000000 x 18050, fp32) 1.44 TB" in line
    assert "but 16 GB of host RAM (MemAvailable) is free" in line
    assert "make it fit with optimizer.ensemble_size=" in line
    J = int(line.split("optimizer.ensemble_size=")[-1].split()[0])
    assert 80_000 < J < 100_000
    assert seconds < 5 and not (tmp_path / "smoke").exists()


def _plan(overrides, free, device="cpu", **kw):
    from enkf_repro.runs.memory import plan_memory

    return plan_memory(compose_run(overrides), torch.device(device), free=free, where="test", **kw)


def test_the_memory_plan_adds_up_the_ensemble_the_forward_and_the_update():
    from enkf_repro.models.registry import build_model

    J, P, B, C = 5000, 18050, 64, 10
    cfg = compose_run([f"optimizer.ensemble_size={J}", "ensemble.chunk_size=32"])
    plan = _plan([f"optimizer.ensemble_size={J}", "ensemble.chunk_size=32"], free=10 ** 12)
    parts = plan.parts
    act = build_model(cfg.model).activation_bytes(B)
    assert parts[f"ensemble U ({J} x {P}, fp32)"] == 4 * J * P
    assert parts[f"forward outputs ({J} x {B} x {C}, fp32)"] == 4 * J * B * C
    assert parts[f"forward chunk (32 members on {B} images)"] == 32 * act
    assert parts["dataset on the device"] == (60000 + 10000) * (4 * 784 + 8)
    assert parts["copy of the finite members (when some fail)"] == 4 * J * P
    d = B * C
    assert parts["update factors"] == 8 * (6 * J * d + 3 * d * d) + 4 * d * d   # sequential: d x d systems
    assert plan.need == sum(parts.values()) and plan.fits
    # bf16 halves the intermediates; the plan grows linearly in J; chunk, EKI's extra ensembles
    assert _plan(["ensemble.chunk_size=32", "ensemble.precision=bf16"], 10 ** 12).parts[
        f"forward chunk (32 members on {B} images)"] == 32 * act // 2
    eki = _plan(["optimizer=eki", "optimizer.ensemble_size=100", "optimizer.randomize=true", "model=dnn2"], 10 ** 12)
    assert eki.parts["prior noise (R)"] == 4 * 100 * 101770
    assert "forward outputs (100 x 512 x 10, fp32)" in eki.parts    # the best member ranked on 512 samples
    assert not _plan([f"optimizer.ensemble_size={J}"], free=plan.need // 2).fits


def test_the_fixes_make_the_run_fit():
    """Each fix of the line fits and one step beyond it does not: the largest J, the largest chunk
    (on a fake 16 GB CUDA device), and the ranks over which the forward is shared."""
    from enkf_repro.runs.memory import fixes, plan_memory

    base = ["optimizer.ensemble_size=10000", "ensemble.chunk_size=8192"]
    cfg = compose_run(base)
    free = 16 * 10 ** 9
    plan = plan_memory(cfg, torch.device("cpu"), free=free, where="test")
    assert not plan.fits
    found = fixes(cfg, plan)
    J = int(next(f for f in found if f.startswith("optimizer.ensemble_size=")).split("=")[1].split()[0])
    chunk = int(next(f for f in found if f.startswith("ensemble.chunk_size=")).split("=")[1])
    assert _plan(["optimizer.ensemble_size=%d" % J, "ensemble.chunk_size=8192"], free).fits
    assert not _plan(["optimizer.ensemble_size=%d" % (J + 1), "ensemble.chunk_size=8192"], free).fits
    assert _plan(["optimizer.ensemble_size=10000", f"ensemble.chunk_size={chunk}"], free).fits
    assert not _plan(["optimizer.ensemble_size=10000", f"ensemble.chunk_size={chunk + 1}"], free).fits


def test_cuda_memory_is_read_from_the_device_and_the_line_says_so(monkeypatch):
    """On CUDA the plan reads torch.cuda.mem_get_info (plus what the caching allocator holds
    unused); a run that does not fit is one OutOfMemory line with the fixes."""
    from enkf_repro.errors import OutOfMemory
    from enkf_repro.runs.memory import check_memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * 10 ** 9, 80 * 10 ** 9))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 5 * 10 ** 8)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 10 ** 8)
    cfg = compose_run(["optimizer.ensemble_size=5000", "ensemble.chunk_size=2048"])
    with pytest.raises(OutOfMemory) as info:
        check_memory(cfg, torch.device("cuda"))
    line = str(info.value)
    assert "the run needs about 6.39 GB on cuda (forward chunk (2048 members on 64 images) 5.12 GB, " in line
    assert "but 2.4 GB of cuda memory (cudaMemGetInfo) is free" in line
    assert "make it fit with ensemble.chunk_size=450, or 16 ranks: torchrun --nproc_per_node=16 " in line
    assert "or optimizer.ensemble_size=743 or less" in line and "\n" not in line
    assert check_memory(compose_run(["optimizer.ensemble_size=100"]), torch.device("cuda")).fits


def test_the_project_figures_fit_where_they_run():
    """No paper-scale run of any figure is refused with 16 GB of host RAM or on an 80 GB GPU
    (paper CNN at J = 10000, EKI at J = 5000 on DNN 2, ...); the largest needs a few GB."""
    from enkf_repro.api import compose
    from enkf_repro.experiments.base import FIGURES
    from enkf_repro.runs.memory import plan_memory
    from enkf_repro.runs.runner import plan

    needs = {}
    for fig in FIGURES.values():
        if not fig.needs_runs:
            continue
        for spec in plan(compose([f"figure={fig.config}", "scale=paper"])):
            for device, free in (("cpu", 16 * 10 ** 9), ("cuda", 80 * 10 ** 9)):
                p = plan_memory(spec.cfg, torch.device(device), free=free, where="test")
                assert p.fits, (fig.id, spec.label, device, p.need)
                needs[(fig.id, spec.label)] = p.need
    assert len(needs) > 20 and max(needs.values()) < 12 * 10 ** 9


def _oom_forward(monkeypatch, fails):
    """The paper CNN's forward raises CUDA's out-of-memory error when ``fails(chunk)``."""
    from enkf_repro.models.paper_cnn import PaperCNNSpec

    real = PaperCNNSpec.forward_chunk
    calls = {"n": 0}

    def forward_chunk(self, W, ctx):
        calls["n"] += 1
        if fails(W.shape[0], calls["n"]):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, W, ctx)

    monkeypatch.setattr(PaperCNNSpec, "forward_chunk", forward_chunk)
    return calls


def test_out_of_memory_in_the_forward_halves_the_chunk_once_and_goes_on(cli, synthetic_root, tmp_path, monkeypatch,
                                                                       reference):
    _oom_forward(monkeypatch, lambda chunk, n: chunk > 8)     # the CPU chunk is 16: 8 fits
    proc = cli("run", *RUN, f"out_dir={tmp_path}", env=_env(synthetic_root))
    assert proc.returncode == 0, proc.stderr
    said = [ln for ln in _lines(proc.stderr) if "out of memory" in ln]
    assert len(said) == 1 and "at 16 members per chunk" in said[0] and "continuing with 8" in said[0]
    pd.testing.assert_frame_equal(_values(_run_dir(tmp_path)), reference)


def test_out_of_memory_again_is_one_line_and_the_rerun_resumes(cli, synthetic_root, tmp_path, monkeypatch, reference):
    """From the 40th forward call on every one fails: halved once, then one line (exit 2) naming
    the last good checkpoint and the chunk size to resume with; the rerun resumes and gives the
    undisturbed CSV."""
    _oom_forward(monkeypatch, lambda chunk, n: n >= 40)
    proc = cli("run", *RUN, f"out_dir={tmp_path}", env=_env(synthetic_root))
    monkeypatch.undo()
    lines = [ln for ln in _lines(proc.stderr) if not ln.endswith("(ensemble.chunk_size=8 starts so)")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "out of memory on cpu in the ensemble forward of 24 members on 64 images at 8 members per chunk " \
           "(already halved once)" in lines[0]
    assert "is intact: rerun with ensemble.chunk_size=4 (or over more GPUs" in lines[0]
    assert "to resume from it" in lines[0] and _leftovers(tmp_path) == []
    again = cli("run", *RUN, "ensemble.chunk_size=4", f"out_dir={tmp_path}", env=_env(synthetic_root))
    assert again.returncode == 0 and "resumed from iteration" in again.stderr, again.stderr
    pd.testing.assert_frame_equal(_values(_run_dir(tmp_path)), reference)


def test_out_of_memory_in_the_update_is_one_line(cli, synthetic_root, tmp_path, monkeypatch):
    from enkf_repro.optim import enkf

    real = enkf.enkf_update_
    calls = {"n": 0}

    def update(*args):
        calls["n"] += 1
        if calls["n"] == 10:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*args)

    monkeypatch.setattr(enkf, "enkf_update_", update)
    proc = cli("run", *RUN, f"out_dir={tmp_path}", env=_env(synthetic_root))
    lines = _lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "out of memory on cpu (CUDA out of memory. Tried to allocate 20.00 GiB)" in lines[0]
    assert "(iteration 8) is intact" in lines[0] and _leftovers(tmp_path) == []


# -- damaged run files -----------------------------------------------------------------------------------
def _damage(run: Path, what: str) -> str:
    """Damage one file of the finished run folder ``run``; returns the file's name."""
    if what == "unterminated quote":
        raw = gzip.decompress((run / "metrics.csv.gz").read_bytes()).decode().splitlines(keepends=True)
        raw[5] = raw[5].replace(",", ',"', 1)
        (run / "metrics.csv.gz").write_bytes(gzip.compress("".join(raw).encode()))
        return "metrics.csv.gz"
    if what == "text in a number column":
        raw = gzip.decompress((run / "metrics.csv.gz").read_bytes()).decode().splitlines(keepends=True)
        cells = raw[3].split(",")
        cells[3] = "iteration-three"
        raw[3] = ",".join(cells)
        (run / "metrics.csv.gz").write_bytes(gzip.compress("".join(raw).encode()))
        return "metrics.csv.gz"
    if what == "truncated gzip":
        data = (run / "metrics.csv.gz").read_bytes()
        (run / "metrics.csv.gz").write_bytes(data[: len(data) // 2])
        return "metrics.csv.gz"
    if what == "config":
        (run / "config.yaml").write_text("seed: [0\noptimizer: {name: enkf\n")
        return "config.yaml"
    if what == "summary":
        (run / "done.json").write_text('{"status": "fini')
        return "done.json"
    if what == "params":
        data = bytearray((run / "params.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF     # one flipped byte inside a tensor: torch.load would not notice
        (run / "params.pt").write_bytes(bytes(data))
        return "params.pt"
    raise ValueError(what)


DAMAGES = ["unterminated quote", pytest.param("text in a number column", marks=pytest.mark.slow),
           pytest.param("truncated gzip", marks=pytest.mark.slow), "config",
           pytest.param("summary", marks=pytest.mark.slow), "params"]


@pytest.fixture(scope="module")
def two_runs(synthetic_root, tmp_path_factory) -> Path:
    """An out_dir with RUN finished at seeds 0 and 1 (copy it before changing it)."""
    from enkf_repro.runs.runner import plan, run_one

    out = tmp_path_factory.mktemp("two_runs")
    for seed in (0, 1):
        (spec,) = plan(compose_run([*RUN, "checkpoint_every=100", f"seed={seed}", f"out_dir={out}",
                                    f"dataset.root={synthetic_root}"]))
        assert run_one(spec)["status"] == "finished"
    return out


@pytest.mark.parametrize("what", DAMAGES)
def test_readers_skip_a_damaged_run_with_one_warning_and_a_rerun_repairs_it(
        cli, synthetic_root, two_runs, tmp_path, capsys, reference, what):
    """Two runs (seeds 0 and 1), one damaged: read_runs (and compare) read the other with one
    warning line naming the file and why; `run` again repairs the damaged one (a config rewritten,
    the rest trained again with the damaged file set aside) and its CSV is the undisturbed one."""
    import enkf_repro

    env = _env(synthetic_root)
    out = tmp_path / "out"
    shutil.copytree(two_runs, out)
    run = next(p.parent for p in (out / "smoke" / "runs").glob("*-s0-*/done.json"))
    name = _damage(run, what)
    capsys.readouterr()
    df = enkf_repro.read_runs(out)
    assert set(df["seed"]) == {1}
    warned = _lines(capsys.readouterr().err)
    assert len(warned) == 1 and warned[0].startswith(f"enkf-repro: warning: skipping the run in {run}: {name}: ")
    assert "rerun the command that made it" in warned[0]
    if what == "unterminated quote":
        proc = cli("compare", "by=seed", f"out_dir={out}", "scale=smoke", env=env)
        assert proc.returncode == 0 and "| 1 |" in proc.stdout, proc.stderr
    assert RunFolder(run).damage() is not None and not RunFolder(run).done
    again = cli("run", *RUN, "checkpoint_every=100", f"out_dir={out}", env=env)
    assert again.returncode == 0, again.stderr
    said = [ln for ln in _lines(again.stderr) if name in ln]
    assert len(said) == 1, again.stderr
    if name == "config.yaml":
        assert "rewritten from this run's settings" in said[0] and "already finished" in again.stderr
    else:
        assert "training this run again from the start" in said[0] and (run / (name + ".damaged")).exists()
    assert RunFolder(run).damage() is None and RunFolder(run).finished
    pd.testing.assert_frame_equal(_values(run), reference)


def test_plot_skips_a_damaged_run_of_a_figure(cli, synthetic_root, tmp_path):
    env = _env(synthetic_root)
    out = tmp_path / "res"
    assert cli("run", *TINY_FIG8, f"out_dir={out}", env=env).returncode == 0
    run = sorted((out / "smoke" / "fig8").glob("*/metrics.csv.gz"))[0].parent
    _damage(run, "unterminated quote")
    proc = cli("plot", "figure=8", "scale=smoke", f"out_dir={out}", env=env)
    assert proc.returncode == 0, proc.stderr
    warned = [ln for ln in _lines(proc.stderr) if "warning" in ln]
    assert len(warned) == 1 and "metrics.csv.gz: the rows do not parse (ParserError: " in warned[0]
    assert (out / "smoke" / "fig8" / "fig8.png").stat().st_size > 1000


def test_damaged_rows_of_a_run_still_going(synthetic_root, tmp_path, capsys):
    """Damage past the checkpoint's end is cut away by the resume; damage before it makes the
    run start over, the damaged CSV set aside (said in one line)."""
    from enkf_repro.errors import Interrupted
    from enkf_repro.runs.loop import train_run
    from enkf_repro.runs.runner import plan, run_one

    (spec,) = plan(compose_run([*RUN, f"out_dir={tmp_path}", f"dataset.root={synthetic_root}"]))
    for where in ("after", "before"):
        rd = RunFolder(spec.dir).open(spec.cfg, spec.columns, restart=True, checkpoint_every=4)
        rd.stop_requested = True
        with pytest.raises(Interrupted):
            train_run(spec.cfg, rd, spec.label)
        rd.close()
        csv = spec.dir / "metrics.csv"
        if where == "after":
            csv.write_bytes(csv.read_bytes() + b'x,"unterminated\n')
        else:   # the first row's iteration made text
            lines = csv.read_bytes().split(b"\n")
            cells = lines[1].split(b",")
            cells[3] = b"three"
            lines[1] = b",".join(cells)
            csv.write_bytes(b"\n".join(lines))
        capsys.readouterr()
        assert run_one(spec)["status"] == "finished"
        err = capsys.readouterr().err
        if where == "after":
            assert "resumed from iteration 1" in err and "do not parse" not in err
        else:
            assert "metrics.csv: the rows before the checkpoint do not parse" in err
            assert (spec.dir / "metrics.csv.damaged").exists()
        assert RunFolder(spec.dir).damage() is None


# -- checkpoints that could run code -----------------------------------------------------------------------
class Payload:
    """Pickled, this object runs code when it is loaded with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_holding_a_pickled_object_is_refused(cli, synthetic_root, tmp_path, reference):
    from enkf_repro.errors import Interrupted
    from enkf_repro.runs.loop import train_run
    from enkf_repro.runs.runner import plan

    (spec,) = plan(compose_run([*RUN, f"out_dir={tmp_path}", f"dataset.root={synthetic_root}"]))
    rd = RunFolder(spec.dir).open(spec.cfg, spec.columns, checkpoint_every=4)
    rd.stop_requested = True
    with pytest.raises(Interrupted):
        train_run(spec.cfg, rd, spec.label)
    rd.close()
    ckpt = spec.dir / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "code-ran"
    state["state"]["method"]["extra"] = Payload(marker)
    torch.save(state, ckpt)
    proc = cli("run", *RUN, f"out_dir={tmp_path}", env=_env(synthetic_root))
    lines = _lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"{ckpt}: refused: this checkpoint holds a pickled Python object (" in lines[0]
    assert "could run as code" in lines[0] and "restart=true" in lines[0]
    assert not marker.exists() and _leftovers(tmp_path) == []
    again = cli("run", *RUN, "restart=true", f"out_dir={tmp_path}", env=_env(synthetic_root))
    assert again.returncode == 0 and not marker.exists(), again.stderr
    pd.testing.assert_frame_equal(_values(spec.dir), reference)


def test_a_checkpoint_refuses_to_hold_an_object_that_needs_its_class():
    from enum import Enum

    from enkf_repro.runs.folder import non_plain

    class Mode(str, Enum):
        a = "a"

    assert non_plain({"U": torch.zeros(2), "n": 3, "s": "x", "l": [1.0, None, (True,)]}) is None
    assert non_plain({"method": {"mode": Mode.a}}).startswith("state['method']['mode']: test_faults.")


METHODS = {
    "enkf": ["optimizer.ensemble_size=6"],
    "enkf-adaptive": ["optimizer.ensemble_size=6", "optimizer.adaptive.enabled=true", "optimizer.adaptive.tau=2"],
    "enkf-inflation": ["optimizer.ensemble_size=6", "optimizer.inflation.multiplicative=0.1",
                       "optimizer.inflation.multiplicative_form=ekp"],
    "eki-meki": ["optimizer=eki", "optimizer.ensemble_size=6", "optimizer.momentum=nesterov"],
    "eki-r-misfit": ["optimizer=eki", "optimizer.ensemble_size=6", "optimizer.randomize=true",
                     "optimizer.scheduler=data_misfit", "optimizer.terminate_at=1000"],
    "etki": ["optimizer=etki", "optimizer.ensemble_size=6"],
    "haber": ["optimizer=haber", "optimizer.ensemble_size=4"],
    "ienk": ["optimizer=ienk_simple", "model=mlp", "optimizer.mode=batch"],
    "sgd": ["optimizer=sgd"],
    "adam-instrumented": ["optimizer=adam", "instrument.enabled=true"],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_checkpoints_plain_values_and_resumes_from_them(synthetic_root, tmp_path, method):
    """Each method's checkpoint (its state, the generator, the loop, the schedule) holds tensors
    and plain values only: it loads with weights_only=True and the run resumes from it."""
    from enkf_repro.errors import Interrupted
    from enkf_repro.runs.folder import load_checkpoint
    from enkf_repro.runs.loop import train_run
    from enkf_repro.runs.runner import plan

    cfg = compose_run(["scale=smoke", "progress=false", "train.max_batches=2", "train.eval_every=2",
                       f"out_dir={tmp_path}", f"dataset.root={synthetic_root}", *METHODS[method]])
    (spec,) = plan(cfg)
    rd = RunFolder(spec.dir).open(spec.cfg, spec.columns, checkpoint_every=1)
    rd.stop_requested = True
    with pytest.raises(Interrupted):
        train_run(spec.cfg, rd, spec.label)
    rd.close()
    state = load_checkpoint(spec.dir / "checkpoint.pt")
    assert state["state"]["loop"]["iteration"] == 1
    rd = RunFolder(spec.dir).open(spec.cfg, spec.columns, checkpoint_every=1)
    assert rd.resume_state is not None
    train_run(spec.cfg, rd, spec.label)
    rd.close()


# -- library input -----------------------------------------------------------------------------------------
def test_library_input_faults_are_one_line_each():
    """enkf_repro.train on bad inputs: labels out of range, lengths that differ, J = 1 (one line
    each, before any training) and NaN inputs (every member's outputs non-finite: the run stops
    as diverged, one line)."""
    from custom_nets import TwoLayer
    from enkf_repro import train
    from enkf_repro.errors import ConfigError, DataError, DivergenceError

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 4, (64,), generator=g)
    opts = {"batch_size": 16, "max_batches": 2, "eval_every": 2, "progress": False, "device": "cpu"}
    nan = x.clone()
    nan[3, 0, 0, 0] = float("nan")
    cases = [((x, torch.full((64,), 7)), {"num_classes": 4}, DataError, "num_classes=4, but the labels go up to 7"),
             ((x, y[:10]), {}, DataError, "64 inputs but 10 targets"),
             ((x, y), {"ensemble_size": 1}, ConfigError, "optimizer.ensemble_size=1"),
             ((nan, y), {"ensemble_size": 4}, DivergenceError, "non-finite outputs")]
    for data, extra, error, text in cases:
        with pytest.raises(error) as info:
            train(TwoLayer(4, classes=4), data, method="enkf", **opts, **extra)
        assert text in str(info.value) and len(str(info.value).splitlines()) == 1


def test_the_fault_table_names_tests_that_exist():
    """docs/faults.md: every test it names is a test function of the file it says."""
    import re

    text = (REPO / "docs" / "faults.md").read_text()
    named = re.findall(r"`(?:(test_\w+)\.py::)?(test_\w+)`", text)
    assert len(named) > 25
    for module, name in named:
        source = (REPO / "tests" / f"{module or 'test_faults'}.py").read_text()
        assert re.search(rf"^def {name}\(", source, re.M), (module, name)
