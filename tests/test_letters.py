"""The letters dataset (notMNIST): per-letter PNG folders and IDX files."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FILES, compose_run, write_idx
from enkf_repro.data.datasets import load_data
from enkf_repro.data.letters import load_image_folder
from enkf_repro.errors import DataError

LETTERS = tuple("ABCDEFGHIJ")


def make_letter_folders(root: Path, per_class: int = 3, corrupt: int = 1) -> Path:
    """<root>/notmnist/A..J/*.png: image i of letter k has pixel (1, 1) = 20 k + i and one white
    pixel; ``corrupt`` files that are not decodable go into C/ (as in the public archives)."""
    d = root / "notmnist"
    for k, letter in enumerate(LETTERS):
        (d / letter).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.zeros((28, 28), np.uint8)
            arr[1, 1] = 20 * k + i
            arr[5, 5] = 255
            Image.fromarray(arr).save(d / letter / f"img{i}.png")
    for j in range(corrupt):
        (d / "C" / f"broken{j}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 3)
    return d


def test_folder_loads_labels_shapes_range_and_warns_once(tmp_path, caplog):
    d = make_letter_folders(tmp_path)
    with caplog.at_level(logging.WARNING, logger="enkf_repro"):
        x, y = load_image_folder(d, LETTERS)
    assert x.shape == (30, 1, 28, 28) and str(x.dtype) == "torch.float32"
    assert y.shape == (30,) and str(y.dtype) == "torch.int64"
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # the label of each image is its letter folder's index
    assert ((x[:, 0, 1, 1] * 255).round().long() // 20 == y).all()
    assert np.bincount(y.numpy()).tolist() == [3] * 10
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "\n" not in msg and "1 unreadable image file" in msg and "broken0.png" in msg


def test_several_bad_files_one_line_and_other_sizes_resized(tmp_path, caplog):
    d = make_letter_folders(tmp_path, per_class=2, corrupt=3)
    (d / "J" / "notes.txt").write_text("not an image")
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(d / "A" / "big.png")  # RGB, 40x40
    with caplog.at_level(logging.WARNING, logger="enkf_repro"):
        x, y = load_image_folder(d, LETTERS)
    assert x.shape == (21, 1, 28, 28) and int((y == 0).sum()) == 3
    assert float(x[y == 0].max()) == 1.0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "4 unreadable image files" in warnings[0].getMessage()


def test_missing_class_folder_is_a_data_error_naming_it(tmp_path):
    d = make_letter_folders(tmp_path, corrupt=0)
    for f in (d / "E").iterdir():
        f.unlink()
    (d / "E").rmdir()
    with pytest.raises(DataError, match=r"notmnist/E: missing class folder"):
        load_image_folder(d, LETTERS)


def test_dataset_notmnist_routes_folders_and_splits(tmp_path):
    """The per-letter folders are the paper's source: a random 60,000 / 10,000 split, here (a pool
    of 70 images) the same 6 : 1 proportion, whatever dataset.test_only says."""
    make_letter_folders(tmp_path, per_class=7, corrupt=0)
    cfg = compose_run(["dataset=notmnist", f"dataset.root={tmp_path}", "dataset.test_only=true"])
    data = load_data(cfg.dataset)
    assert data.train_x.shape == (60, 1, 28, 28) and data.test_x.shape == (10, 1, 28, 28)
    assert data.num_classes == 10
    assert sorted(set(data.train_y.tolist()) | set(data.test_y.tolist())) == list(range(10))


def test_bad_idx_file_for_notmnist_names_the_file(tmp_path):
    d = tmp_path / "notmnist"
    d.mkdir()
    write_idx(d / FILES["test_labels"], np.zeros(100, np.uint8))
    with gzip.open(d / FILES["test_images"], "wb") as f:       # header says 100 images, holds 2
        f.write(bytes([0, 0, 8, 3]) + (100).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                + bytes(2 * 28 * 28))
    cfg = compose_run(["dataset=notmnist", f"dataset.root={tmp_path}", "dataset.test_only=true",
                       "dataset.test_only_train_size=50"])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: truncated"):
        load_data(cfg.dataset)


def test_cli_reports_a_corrupt_notmnist_file_in_one_line(cli, tmp_path):
    d = tmp_path / "notmnist"
    d.mkdir()
    write_idx(d / FILES["test_labels"], np.zeros(100, np.uint8))
    (d / FILES["test_images"]).write_bytes(b"this is not gzip")
    proc = cli("run", "figure=9", "scale=smoke", f"dataset.root={tmp_path}", "progress=false",
               f"out_dir={tmp_path / 'res'}")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and str(d / FILES["test_images"]) in lines[0] and "gzip" in lines[0]
