"""Figure 4: SGD at sigma = 1 for the paper's 50 epochs, drawn as the paper does: per layer the
weight-gradient mean +/- std at every iteration of epochs 0, 10, 20, 30, 40 (one line per epoch),
the histograms of the gradient averaged over output units in those epochs, and the distribution
(percentiles over the epoch's iterations) of the mean activation per epoch
(``figure.<scale>.gradient_view=epoch``: the gradients pooled per epoch instead).

The paper: SGD still does not learn; layer 1's mean activation goes from 0.475 (first epoch) to
0.5 (last); the fc layer's gradient std is about 0.1. Read on the paper's epochs of 60,000 images.
"""

from __future__ import annotations

from .base import Claim, Figure, PaperNumber, register
from .common import single_variant
from .instrument_rows import measure_epoch, measure_run_mean
from .paper_units import LEARNS, check_no_learning, measure_error_at
from .saturation_panels import ManyEpochsSettings, plot_many_epochs

EPOCHS = 50
LAYER1 = ((0.475, 1), (0.5, EPOCHS))   # layer-1 mean activation: (value, 1-based epoch) first and last
SGD = {"optimizer": "sgd", "init_sigma": 1.0}


def plot(df, cfg):
    view = FIGURE.settings_of(cfg).gradient_view.value
    return plot_many_epochs(df, cfg, "Figure 4", view, LAYER1)


FIGURE = register(Figure(
    id="4", config="fig4", settings=ManyEpochsSettings,
    title="SGD at sigma = 1 over 50 epochs: gradients per iteration and activations per epoch",
    description="SGD, sigma=1, 50 epochs: gradient mean/std per iteration of epochs 0, 10, .., 40, "
                "histograms of the gradient averaged over output units, mean-activation distribution per epoch",
    variants=single_variant, plot=plot,
    paper_numbers=(
        PaperNumber("layer 1 mean activation in the first epoch", 0.475, measure_epoch("act_mean", 1, 0)),
        PaperNumber(f"layer 1 mean activation in the last epoch ({EPOCHS})", 0.5,
                    measure_epoch("act_mean", 1, EPOCHS - 1)),
        PaperNumber(f"layer 3 (fc) weight-gradient std, mean over the {EPOCHS} epochs (paper: about 0.1)", 0.1,
                    measure_run_mean("grad_std", 3, EPOCHS)),
        PaperNumber(f"SGD test error (%) after {EPOCHS} epochs (paper: still no learning)", "no learning",
                    measure_error_at(SGD, EPOCHS)),
    ),
    claims=(
        Claim(f"SGD at sigma = 1 does not learn within the paper's {EPOCHS} epochs", check_no_learning(SGD, EPOCHS),
              sentence="with SGD and weights ~ N(0, 1) there is still no learning after 50 epochs (Figure 4)",
              unit="the paper's epochs (60,000 images)", threshold=f"learning: {LEARNS}"),
    ),
))
