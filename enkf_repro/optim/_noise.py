"""Observation-noise argument shared by the optim numerics: Gamma = gamma * I or diag(gamma)."""

from __future__ import annotations

import torch


def noise_variance(gamma: float | torch.Tensor, d: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """The diagonal of Gamma as a (d,) tensor.

    Args:
        gamma: a positive number (Gamma = gamma * I) or a tensor of d positive variances in any
            shape (e.g. (d,) or (B, C), flattened in row-major order like the outputs).
        d: the data dimension.
    Raises:
        ValueError: wrong number of entries, or an entry that is not finite and positive.
    """
    if isinstance(gamma, torch.Tensor):
        g = gamma.detach().to(device=device, dtype=dtype).reshape(-1)
        if g.numel() == 1:
            g = g.expand(d)
        elif g.numel() != d:
            raise ValueError(f"gamma has {g.numel()} entries; expected 1 or the data dimension {d}")
    else:
        g = torch.full((d,), float(gamma), dtype=dtype, device=device)
    if not bool((torch.isfinite(g) & (g > 0)).all()):
        raise ValueError("gamma: observation-noise variances must be finite and > 0")
    return g
