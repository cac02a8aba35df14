"""Figure 2: the workflow of EnKF training (drawn, no runs)."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from .base import Figure, PaperNumber, register
from .draw import COLORS

BOXES = {
    "init": (0.02, 0.62, "Ensemble $U$ ($J \\times P$)\n$u_j \\sim \\mathcal{N}(0, \\sigma^2 I)$"),
    "batch": (0.02, 0.18, "Mini-batch $x$ (64 images)\nlabels $y$ (one-hot)"),
    "forward": (0.285, 0.40, "Forward pass of\nall members\n(batched, chunked)\n$G(u_j)$: $J \\times 64 \\times 10$"),
    "stats": (0.545, 0.62, "Ensemble statistics\n$C_{GG}$, $C_{uG}$ (1/J),\n$\\Gamma = \\gamma I$"),
    "update": (0.545, 0.18, "Update every member\n$u_j \\leftarrow u_j + C_{uG}(C_{GG}+\\Gamma)^{-1}$\n"
               "$\\times\\,(y - G(u_j))$"),
    "eval": (0.79, 0.40, "Every 500 iterations:\nnetwork with the\nensemble-mean weights\n$\\to$ test error"),
}


def draw(df, cfg):
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    centres = {}
    w, h = 0.195, 0.24
    for i, (key, (x, y, text)) in enumerate(BOXES.items()):
        color = COLORS[i % len(COLORS)]
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.01,rounding_size=0.02",
                                    linewidth=1.4, edgecolor=color, facecolor=color + "22"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)
        centres[key] = (x, y)

    def arrow(a, b, text="", src="r", dst="l", rad=0.0, text_at=None):
        (xa, ya), (xb, yb) = centres[a], centres[b]
        pa = {"r": (xa + w, ya + h / 2), "b": (xa + w / 2, ya), "t": (xa + w / 2, ya + h), "l": (xa, ya + h / 2)}[src]
        pb = {"l": (xb, yb + h / 2), "t": (xb + w / 2, yb + h), "b": (xb + w / 2, yb), "r": (xb + w, yb + h / 2)}[dst]
        ax.add_patch(FancyArrowPatch(pa, pb, arrowstyle="-|>", mutation_scale=12, linewidth=1.2, color="0.25",
                                     connectionstyle=f"arc3,rad={rad}"))
        if text:
            tx, ty = text_at or ((pa[0] + pb[0]) / 2, (pa[1] + pb[1]) / 2 + 0.03)
            ax.text(tx, ty, text, fontsize=7.5, ha="center", va="center", color="0.3")

    arrow("init", "forward")
    arrow("batch", "forward")
    arrow("forward", "stats")
    arrow("forward", "update")
    arrow("stats", "update", src="b", dst="t")
    arrow("update", "init", "r = 8 iterations per batch, then the next batch", src="b", dst="b", rad=-0.35,
          text_at=(0.38, 0.045))
    arrow("stats", "eval", src="r", dst="t")
    ax.set_title("Figure 2: EnKF training of a neural network (no gradients)", fontsize=11)
    fig.text(0.01, 0.0, "One iteration = one forward pass of every member on the batch and one update; "
             "the published code assimilates the 64 samples one at a time (sequential mode).",
             fontsize=7.5, color="0.35")
    return fig


register(Figure(
    id="2", config="fig2", title="Workflow of EnKF training",
    description="workflow diagram of EnKF training (drawn, no runs)",
    variants=lambda cfg, s: [], plot=draw, needs_runs=False,
    paper_numbers=(PaperNumber("diagram", "workflow diagram", None),),
))
