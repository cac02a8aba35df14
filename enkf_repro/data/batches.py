"""The stream of mini-batches of a run, reproducible across interruptions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .datasets import Data


class Batches:
    """The run's stream of mini-batches: ``epochs`` passes over the first ``max_batches`` batches,
    in order, or in a per-epoch permutation derived from (seed, epoch) when shuffling, so a resumed
    run sees exactly the batches an uninterrupted one would."""

    def __init__(self, data: Data, tcfg, seed: int, shuffle_default: bool = False):
        self.data = data
        self.B = int(tcfg.batch_size)
        n = data.train_x.shape[0]
        if self.B > n:
            raise ConfigError("train.batch_size", self.B, f"at most the training set size {n}")
        per_epoch = math.ceil(n / self.B)
        if tcfg.max_batches is not None:
            per_epoch = min(per_epoch, int(tcfg.max_batches))
        self.per_epoch = per_epoch
        self.n_used = min(n, per_epoch * self.B)
        self.total = max(1, math.ceil(float(tcfg.epochs) * per_epoch))
        self.shuffle = shuffle_default if tcfg.shuffle is None else bool(tcfg.shuffle)
        self.seed = int(seed)
        self._perm_epoch, self._perm = -1, None
        self.C = data.num_classes

    def get(self, k: int, onehot: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch k of the stream: images and one-hot targets (or integer labels)."""
        epoch, i = divmod(k, self.per_epoch)
        idx = slice(i * self.B, min((i + 1) * self.B, self.n_used))
        if self.shuffle:
            if self._perm_epoch != epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm = torch.randperm(self.n_used, generator=g).to(self.data.train_x.device)
                self._perm_epoch = epoch
            sel = self._perm[idx]
            x, y = self.data.train_x[sel], self.data.train_y[sel]
        else:
            x, y = self.data.train_x[idx], self.data.train_y[idx]
        return x, (F.one_hot(y, self.C).to(x.dtype) if onehot else y)

    @property
    def data_fraction(self) -> float:
        """The share of the training set one pass over the run's batches sees (< 1 when
        ``train.max_batches`` keeps only the first batches)."""
        return self.n_used / self.data.train_x.shape[0]

    def pass_of(self, batch_progress: float) -> float:
        """Passes over the run's batches done when ``batch_progress`` batches have been presented."""
        return batch_progress / self.per_epoch

    def epoch_of(self, batch_progress: float) -> float:
        """Epochs of the training set seen (its fraction seen) after ``batch_progress`` batches:
        a run of 24 of the 938 batches of MNIST is at epoch 0.026, not 1.0."""
        return self.pass_of(batch_progress) * self.data_fraction
