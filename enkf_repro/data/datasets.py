"""Datasets as tensors on the training device.

Files live in ``<dataset.root>/<folder>/`` in the MNIST IDX layout (gzip-compressed):
``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
``t10k-labels-idx1-ubyte.gz``. Images are scaled to [0, 1] (the paper's normalisation is
mean 0, std 1, i.e. none) and kept as one float32 tensor on the device, so training never
copies from the host.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError
from .idx import FILES, IMAGES_MAGIC, count_items, read_pair

# The paper's letters experiment: a random 60,000 / 10,000 train / test split of the letter pool.
FOLDER_SPLIT = (60000, 10000)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    folder: str            # sub-folder of dataset.root
    classes: tuple[str, ...]
    torchvision: str | None = None  # torchvision.datasets class that knows the download mirrors
    # (train, test) images of the full dataset, what estimates assume without reading files: the
    # MNIST layout's train / t10k files; for the letters the paper's split of the pool (FOLDER_SPLIT)
    sizes: tuple[int, int] = (60000, 10000)


DIGITS = tuple(str(i) for i in range(10))
DATASETS = {
    "mnist": DatasetInfo("mnist", "mnist", DIGITS, "MNIST"),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", "fashion-mnist",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle boot"),
        "FashionMNIST"),
    "notmnist": DatasetInfo("notmnist", "notmnist", tuple("ABCDEFGHIJ"), sizes=FOLDER_SPLIT),
}


@dataclass
class Data:
    """Train and test tensors on one device: images (N, 1, 28, 28) in [0, 1], labels (N,) int64."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    def to(self, device: torch.device | str) -> "Data":
        return Data(self.name, self.train_x.to(device), self.train_y.to(device),
                    self.test_x.to(device), self.test_y.to(device), self.num_classes)


def resolve_root(root: str) -> Path:
    return Path(os.path.expanduser(os.path.expandvars(str(root)))).resolve()


def _download(info: DatasetInfo, folder: Path, names: list[str]) -> str | None:
    """Fetch missing files through torchvision's mirror list; return None or why it failed."""
    if info.torchvision is None:
        return "no download source is known for this dataset"
    try:
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import download_url
    except Exception as e:  # pragma: no cover - torchvision is a dependency
        return f"torchvision unavailable ({e})"
    cls = getattr(tvd, info.torchvision)
    md5 = dict(cls.resources)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        for name in names:
            errors = []
            for mirror in cls.mirrors:
                try:
                    download_url(f"{mirror}{name}", str(folder), filename=name, md5=md5.get(name))
                    break
                except Exception as e:
                    errors.append(f"{mirror}: {type(e).__name__}: {e}")
                    (folder / name).unlink(missing_ok=True)
            else:
                return "; ".join(errors)[:300]
    finally:
        socket.setdefaulttimeout(old_timeout)
    return None


def _require(info: DatasetInfo, folder: Path, names: list[str], download: bool, test_only: bool) -> None:
    missing = [n for n in names if not (folder / n).is_file()]
    if not missing:
        return
    reason = None
    if download and info.torchvision is not None:
        folder.mkdir(parents=True, exist_ok=True)
        reason = _download(info, folder, missing)
        missing = [n for n in names if not (folder / n).is_file()]
        if not missing:
            return
    fixes = [f"put the IDX .gz files into {folder}",
             f"or point dataset.root (or $ENKF_REPRO_DATA) at a folder holding {info.folder}/"]
    if not test_only and all((folder / FILES[k]).is_file() for k in ("test_images", "test_labels")):
        fixes.append("or use dataset.test_only=true (only the t10k files are needed)")
    if reason:
        fixes.append(f"(download failed: {reason})")
    elif info.torchvision is not None and not download:
        fixes.append("or allow dataset.download=true with network access")
    raise DataError(f"dataset {info.name}: missing {', '.join(missing)} in {folder}; " + ", ".join(fixes))


