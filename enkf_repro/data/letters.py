"""notMNIST letters in their original layout: one folder of image files per letter.

Bulatov's notMNIST archives (``notMNIST_small``, ``notMNIST_large``) hold one sub-folder per
class, ``A/`` ... ``J/``, of 28x28 grayscale PNG glyphs; a few files in them cannot be decoded.
:func:`load_image_folder` reads such a tree (as torchvision's ``ImageFolder`` would, without its
per-item loading) into one tensor: unreadable files are skipped and reported in a single warning
line on the ``enkf_repro`` logger, never an exception. ``data.py`` routes ``dataset=notmnist`` here
when ``<root>/notmnist/`` holds letter folders instead of IDX files (or ``dataset.format=folder``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import DataError

log = logging.getLogger("enkf_repro")

SIZE = 28  # the paper's network takes 28x28 images


def _read_image(path: Path) -> np.ndarray | None:
    """One image as a (28, 28) uint8 array (grayscale, resized bilinearly if another size), or
    None when the file cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("L")
            if im.size != (SIZE, SIZE):
                im = im.resize((SIZE, SIZE), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        # PIL raises UnidentifiedImageError (an OSError) for non-images, OSError / SyntaxError /
        # ValueError for truncated or corrupt PNGs
        return None


def load_image_folder(folder: str | Path, classes: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``folder/<class>/*`` for each class name into tensors.

    Args:
        folder: the dataset folder, e.g. ``<root>/notmnist`` with sub-folders ``A`` ... ``J``.
        classes: the class names in label order (label k = ``classes[k]``).
    Returns:
        x: (N, 1, 28, 28) float32 in [0, 1] (pixel / 255); y: (N,) int64 labels. Files are read
        in sorted order per class, classes in label order, so the result is deterministic.
    Raises:
        DataError naming the folder when a class folder is missing or no image is readable.
    Unreadable files (and non-image files) are skipped and counted in one warning line.
    """
    folder = Path(folder)
    images: list[np.ndarray] = []
    labels: list[int] = []
    bad: list[Path] = []
    for k, name in enumerate(classes):
        sub = folder / name
        if not sub.is_dir():
            raise DataError(f"{sub}: missing class folder (expected one folder per class "
                            f"{', '.join(classes)} in {folder}, or the IDX .gz files)")
        for path in sorted(p for p in sub.iterdir() if p.is_file() and not p.name.startswith(".")):
            arr = _read_image(path)
            if arr is None:
                bad.append(path)
                continue
            images.append(arr)
            labels.append(k)
    if bad:
        log.warning("%s: skipped %d unreadable image file%s (e.g. %s)", folder, len(bad),
                    "" if len(bad) == 1 else "s", bad[0].relative_to(folder))
    if not images:
        raise DataError(f"{folder}: no readable images in the class folders {', '.join(classes)}")
    x = torch.from_numpy(np.stack(images)).unsqueeze(1).float().div_(255.0)
    y = torch.tensor(labels, dtype=torch.int64)
    return x, y
