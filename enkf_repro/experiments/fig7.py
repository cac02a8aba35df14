"""Figure 7: Adam at sigma = 3 for the paper's 50 epochs, drawn as Figure 4. sigma = 3, not 1: the
paper's text on Figure 7 (no learning up to epoch 10, learning only after epoch 28, at most 84 %
accuracy) is the sigma = 3 curve of Figure 5; at sigma = 1 Adam passes 95 % within 10 epochs.

The paper: no learning (test accuracy < 10 %) up to epoch 10, learning after epoch 28, up to
84 %; layer 1's mean activation 0.49 (epoch 1) -> 0.56 (epoch 40); layer 1's gradient means in
[-0.3, 0.2] in the first epochs and in [-0.02, 0.02] after epoch 28; the fc layer's gradient std
0.16 -> 0.01. The gradient means are the per-iteration layer means (the ``grad_mean_iter`` rows of
the iteration epochs 0, 10, 20, 30, 40). Read on the paper's epochs of 60,000 images.
"""

from __future__ import annotations

from .base import Claim, Figure, PaperNumber, register
from .common import single_variant
from .instrument_rows import (
    epoch_images,
    epoch_value,
    iteration_range,
    layer_rows,
    measure_epoch,
    other_epochs,
    per_epoch,
)
from .paper_units import (
    LEARNS,
    check_learns_late,
    check_no_learning,
    diagnose_learning,
    measure_best_accuracy,
    measure_error_at,
    measure_first_learning,
)
from .saturation_panels import ManyEpochsSettings, plot_many_epochs

EPOCHS = 50
LATE = 20     # "learns only after epoch 28" checked as: sustained learning starts after epoch 20
LAYER1 = ((0.49, 1), (0.56, 40))
ADAM = {"optimizer": "adam", "init_sigma": 3.0}


def plot(df, cfg):
    view = FIGURE.settings_of(cfg).gradient_view.value
    return plot_many_epochs(df, cfg, "Figure 7", view, LAYER1)


def m_grad_extent(epochs: set[int]):
    """The largest |per-iteration mean gradient| of layer 1 in the (0-based) iteration ``epochs``."""
    def f(df, cfg):
        if epoch_images(df) is None:
            return None
        if (other := other_epochs(df)) is not None:
            return other
        got = iteration_range(df, "grad_mean", 1, epochs)
        if got is None:
            return None, "not logged: epochs " + ", ".join(map(str, sorted(epochs))) + " have no per-iteration rows"
        lo, hi = got
        return max(abs(lo), abs(hi)), f"range [{lo:.3g}, {hi:.3g}] over epochs {', '.join(map(str, sorted(epochs)))}"

    return f


def c_rises(df, cfg):
    """Layer 1's mean activation is higher in epoch 40 than in the first (0-based 39 and 0)."""
    a, b = epoch_value(df, "act_mean", 1, 0), epoch_value(df, "act_mean", 1, 39)
    if layer_rows(df, "act_mean", 1).empty:
        return "no act_mean rows for layer 1", None
    if (other := other_epochs(df)) is not None:
        return f"{other[1]} (not decided)", None
    if a is None or b is None:
        return "the run does not reach the paper's epoch 40 (not decided)", None
    return f"layer 1 mean activation {a[0]:.4f} ({a[1]}) -> {b[0]:.4f} ({b[1]})", bool(b[0] > a[0])


def why_not_late(df, cfg) -> str | None:
    """The test-error history, and layer 2's activations per epoch: a layer whose units all sit at
    one value (std near 0) passes nothing on."""
    text = diagnose_learning(ADAM, EPOCHS)(df, cfg)
    std = per_epoch(df, "act_std", 2)
    mean = per_epoch(df, "act_mean", 2)
    if std.empty or mean.empty:
        return text
    s, m = std.groupby("ep")["value"].mean(), mean.groupby("ep")["value"].mean()
    low = s[s < 0.05]
    if low.empty:   # layer 2 keeps its spread: nothing to add
        return text
    layer2 = (f"layer 2's activation std {s.iloc[0]:.3f} in epoch 0, below 0.05 from epoch {int(low.index[0])} "
              f"(0-based), {s.iloc[-1]:.3f} in epoch {s.index[-1]}, mean {m.iloc[0]:.3f} -> {m.iloc[-1]:.3f}: its "
              "units sit at one value")
    return "; ".join(p for p in (text, layer2) if p)


FIGURE = register(Figure(
    id="7", config="fig7", settings=ManyEpochsSettings,
    title="Adam at sigma = 3 over 50 epochs: gradients per iteration and activations per epoch",
    description="Adam, sigma=3, 50 epochs: gradient mean/std per iteration of epochs 0, 10, .., 40, "
                "histograms of the gradient averaged over output units, mean-activation distribution per epoch",
    variants=single_variant, plot=plot,
    paper_numbers=(
        PaperNumber("layer 1 mean activation in the first epoch", 0.49, measure_epoch("act_mean", 1, 0)),
        PaperNumber("layer 1 mean activation in epoch 40", 0.56, measure_epoch("act_mean", 1, 39)),
        PaperNumber("test error (%) at epoch 10 (paper: no learning yet; chance 90 %)", 90.0,
                    measure_error_at(ADAM, 10)),
        PaperNumber("first epoch of sustained learning (paper: after epoch 28)", 28.0,
                    measure_first_learning(ADAM, EPOCHS)),
        PaperNumber("first epoch with the test error below 50 % to stay (paper: learns after epoch 28)", 28.0,
                    measure_first_learning(ADAM, EPOCHS, 50.0)),
        PaperNumber(f"best test accuracy (%) within {EPOCHS} epochs (paper: up to 84 %)", 84.0,
                    measure_best_accuracy(ADAM, EPOCHS)),
        PaperNumber("layer 1 largest |per-iteration mean gradient| in epochs 0 and 10 (paper: within [-0.3, 0.2])",
                    0.3, m_grad_extent({0, 10})),
        PaperNumber("layer 1 largest |per-iteration mean gradient| in epochs 30 and 40, after epoch 28 (paper: "
                    "within [-0.02, 0.02])", 0.02, m_grad_extent({30, 40})),
        PaperNumber("layer 3 (fc) weight-gradient std in the first epoch", 0.16, measure_epoch("grad_std", 3, 0)),
        PaperNumber(f"layer 3 (fc) weight-gradient std in the last epoch ({EPOCHS})", 0.01,
                    measure_epoch("grad_std", 3, EPOCHS - 1)),
    ),
    claims=(
        Claim("Adam at sigma = 3 does not learn up to the paper's epoch 10", check_no_learning(ADAM, 10),
              sentence="no learning (test accuracy < 10 %) up to epoch 10 (Figure 7)",
              unit="the paper's epochs (60,000 images)", threshold=f"learning: {LEARNS}"),
        Claim(f"Adam at sigma = 3 learns only late: sustained learning starts after epoch {LATE} and within "
              f"{EPOCHS}", check_learns_late(ADAM, LATE, EPOCHS),
              sentence="learns after epoch 28, up to 84 % (Figure 7)",
              unit="the paper's epochs (60,000 images)", threshold=f"{LEARNS}; its start after epoch {LATE}",
              diagnose=why_not_late),
        Claim("Adam's layer-1 mean activation rises from the first epoch to epoch 40", c_rises,
              sentence="layer 1's mean activation goes from 0.49 (epoch 1) to 0.56 (epoch 40) (Figure 7)",
              unit="the paper's epochs (60,000 images)", threshold="higher in epoch 40 than in epoch 1"),
    ),
))