def _split_pool(name: str, x: torch.Tensor, y: torch.Tensor, seed: int, classes: int) -> Data:
    """A seeded random split of one pool of images (the per-letter folders): FOLDER_SPLIT, or for a
    pool smaller than 70,000 images the same 6 : 1 proportion of it."""
    n = x.shape[0]
    n_test = min(FOLDER_SPLIT[1], max(1, n // 7))
    n_train = min(FOLDER_SPLIT[0], n - n_test)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    te, tr = perm[:n_test], perm[n_test: n_test + n_train]
    return Data(name, x[tr].contiguous(), y[tr].contiguous(), x[te].contiguous(), y[te].contiguous(), classes)


@functools.lru_cache(maxsize=4)
def _load_cpu(name: str, root: str, test_only: bool, train_size: int, split_seed: int,
              download: bool, fmt: str) -> Data:
    info = DATASETS[name]
    folder = resolve_root(root) / info.folder
    if fmt == "folder" or (fmt == "auto" and name == "notmnist" and not (folder / FILES["test_images"]).is_file()
                           and folder.is_dir() and any(p.is_dir() for p in folder.iterdir())):
        from .letters import load_image_folder  # notMNIST's original layout: one folder per letter

        x, y = load_image_folder(folder, info.classes)
        return _split_pool(name, x, y, split_seed, len(info.classes))
    else:
        needed = ["test_images", "test_labels"] if test_only else list(FILES)
        _require(info, folder, [FILES[k] for k in needed], download, test_only)
        x, y = read_pair(folder / FILES["test_images"], folder / FILES["test_labels"])
    if test_only:
        if train_size >= x.shape[0]:
            raise DataError(f"dataset {name}: dataset.test_only_train_size={train_size} leaves no test "
                            f"images out of {x.shape[0]}")
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(split_seed))
        tr, te = perm[:train_size], perm[train_size:]
        return Data(name, x[tr].contiguous(), y[tr].contiguous(), x[te].contiguous(), y[te].contiguous(),
                    len(info.classes))
    tx, ty = read_pair(folder / FILES["train_images"], folder / FILES["train_labels"])
    return Data(name, tx, ty, x, y, len(info.classes))


def dataset_sizes(dcfg, files: bool = True) -> tuple[int, int] | None:
    """(train, test) sizes that ``load_data`` will produce, with ``dataset.test_only`` and
    ``dataset.test_size`` applied. ``files=True``: the counts read from the IDX file headers, after
    checking that the needed files exist (same one-line errors as the loader); None for image-folder
    layouts. ``files=False``: from the full dataset's sizes (``DatasetInfo.sizes``), reading nothing
    (the estimates of runs/cost.py)."""
    name = str(getattr(dcfg.name, "value", dcfg.name))
    if name == "tensors":
        raise DataError(TENSORS_ONLY)
    info = DATASETS[name]
    if not files:
        n_train, n_test = info.sizes
    else:
        folder = resolve_root(str(dcfg.root)) / info.folder
        fmt = str(getattr(dcfg.format, "value", dcfg.format))
        if fmt == "folder" or (name == "notmnist" and not (folder / FILES["test_images"]).is_file()
                               and folder.is_dir() and any(p.is_dir() for p in folder.iterdir())):
            return None
        needed = ["test_images", "test_labels"] if dcfg.test_only else list(FILES)
        _require(info, folder, [FILES[k] for k in needed], bool(dcfg.download), bool(dcfg.test_only))
        n_test = count_items(folder / FILES["test_images"], IMAGES_MAGIC)
        n_train = None if dcfg.test_only else count_items(folder / FILES["train_images"], IMAGES_MAGIC)
    if dcfg.test_only:     # a seeded split of the test files' images
        n_train, n_test = int(dcfg.test_only_train_size), n_test - int(dcfg.test_only_train_size)
    if dcfg.test_size is not None:
        n_test = min(n_test, int(dcfg.test_size))
    return n_train, n_test


TENSORS_ONLY = ("dataset=tensors holds tensors given to enkf_repro.train(...) in the same call; it cannot be "
                "loaded from files (use dataset=mnist, fashion_mnist or notmnist)")


def subset_test(data: Data, dcfg) -> Data:
    """``dataset.test_size``: a fixed, seeded subset of the test set (``dataset.split_seed`` + 1)."""
    if dcfg.test_size is not None and dcfg.test_size < data.test_x.shape[0]:
        g = torch.Generator().manual_seed(int(dcfg.split_seed) + 1)
        keep = torch.randperm(data.test_x.shape[0], generator=g)[: dcfg.test_size].to(data.test_x.device)
        data = Data(data.name, data.train_x, data.train_y, data.test_x[keep], data.test_y[keep], data.num_classes)
    return data


def load_data(dcfg, device: torch.device | str = "cpu") -> Data:
    """Load ``cfg.dataset`` onto ``device``; ``test_size`` keeps a fixed, seeded test subset."""
    name = str(getattr(dcfg.name, "value", dcfg.name))
    if name == "tensors":
        raise DataError(TENSORS_ONLY)
    fmt = str(getattr(dcfg.format, "value", dcfg.format))
    data = _load_cpu(name, str(dcfg.root), bool(dcfg.test_only), int(dcfg.test_only_train_size),
                     int(dcfg.split_seed), bool(dcfg.download), fmt)
    return subset_test(data, dcfg).to(device)


def fingerprint_tensors(*tensors: torch.Tensor) -> str:
    """12 hex digits identifying tensors by their shapes, dtypes and values (SHA-1 of the bytes,
    on the CPU): the ``dataset.fingerprint`` of in-memory data, so other data make another run."""
    import hashlib

    h = hashlib.sha1()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:12]
