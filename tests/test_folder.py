"""A run's folder (runs/folder.py): the one place that knows its files; rows compressed once
finished and read back the same; a finish cut short resumes cleanly."""

from __future__ import annotations

import gzip
import os

import pytest
from omegaconf import OmegaConf

from enkf_repro.runs import folder as folder_module
from enkf_repro.runs.folder import ROWS, ROWS_GZ, RunBusy, RunFolder, gzip_bytes
from enkf_repro.runs.results import COLUMNS


def _writer(path, restart=False):
    cfg = OmegaConf.create({"seed": 0, "optimizer": {"name": "sgd"}})
    return RunFolder(path).open(cfg, {"figure": "none", "series": "t", "seed": 0}, restart=restart)


def test_finish_compresses_the_rows_reproducibly_and_readers_see_the_same_rows(tmp_path):
    w = _writer(tmp_path / "a")
    w.log([{"iteration": i, "metric": "test_error", "value": 90.0 - i} for i in range(3)])
    w.csv.sync()
    plain = (tmp_path / "a" / ROWS).read_bytes()
    before = RunFolder(tmp_path / "a").rows()
    w.finish({"status": "finished"})
    w.close()
    folder = RunFolder(tmp_path / "a")
    assert not (folder.path / ROWS).exists() and (folder.path / ROWS_GZ).is_file()
    assert gzip.decompress((folder.path / ROWS_GZ).read_bytes()) == plain
    assert folder.rows().equals(before) and list(folder.rows().columns) == COLUMNS
    assert folder.state == "finished" and folder.summary()["status"] == "finished"
    assert not (folder.path / "run.lock").exists() and not folder.has_checkpoint
    # the same rows always give the same bytes (no time or name in the gzip header)
    assert gzip_bytes(plain) == gzip_bytes(plain) == (folder.path / ROWS_GZ).read_bytes()


def test_a_finish_cut_short_is_resumed_from_the_plain_rows(tmp_path):
    """Killed after writing the compressed rows but before the summary: the run is unfinished,
    reopening it drops the stale compressed copy and continues from the plain CSV."""
    w = _writer(tmp_path / "b")
    w.log([{"iteration": 1, "metric": "test_error", "value": 50.0}])
    w.checkpoint({"loop": {"iteration": 1}})
    (tmp_path / "b" / ROWS_GZ).write_bytes(gzip_bytes((tmp_path / "b" / ROWS).read_bytes()))
    w.close()
    folder = RunFolder(tmp_path / "b")
    assert folder.state == "unfinished" and folder.rows_path().name == ROWS
    again = _writer(tmp_path / "b")
    assert again.resume_state == {"loop": {"iteration": 1}} and not (folder.path / ROWS_GZ).exists()
    assert folder.rows()["value"].tolist() == [50.0]
    again.close()


def test_the_lock_is_held_then_removed_and_a_finished_run_is_not_reopened(tmp_path):
    """A second writer of the same run is refused while the first holds it; closing removes the
    lock file (whatever happened); a run another process finished is not opened again."""
    w = _writer(tmp_path / "c")
    with pytest.raises(RunBusy, match="another process is running this run"):
        _writer(tmp_path / "c")
    w.log([{"iteration": 1, "metric": "test_error", "value": 50.0}])
    w.close()
    assert not (tmp_path / "c" / "run.lock").exists()
    w = _writer(tmp_path / "c")
    w.finish({"status": "finished"})
    w.close()
    with pytest.raises(RunBusy, match="another process finished this run"):
        _writer(tmp_path / "c")
    assert not (tmp_path / "c" / "run.lock").exists() and RunFolder(tmp_path / "c").finished


def test_a_lock_taken_on_a_lock_file_its_holder_removed_is_taken_again(tmp_path, monkeypatch):
    """The holder removes the lock file as it lets go: a process that opened the old file and
    locks it after that must not train beside one that locks the new file."""
    path = tmp_path / "run.lock"
    real = folder_module.fcntl.flock
    calls = {"n": 0}

    def flock(fh, op):
        calls["n"] += 1
        if calls["n"] == 1:              # between our open and our lock: the holder lets go
            os.unlink(path)
            path.write_text("")          # and another process creates the file afresh
        return real(fh, op)

    monkeypatch.setattr(folder_module.fcntl, "flock", flock)
    fh = folder_module._take_lock(path)
    assert calls["n"] == 2 and os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
    fh.close()
