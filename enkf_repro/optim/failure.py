"""Members whose outputs are not finite (NaN or Inf, e.g. after an overflow): one policy for
every ensemble method (``optimizer.nonfinite``), and the Gaussian redraw around the survivors.

* ``redraw`` (default): the failed members sit out the update (they are left out of every
  ensemble statistic), the others are updated, then the failed ones are replaced by draws from
  the Gaussian with the updated survivors' mean and covariance (:func:`gaussian_draws`, within
  their span), counted in the ``nonfinite_members`` metric;
* ``ignore``: the failed members sit out the update and keep their parameters (useful when
  failures are transient; a member whose parameters are not finite makes the mean non-finite);
* ``fail``: stop the run with a :class:`~enkf_repro.errors.DivergenceError`.

Fewer than two finite members always stop the run.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, Callable

import torch

from ..errors import DivergenceError


class NonfinitePolicy(str, Enum):
    redraw = "redraw"
    ignore = "ignore"
    fail = "fail"


def gaussian_draws(U: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """n draws (n, P) from the Gaussian with the mean and covariance of the ensemble U (J, P),
    J >= 2: u = mean + sum_k z_k (u_k - mean) / sqrt(J - 1), z ~ N(0, I_J) (stays in U's span)."""
    J = U.shape[0]
    if J < 2:
        raise DivergenceError(f"cannot draw around an ensemble of {J} member(s)")
    mean = U.mean(0, keepdim=True)
    z = torch.randn(n, J, generator=generator, device=U.device, dtype=U.dtype)
    return mean + z @ (U - mean) / math.sqrt(J - 1)


def redraw_members(U: torch.Tensor, bad: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """In place: replace the rows ``bad`` of U by :func:`gaussian_draws` around the others."""
    good = ~bad
    if int(good.sum()) < 2:
        raise DivergenceError(f"only {int(good.sum())} of {U.shape[0]} ensemble members are finite; cannot redraw")
    U[bad] = gaussian_draws(U[good], int(bad.sum()), generator)
    return U


def nonfinite_rows(U: torch.Tensor) -> torch.Tensor:
    """Mask (J,) of the rows of U (J, P) holding a NaN or an infinity, read off the row sums (a NaN
    or an infinity makes the sum non-finite; so does a sum above the float range, which only a
    diverged member reaches). One pass over U without a J x P mask: about 25x cheaper than
    ``isfinite(U).all(1)`` at J = 500, P = 1e5 on a CPU, where that check cost EKI 20 % per step."""
    return ~torch.isfinite(U.sum(1))


def nonfinite_members(G: torch.Tensor, U: torch.Tensor | None = None) -> torch.Tensor:
    """Mask (J,) of the members whose outputs G (J, ...) (or parameters U) are not all finite."""
    bad = ~torch.isfinite(G).flatten(1).all(1)
    if U is not None:
        bad |= nonfinite_rows(U)
    return bad


class FailureHandler:
    """Applies ``optimizer.nonfinite`` around an in-place update of the ensemble."""

    def __init__(self, policy: NonfinitePolicy | str, generator: torch.Generator | None):
        if policy not in NonfinitePolicy.__members__.values():
            allowed = ", ".join(NonfinitePolicy.__members__)
            raise ValueError(f"nonfinite policy {policy!r}: expected one of {allowed}")
        self.policy = NonfinitePolicy(policy).value
        self.generator = generator
        self.total = 0   # failed member-steps so far (the nonfinite_members metric)

    def apply(self, U: torch.Tensor, G: torch.Tensor,
              update: Callable[[torch.Tensor, torch.Tensor], Any]) -> tuple[Any, int]:
        """``update(U_rows, G_rows)`` (in place on its U argument) on the finite members only,
        then the policy for the others; returns (what update returned, number of failed members)."""
        bad = nonfinite_members(G, U)
        nbad = int(bad.sum())
        if nbad == 0:
            return update(U, G), 0
        J = U.shape[0]
        if self.policy == "fail":
            raise DivergenceError(f"{nbad} of {J} members have non-finite outputs (optimizer.nonfinite=fail)")
        good = ~bad
        if J - nbad < 2:
            raise DivergenceError(f"{nbad} of {J} members have non-finite outputs; the ensemble diverged")
        Ug = U[good]
        out = update(Ug, G[good])
        U[good] = Ug
        if self.policy == "redraw":
            redraw_members(U, bad, self.generator)
        self.total += nbad
        return out, nbad
