"""What the methods that train a single network theta share (``optimizer=haber`` and
``ienk_simple``: their perturbations are drawn afresh each step, so there is no ensemble to keep):
evaluation, diagnostics and checkpoint state are those of theta alone."""

from __future__ import annotations

from typing import Any

import torch


class SingleNetworkMethod:
    theta: torch.Tensor
    K: int   # perturbations per step

    def eval_params(self) -> dict[str, torch.Tensor]:
        return {"": self.theta}

    def diagnostics(self) -> dict[str, float]:
        return {"ensemble_size": self.K}

    def state_dict(self) -> dict[str, Any]:
        return {"theta": self.theta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta = state["theta"].to(self.theta.device)
