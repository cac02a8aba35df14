"""Figure 3: SGD at sigma = 1 for one epoch (938 steps of 64 shuffled MNIST images): per-layer
activation mean +/- std against the optimiser step (the spread of the layer's activations, not
over seeds), and the gradient histograms every 200 steps (the published statistic, the gradient
averaged over the layer's output units).

The paper: the activations "saturate close to 200 iterations"; at the end of the epoch the layer
means / stds are 0.4597 / 0.2976 (layer 1), 0.3178 / 0.4624 (layer 2), 0.1 / 0.2908 (layer 3,
the softmax); SGD does not learn. Judged in optimiser steps over the paper's epoch of 938 steps
(instrument_rows.py) and the paper's epochs of 60,000 images (paper_units.py).
"""

from __future__ import annotations

from .base import Claim, Figure, PaperNumber, register
from .common import single_variant
from .instrument_rows import EPOCH_STEPS, SETTLE_RULE, check_settles, diagnose_settles, measure_window
from .paper_units import LEARNS, check_no_learning, epochs_text, errors
from .saturation_panels import LayerMarks, plot_one_epoch

PAPER = {1: (0.4597, 0.2976), 2: (0.3178, 0.4624), 3: (0.1, 0.2908)}   # end of the epoch: (mean, std)
SETTLE_AT = 200
SETTLE = (("act_mean", 1), ("act_std", 1), ("act_mean", 2), ("act_std", 2))
END = (int(EPOCH_STEPS * 0.9), EPOCH_STEPS)   # "the end of the epoch": its last 10 % of steps
SGD = {"optimizer": "sgd", "init_sigma": 1.0}


def plot(df, cfg):
    marks = {l: LayerMarks(level=PAPER[l], level_label="paper (MNIST), end of the epoch") for l in PAPER}
    return plot_one_epoch(df, cfg, "Figure 3", marks)


def m_final_error(df, cfg):
    err = errors(df, **SGD)
    if err.empty:
        return None
    last = err.sort_values("iteration").groupby("run_dir").tail(1)
    return float(last["value"].mean()), f"step {int(last['iteration'].max())} = {epochs_text(last['pe'].max())}"


register(Figure(
    id="3", config="fig3",
    title="SGD at sigma = 1: activations saturate (one epoch)",
    description="SGD, sigma=1, 1 epoch: per-layer activation mean/std per iteration, gradient histograms",
    variants=single_variant, plot=plot,
    paper_numbers=tuple(
        PaperNumber(f"layer {l} activation {stat} at the end of the epoch (mean over its last 10 % of steps)",
                    PAPER[l][k], measure_window(f"act_{stat}", l, *END))
        for l in (1, 2, 3) for k, stat in enumerate(("mean", "std"))) + (
        PaperNumber("SGD test error (%) after the epoch (paper: does not learn)", "no learning", m_final_error),
    ),
    claims=(
        Claim("SGD at sigma = 1 does not learn within the paper's first epoch", check_no_learning(SGD, 1.0),
              sentence="SGD with weights ~ N(0, 1) does not learn (Figures 1, 3)",
              unit="the paper's epochs (60,000 images)", threshold=f"learning: {LEARNS}"),
        Claim(f"the layer-1 and layer-2 activation mean and std settle by step {SETTLE_AT}",
              check_settles(SETTLE, SETTLE_AT, expect=True),
              sentence="the activations \"saturate close to 200 iterations\"",
              unit="optimiser steps (938 in the paper's epoch)", threshold=SETTLE_RULE,
              diagnose=diagnose_settles(SETTLE, SETTLE_AT)),
    ),
))
