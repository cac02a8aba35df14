"""IDX files (the MNIST layout), gzip-compressed: reading and checking them.

Every fault (truncated or corrupt gzip, wrong magic number, payload shorter or longer than the
header says, image/label count mismatch) raises :class:`~enkf_repro.errors.DataError` naming the
file.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import torch

from ..errors import DataError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: Path, expect_magic: int | None = None) -> torch.Tensor:
    """Read one gzip-compressed IDX file (unsigned bytes) into a uint8 tensor.

    Every fault (truncated or corrupt gzip, wrong magic number, payload shorter or longer
    than the header says) raises DataError naming the file.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from None
    if len(raw) < 8:
        raise DataError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or (expect_magic is not None and magic != expect_magic):
        want = f"0x{expect_magic:08x}" if expect_magic is not None else "0x0000080N (unsigned bytes)"
        raise DataError(f"{path}: wrong IDX magic number 0x{magic:08x}, expected {want}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    size = 1
    for d in dims:
        size *= d
    if len(raw) != header + size:
        raise DataError(f"{path}: truncated or oversized IDX payload: header says {dims} "
                        f"({size} bytes) but the file holds {len(raw) - header}")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)


def read_pair(images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) float32 in [0, 1] and labels (N,) int64 from two IDX files."""
    x = read_idx(images, IMAGES_MAGIC)
    y = read_idx(labels, LABELS_MAGIC)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{labels}: {y.shape[0]} labels but {images.name} holds {x.shape[0]} images")
    return x.unsqueeze(1).float().div_(255.0), y.long()


def count_items(path: Path, magic: int) -> int:
    """Number of items an IDX file declares, from its header alone (no decompression of the rest)."""
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from None
    if len(head) < 8 or int.from_bytes(head[:4], "big") != magic:
        got = f"0x{int.from_bytes(head[:4], 'big'):08x}" if len(head) >= 4 else "a short header"
        raise DataError(f"{path}: wrong IDX magic number {got}, expected 0x{magic:08x}")
    return int.from_bytes(head[4:8], "big")
