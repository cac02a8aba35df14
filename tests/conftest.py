"""Shared fixtures: real data from $ENKF_REPRO_DATA (skipped when absent), a small synthetic
IDX dataset written on the fly, and a helper that runs the command line in a subprocess."""

from __future__ import annotations

import os

# torch single-threaded in the tests and the processes they start: their tensors are small, and
# with two OpenMP threads on a busy 2-core machine small torch calls slow down many times over.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip-compressed IDX file (magic 0x0000080N)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 digits stand-ins: class k is a bright bar at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 60, (n, 28, 28))
    for i, k in enumerate(y):
        r, c = 3 + 2 * (k % 5), 4 + 10 * (k // 5)
        x[i, r: r + 6, c: c + 10] += 180
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.uint8)


def make_dataset(root: Path, folder: str = "mnist", n_train: int = 640, n_test: int = 320) -> Path:
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    tx, ty = synthetic_images(n_train, 0)
    vx, vy = synthetic_images(n_test, 1)
    write_idx(d / FILES["train_images"], tx)
    write_idx(d / FILES["train_labels"], ty)
    write_idx(d / FILES["test_images"], vx)
    write_idx(d / FILES["test_labels"], vy)
    return root


@pytest.fixture
def float64_default():
    """Reference computations in float64 (a module opts in with ``pytestmark``)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Measured rates and cached tables go to a folder of this test session, not the user's."""
    old = os.environ.get("ENKF_REPRO_CACHE")
    os.environ["ENKF_REPRO_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("ENKF_REPRO_CACHE", None)
    else:
        os.environ["ENKF_REPRO_CACHE"] = old


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A data root with synthetic mnist/ and fashion-mnist/ folders (640 train, 320 test)."""
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, "mnist")
    make_dataset(root, "fashion-mnist")
    return root


@pytest.fixture(scope="session")
def data_root() -> Path:
    """$ENKF_REPRO_DATA with the real IDX files; the test is skipped when it is not set up."""
    root = os.environ.get("ENKF_REPRO_DATA")
    if not root or not (Path(root) / "fashion-mnist" / FILES["train_images"]).is_file():
        pytest.skip("real data not found: set ENKF_REPRO_DATA to a folder with fashion-mnist/ (IDX .gz files)")
    return Path(root)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600,
            check: bool = False) -> subprocess.CompletedProcess:
    """``python -m enkf_repro <args>`` in a subprocess with this checkout importable."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.pop("HYDRA_FULL_ERROR", None)
    if env:
        full_env.update(env)
    proc = subprocess.run([sys.executable, "-m", "enkf_repro", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture
def cli_subprocess():
    """The command line in a fresh interpreter: for what needs a process of its own (signals,
    tracebacks at exit, torchrun ranks)."""
    return run_cli


@pytest.fixture
def cli_inprocess(capsys, monkeypatch):
    """Run ``enkf_repro.cli.main(args)`` in this process (no interpreter start-up, about 2 s
    saved per call). Returns (exit code, stdout, stderr)."""
    from enkf_repro.cli import main

    def run(*args: str, env: dict | None = None):
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def cli(cli_inprocess):
    """``enkf-repro <args>`` in this process, with the subprocess result's interface
    (returncode, stdout, stderr); ``check=True`` fails the test on a non-zero exit."""
    def run(*args: str, env: dict | None = None, check: bool = False, **_):
        code, out, err = cli_inprocess(*args, env=env)
        proc = subprocess.CompletedProcess(["enkf-repro", *args], code, out, err)
        if check and code != 0:
            raise AssertionError(f"exit {code}\nstdout:\n{out}\nstderr:\n{err}")
        return proc

    return run


# A tiny Figure 8 (2 members, 2 batches) for end-to-end tests on synthetic data.
TINY_FIG8 = ["figure=8", "scale=smoke", "figure.smoke.ensemble_size=6", "figure.smoke.ensemble_sizes=[4]",
             "figure.smoke.overrides.train.max_batches=3", "figure.smoke.overrides.train.eval_every=4",
             "progress=false"]


def compose_run(overrides):
    """The validated config of ``enkf-repro run <overrides>`` (``figure=8`` as on the command line)."""
    from enkf_repro.api import compose
    from enkf_repro.config.validate import validate

    cfg = compose(overrides)
    validate(cfg)
    return cfg
