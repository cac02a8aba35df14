"""Ensemble inflation, in place, as EnsembleKalmanProcesses.jl defines it
(src/EnsembleKalmanProcess.jl, ``multiplicative_inflation!`` and ``additive_inflation!``;
docs "Inflation", after Huang et al. 2022, arXiv:2204.04386, eq. 41).

Both are tied to the step dt of the update and a factor s (EKP's ``s``; for mini-batches EKP
suggests s = batch size / data-set size), and need s dt < 1:

    multiplicative:  u_j <- m + (1 - s dt)^{-1/2} (u_j - m)     C <- C / (1 - s dt)
    additive:        u_j <- u_j + zeta_j,  zeta_j ~ N(0, s dt / (1 - s dt) Sigma)

m the ensemble mean (kept), C the ensemble covariance, Sigma a given covariance (EKP's default
is the prior covariance). Multiplicative inflation keeps every member in the affine span of the
ensemble; additive inflation with a given Sigma leaves it. U is (J, P) with members as rows;
both functions work on column blocks, so no J x P temporary beyond a block is made.

Every ensemble method applies them after each update (``optimizer.inflation.*``,
:class:`InflationConfig`, applied by :class:`Inflation` from ``EnsembleMethod.apply_update``,
``optim/base.py``), with dt the step of that update: 1 for the EnKF (its Gamma is not scaled),
h_n for EKI, dt_n for ETKI. Off by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Optional

import torch

from ..config.validate import check
from ..errors import ConfigError
from .linalg import BLOCK_ELEMENTS, apply_low_rank_


def inflation_variance_factor(scale: float, dt: float = 1.0) -> float:
    """s dt / (1 - s dt): EKP's additive-inflation variance factor; ValueError unless 0 <= s dt < 1."""
    sdt = float(scale) * float(dt)
    if not (math.isfinite(sdt) and 0.0 <= sdt < 1.0):
        raise ValueError(f"inflation needs 0 <= s * dt < 1; got s={scale!r}, dt={dt!r} (s * dt = {sdt!r})")
    return sdt / (1.0 - sdt)


def multiplicative_factor(scale: float, dt: float = 1.0) -> float:
    """(1 - s dt)^{-1/2}: EKP's multiplicative-inflation factor for :func:`multiplicative_inflation_`
    (the covariance grows by 1 / (1 - s dt)); ValueError unless 0 <= s dt < 1."""
    return math.sqrt(1.0 + inflation_variance_factor(scale, dt))


