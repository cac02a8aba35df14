"""Figure 6: Adam at sigma = 3 for one epoch (938 steps of 64 shuffled MNIST images), drawn as
Figure 3. sigma = 3, not 1: the paper's paragraph on Figure 6 follows "When fixing sigma = 3",
and Figures 6 and 7 are the two views of the Adam run that learns late in Figure 5.

The paper: layer 1's mean activation goes from 0.49 to 0.53 over the epoch (0.5124 / 0.2860 over
it), layer 2's from 0.47 to 0.5 and is flat from about iteration 400 (0.4957 / 0.4965 over the
epoch), layer 3 (the softmax) 0.1. Judged in optimiser steps over the paper's epoch of 938 steps.
"""

from __future__ import annotations

from .base import Claim, Figure, PaperNumber, register
from .common import single_variant
from .instrument_rows import (
    EPOCH_STEPS,
    SETTLE_RULE,
    check_settles,
    diagnose_settles,
    measure_window,
    overall,
    start_value,
)
from .saturation_panels import LayerMarks, plot_one_epoch

# per layer: (first iteration, end of the epoch), (mean, std) over the epoch
PAPER = {1: ((0.49, 0.53), (0.5124, 0.2860)), 2: ((0.47, 0.5), (0.4957, 0.4965))}
END = (int(EPOCH_STEPS * 0.9), EPOCH_STEPS)


def plot(df, cfg):
    marks = {l: LayerMarks(level=pooled, level_label="paper, over the epoch", path=path)
             for l, (path, pooled) in PAPER.items()}
    return plot_one_epoch(df, cfg, "Figure 6", marks)


def m_start(layer: int):
    return lambda df, cfg: start_value(df, "act_mean", layer)


def m_overall(layer: int, k: int):
    def f(df, cfg):
        o = overall(df, layer)
        return None if o is None else (o[k], "pooled over all iterations")

    return f


register(Figure(
    id="6", config="fig6",
    title="Adam at sigma = 3: activations (one epoch)",
    description="Adam, sigma=3, 1 epoch: per-layer activation mean/std per iteration, gradient histograms",
    variants=single_variant, plot=plot,
    paper_numbers=tuple(
        n for l, ((a, b), (m, sd)) in PAPER.items() for n in (
            PaperNumber(f"layer {l} mean activation at the first iteration", a, m_start(l)),
            PaperNumber(f"layer {l} mean activation at the end of the epoch (its last 10 % of steps)", b,
                        measure_window("act_mean", l, *END)),
            PaperNumber(f"layer {l} activation mean over the epoch (all iterations pooled)", m, m_overall(l, 0)),
            PaperNumber(f"layer {l} activation std over the epoch (all iterations pooled)", sd, m_overall(l, 1)),
        )),
    claims=(
        Claim("Adam's layer-1 mean activation does not settle by step 200: it keeps moving over the epoch",
              check_settles((("act_mean", 1),), 200, expect=False),
              sentence="layer 1's mean activation rises from 0.49 to 0.53 over the epoch (Figure 6)",
              unit="optimiser steps (938 in the paper's epoch)", threshold=SETTLE_RULE),
        Claim("Adam's layer-2 mean activation settles by step 400",
              check_settles((("act_mean", 2),), 400, expect=True),
              sentence="layer 2's mean activation goes from 0.47 to 0.5 and is flat from about iteration 400 "
                       "(Figure 6)",
              unit="optimiser steps (938 in the paper's epoch)", threshold=SETTLE_RULE,
              diagnose=diagnose_settles((("act_mean", 2),), 400)),
    ),
))
