"""Small networks for the tests of ``model=custom`` and ``enkf_repro.train`` (importable as
``custom_nets``: pytest puts this folder on the path, and the command-line tests run in-process)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class TwoLayer(nn.Module):
    """784 -> hidden (tanh) -> 10: a plain two-layer classifier."""

    def __init__(self, hidden: int = 32, classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


class BufferedCNN(nn.Module):
    """A small CNN with buffers and a non-trivial module: input normalisation by a registered
    buffer, conv -> BatchNorm (running statistics, eval mode) -> ReLU -> pool -> linear."""

    def __init__(self, channels: int = 3, classes: int = 10):
        super().__init__()
        self.register_buffer("offset", torch.tensor(0.25))
        self.conv = nn.Conv2d(1, channels, 5, stride=2)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels * 6 * 6, classes)
        with torch.no_grad():   # non-trivial running statistics
            self.bn.running_mean.copy_(torch.linspace(-0.5, 0.5, channels))
            self.bn.running_var.copy_(torch.linspace(0.5, 2.0, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.bn(self.conv(x - self.offset))), 2)
        return self.fc(h.flatten(1))


def make_two_layer(width: int = 16) -> nn.Module:
    """A factory (not a class) for ``model.target``."""
    return TwoLayer(hidden=width)


NOT_A_MODULE = 42


def not_a_module_factory() -> int:
    return 7