def _block(J: int, block: int | None) -> int:
    return block if block is not None else max(256, BLOCK_ELEMENTS // max(J, 1))


def multiplicative_inflation_(U: torch.Tensor, factor: float, block: int | None = None) -> torch.Tensor:
    """In place: u_j <- m + factor (u_j - m), m = mean of the rows of U (J, P); returns U.

    The mean is kept (exactly in exact arithmetic, to rounding in floating point) and the
    deviations, hence the spread, are multiplied by ``factor`` (the covariance by factor^2).
    Use ``factor = multiplicative_factor(s, dt)`` for EKP's inflation. Works on column blocks.
    """
    factor = float(factor)
    if not (math.isfinite(factor) and factor >= 0):
        raise ValueError(f"factor={factor!r} must be finite and >= 0")
    J, P = U.shape
    b = _block(J, block)
    for s in range(0, P, b):
        Ub = U[:, s: s + b]
        m = Ub.mean(0, keepdim=True)
        Ub.sub_(m).mul_(factor).add_(m)
    return U


def additive_inflation_(U: torch.Tensor, generator: torch.Generator, scale: float, dt: float = 1.0,
                        variance: float | torch.Tensor | None = None, keep_mean: bool = False,
                        block: int | None = None) -> torch.Tensor:
    """In place: u_j <- u_j + zeta_j with zeta_j ~ N(0, a Sigma), a = s dt / (1 - s dt); returns U.

    Args:
        U: ensemble (J, P), members as rows.
        generator: the torch.Generator the noise is drawn from (on U's device).
        scale: s (EKP's ``s``), with 0 <= s dt < 1.
        dt: the step of the update just made (Delta t).
        variance: Sigma. A number or a (P,) tensor: Sigma = diag(variance), e.g. the prior
            variance per parameter (EKP's default Sigma is the prior covariance; only diagonal
            ones are offered here). None: Sigma = the ensemble's own covariance
            C = (1/J) sum_k (u_k - m)(u_k - m)^T (this package's 1/J normalisation), drawn as
            zeta_j = sqrt(a / J) sum_k z_jk (u_k - m), z ~ N(0, 1) (J x J); the ensemble then
            stays in its affine span and E[new covariance] ~ C / (1 - s dt) as for
            multiplicative inflation (EKP's docs, "if Sigma = C_n").
        keep_mean: subtract the members' mean of the noise, so the ensemble mean is kept (to
            rounding); the noise covariance is then (1 - 1/J) a Sigma. EKP does not do this
            (False, the default).
        block: columns per block (default about 2^24 elements per block).
    The noise of a diagonal Sigma is drawn block by block, so the draws depend on the block
    size; the same generator state, shape and block size give the same result.
    """
    a = inflation_variance_factor(scale, dt)
    J, P = U.shape
    if variance is None:
        Zm = torch.randn(J, J, generator=generator, device=U.device, dtype=torch.float64)
        if keep_mean:
            Zm.sub_(Zm.mean(0, keepdim=True))          # zeta sums to zero over members
        Zm.mul_(math.sqrt(a / J))
        return apply_low_rank_(U, Zm, None, block)     # U += Zm (U - m), blocked
    if isinstance(variance, torch.Tensor):
        v = variance.detach().to(device=U.device, dtype=U.dtype).reshape(-1)
        if v.numel() == 1:
            v = v.expand(P)
        elif v.numel() != P:
            raise ValueError(f"variance has {v.numel()} entries; expected 1 or P = {P}")
    else:
        v = torch.full((P,), float(variance), device=U.device, dtype=U.dtype)
    if not bool((torch.isfinite(v) & (v >= 0)).all()):
        raise ValueError("variance must be finite and >= 0")
    std = (v * a).sqrt()
    b = _block(J, block)
    for s in range(0, P, b):
        noise = torch.randn(J, min(b, P - s), generator=generator, device=U.device, dtype=U.dtype)
        if keep_mean:
            noise.sub_(noise.mean(0, keepdim=True))
        U[:, s: s + b].addcmul_(noise, std[s: s + b])
    return U


# -- the config and its application after each update ------------------------------------------
class MultiplicativeForm(str, Enum):
    factor = "factor"   # ``multiplicative`` is the factor f >= 1 on the deviations: u_j <- m + f (u_j - m)
    ekp = "ekp"         # ``multiplicative`` is EKP's s: f = (1 - s dt)^(-1/2), dt the update's step


class AdditiveCovariance(str, Enum):
    prior = "prior"         # Sigma = the init prior's (diagonal) covariance, EKP's default
    ensemble = "ensemble"   # Sigma = the ensemble's own covariance (stays in its affine span)


@dataclass
class InflationConfig:
    """``optimizer.inflation.*``: covariance inflation after every update of an ensemble method
    (off by default: the paper's runs are unchanged)."""

    multiplicative: Optional[float] = None   # null: off; f (form=factor) or s (form=ekp)
    multiplicative_form: MultiplicativeForm = MultiplicativeForm.factor
    additive: Optional[float] = None         # null: off; EKP's s: zeta_j ~ N(0, s dt / (1 - s dt) Sigma)
    additive_covariance: AdditiveCovariance = AdditiveCovariance.prior
    additive_keep_mean: bool = False         # centre the additive noise over the members (mean kept)


def check_inflation(icfg, key: str = "optimizer.inflation") -> None:
    """Ranges of ``optimizer.inflation.*``: a ConfigError for the first bad value."""
    m = icfg.multiplicative
    if m is not None:
        if icfg.multiplicative_form == MultiplicativeForm.factor:
            check(math.isfinite(m) and m >= 1.0, f"{key}.multiplicative", m,
                  "a factor >= 1 on the deviations (null: off)")
        else:
            check(math.isfinite(m) and 0.0 <= m < 1.0, f"{key}.multiplicative", m,
                  "EKP's s in [0, 1) with s * dt < 1 (null: off)")
    a = icfg.additive
    if a is not None:
        check(math.isfinite(a) and 0.0 <= a < 1.0, f"{key}.additive", a,
              "EKP's s in [0, 1) with s * dt < 1 (null: off)")


class Inflation:
    """Applies ``optimizer.inflation`` to an ensemble after an update with step dt.

    ``prior_variance`` is called once, when additive inflation with the prior covariance first
    needs it (the (P,) variances of the init prior). The noise is drawn from ``generator``; with
    inflation off nothing is drawn and nothing changes."""

    def __init__(self, icfg: InflationConfig, generator: torch.Generator | None,
                 prior_variance: Callable[[], torch.Tensor] | None = None):
        self.multiplicative = None if icfg.multiplicative is None else float(icfg.multiplicative)
        self.form = icfg.multiplicative_form.value
        self.additive = None if icfg.additive is None else float(icfg.additive)
        self.covariance = icfg.additive_covariance.value
        self.keep_mean = bool(icfg.additive_keep_mean)
        self.generator = generator
        self._prior_variance = prior_variance
        self._variance: torch.Tensor | None = None

    @property
    def enabled(self) -> bool:
        return self.multiplicative is not None or self.additive is not None

    def factor(self, dt: float) -> float:
        """The multiplicative factor for a step dt (1 when off)."""
        if self.multiplicative is None:
            return 1.0
        if self.form == "factor":
            return self.multiplicative
        self._check_sdt("multiplicative", self.multiplicative, dt)
        return multiplicative_factor(self.multiplicative, dt)

    @staticmethod
    def _check_sdt(which: str, s: float, dt: float) -> None:
        if not s * dt < 1.0:
            raise ConfigError(f"optimizer.inflation.{which}", s, f"s with s * dt < 1, but this update's step was "
                              f"dt = {dt:.4g} (s * dt = {s * dt:.4g}): use a smaller s")

    def apply_(self, U: torch.Tensor, dt: float = 1.0) -> torch.Tensor:
        """In place on U (J, P): multiplicative, then additive inflation for the step dt."""
        if self.multiplicative is not None:
            f = self.factor(dt)
            if f != 1.0:
                multiplicative_inflation_(U, f)
        if self.additive is not None and self.additive * dt > 0:
            self._check_sdt("additive", self.additive, dt)
            variance = None
            if self.covariance == "prior":
                if self._variance is None:
                    if self._prior_variance is None:
                        raise ValueError("additive inflation with the prior covariance needs the prior variances")
                    self._variance = self._prior_variance()
                variance = self._variance
            additive_inflation_(U, self.generator, self.additive, dt, variance, self.keep_mean)
        return U
