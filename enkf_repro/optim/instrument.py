"""Instrumentation of backprop training (``instrument.*``): the paper's per-layer statistics of
the saturation study (Figures 3, 4, 6, 7) as rows of the tidy CSV.

Instrumentation (``instrument.*``, on by default), written to the tidy CSV with the ``layer``
column holding the paper's layer number (docs/paper.md):

========  ======================================  ==========================
``layer`` activation (``act_*`` metrics)          weight gradient (``grad_*``)
1         act1 output: after conv1, before pool   conv1.weight
2         act2 output: after conv2                conv2.weight
3         softmax of the logits                   fc.weight
========  ======================================  ==========================

* ``act_mean``, ``act_std``, ``grad_mean``, ``grad_std``: mean and (population, divisor N)
  standard deviation over all elements of the layer's activations on the training batch /
  of the weight gradient, at every iteration (``iteration`` = optimizer steps including this
  one). With ``instrument.stats_per=epoch`` (default for runs longer than one epoch) one row
  per layer and epoch instead, pooled over the epoch's iterations (see :func:`pool_moments`),
  logged at the epoch's last iteration (``epoch`` = 1.0, 2.0, ...), plus ``act_mean_pct``:
  the percentiles ``bin`` in :data:`PERCENTILES` of the per-iteration ``act_mean`` over the
  epoch (the "distribution of mean activations per epoch" of Figures 4 and 7).
* ``act_mean_iter``, ``act_std_iter``, ``grad_mean_iter``, ``grad_std_iter``: only with
  per-epoch statistics and ``instrument.iteration_epochs`` (0-based epoch numbers; Figures 4
  and 7: 0, 10, 20, 30, 40): the same four statistics at every iteration of those epochs, one
  row per iteration (its own ``iteration`` and ``epoch``), written at the epoch's last
  iteration. They come in addition to the epoch's pooled rows, which every epoch keeps, so the
  per-epoch series has no gaps and a row's name says which of the two it is.
* ``grad_hist``: count of weight-gradient entries per bin over the fixed edges of
  :func:`grad_hist_edges`; ``bin`` holds the bin's lower edge (``-inf`` for the first bin), a
  bin covers [lower edge, next lower edge). Every ``instrument.hist_every`` iterations (200 with
  per-iteration statistics, one epoch with per-epoch statistics), at the first and at the last
  iteration. Every bin is written, zero counts included, so the counts of a layer sum to its
  number of weights.
* ``grad_outmean_hist``: the gradient histogram the published plotting code draws (the right
  panels of Figures 3 and 6, and Figures 4 and 7): for each layer the weight gradient averaged
  over the layer's output units, ``grad.mean(0)`` (see :func:`output_means`: conv1 25 values, one
  per input tap, conv2 10 x 5 x 5 = 250, fc 1280), counted over the fixed edges of
  :func:`grad_hist_edges` (``bin`` as for ``grad_hist``). With ``instrument.iteration_epochs``
  in a per-epoch run: over every iteration of each listed epoch (written at the epoch's last
  iteration); otherwise a snapshot of the iteration of each ``grad_hist``. Every bin is written;
  the counts of a layer sum to its number of values times the iterations counted. For the
  softmax output layer this statistic is zero up to rounding (the logits' gradients of a
  sample sum to zero over the classes, so do the fc gradient's columns): the published layer-3
  panel shows rounding noise.

Statistics stay on the device and are written every :data:`FLUSH_EVERY` iterations or, with
per-epoch statistics, once per epoch (one host sync per flush), so the cost per iteration is a
few small reductions.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any

import torch

from ..config.schema import InstrumentConfig, StatsPer
from ..errors import ConfigError

# Gradient histogram edges: +/- 10^e for e in [HIST_EXP_MIN, HIST_EXP_MAX], HIST_PER_DECADE per decade.
HIST_EXP_MIN, HIST_EXP_MAX, HIST_PER_DECADE = -10, 1, 4
PERCENTILES = (0, 10, 25, 50, 75, 90, 100)  # of the per-iteration act_mean within an epoch
STATS = ("act_mean", "act_std", "grad_mean", "grad_std")
ITER_STATS = tuple(f"{k}_iter" for k in STATS)  # per-iteration rows of the iteration epochs of a per-epoch run
FLUSH_EVERY = 100  # iterations between writes of per-iteration statistics
HIST_EVERY = 200   # default histogram period with per-iteration statistics (the paper's)


# -- instrumentation: pure functions ---------------------------------------------------------
def moments(t: torch.Tensor) -> torch.Tensor:
    """(mean, std) (2,) over all elements of ``t``; std with divisor N (population), float32.

    Two passes (mean, then the mean squared deviation): numerically stable, and on CPU about
    ten times faster than ``torch.std_mean`` over a whole tensor."""
    t = t.detach().float()
    mean = t.mean()
    return torch.stack([mean, (t - mean).square_().mean().sqrt_()])


def pool_moments(m: torch.Tensor) -> torch.Tensor:
    """Mean and std of the union of n equally sized groups from their moments.

    ``m`` (n, ..., 2) holds each group's (mean mu_i, population std s_i); returns (..., 2) with
    mean = avg_i mu_i and std = sqrt(avg_i (s_i^2 + mu_i^2) - mean^2), computed in float64.
    Used for the per-epoch rows: one group per iteration (the last, partial batch of an epoch
    is weighted like the others).
    """
    m = m.double()
    mean = m[..., 0].mean(0)
    second = (m[..., 1] ** 2 + m[..., 0] ** 2).mean(0)
    return torch.stack([mean, (second - mean ** 2).clamp_min(0).sqrt()], -1)


def output_means(grad: torch.Tensor) -> torch.Tensor:
    """A weight gradient (out, ...) averaged over its output units, ``grad.mean(0)`` flattened,
    float32: conv (out, in, k, k) -> in * k * k values, dense (out, in) -> in values (the
    statistic of the published plotting code's gradient histograms)."""
    return grad.detach().float().mean(0).flatten()


def grad_hist_edges(lo: int = HIST_EXP_MIN, hi: int = HIST_EXP_MAX, per_decade: int = HIST_PER_DECADE) -> torch.Tensor:
    """The fixed, increasing histogram edges (float64): -10^hi ... -10^lo, 10^lo ... 10^hi with
    ``per_decade`` magnitudes per decade (defaults: 2 x 45 edges, 91 bins). Bin k is
    [edge_{k-1}, edge_k) with edge_{-1} = -inf and edge_{len} = +inf; the middle bin
    [-10^lo, 10^lo) holds the (near-)zero gradients."""
    n = (hi - lo) * per_decade + 1
    mags = 10.0 ** torch.linspace(lo, hi, n, dtype=torch.float64)
    return torch.cat([-mags.flip(0), mags])


def bin_lower_edges(edges: torch.Tensor) -> list[float]:
    """The lower edge of each of the len(edges) + 1 bins (the value written to the ``bin`` column)."""
    return [-math.inf] + [float(e) for e in edges]


def histogram_counts(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Counts (len(edges) + 1,) int64 of ``values`` per bin [edge_{k-1}, edge_k) (see
    :func:`grad_hist_edges`); compared in float64; NaN lands in the last bin."""
    idx = torch.bucketize(values.detach().flatten().double(), edges.to(values.device), right=True)
    return torch.bincount(idx, minlength=edges.numel() + 1)


# -- instrumentation: the stateful recorder --------------------------------------------------
def stats_per_epoch(icfg: InstrumentConfig, epochs: float) -> bool:
    """Whether statistics are pooled per epoch (``instrument.stats_per``; auto: runs > 1 epoch)."""
    return icfg.stats_per == StatsPer.epoch or (icfg.stats_per == StatsPer.auto and float(epochs) > 1.0)


def iteration_epochs(icfg: InstrumentConfig, epochs: float) -> frozenset[int]:
    """The 0-based epochs logged at every iteration of a per-epoch run (``instrument.iteration_epochs``);
    empty with per-iteration statistics, where every iteration is logged anyway."""
    if not stats_per_epoch(icfg, epochs):
        return frozenset()
    return frozenset(int(e) for e in icfg.iteration_epochs)


class Instrument:
    """Records the per-layer statistics of every training iteration of ``net`` and turns them into
    CSV rows (module docstring). Activation layers are the submodules named ``act1``, ``act2``, ...
    (forward hooks, active only inside :meth:`capture`, so evaluation passes are not recorded),
    plus the softmax of the logits; gradient layers are the ``*.weight`` parameters in order."""

    def __init__(self, net: torch.nn.Module, icfg, per_epoch: int, total: int, epochs: float,
                 data_fraction: float = 1.0):
        self.data_fraction = float(data_fraction)
        acts = {int(m.group(1)): mod for name, mod in net.named_modules()
                if (m := re.fullmatch(r"act(\d+)", name.rsplit(".", 1)[-1]))}
        self.act_modules = [acts[k] for k in sorted(acts)]
        self.weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
        if len(self.weights) != len(self.act_modules) + 1:
            raise ConfigError("instrument.enabled", True,
                              f"false for this model: instrumentation needs act1..actK modules and K+1 weight "
                              f"layers, it has {len(self.act_modules)} and {len(self.weights)}")
        self.layers = len(self.weights)
        self.per_epoch_mode = stats_per_epoch(icfg, epochs)
        self.iteration_epochs = iteration_epochs(icfg, epochs)
        self.per_epoch = int(per_epoch)
        self.total = int(total)
        he = icfg.hist_every
        self.hist_every = int(he) if he is not None else (self.per_epoch if self.per_epoch_mode else HIST_EVERY)
        self.edges = grad_hist_edges().to(self.weights[0].device)
        self.lower = bin_lower_edges(self.edges)
        self.pending: list[torch.Tensor] = []   # (layers, 4) per iteration, not yet written
        self.pending_steps: list[int] = []
        self.outmean_sizes = [p[0].numel() for p in self.weights]   # values of grad.mean(0) per layer
        self.pending_outmeans: list[torch.Tensor] = []  # (sum of outmean_sizes,) per iteration of the open window
        self._outmean_hist: torch.Tensor | None = None
        self._acts: list[torch.Tensor] = []
        self._capturing = False
        self._hist: torch.Tensor | None = None
        self._handles = [m.register_forward_hook(self._hook) for m in self.act_modules]

    def _hook(self, module, inputs, output) -> None:
        if self._capturing:
            self._acts.append(moments(output))

    @contextlib.contextmanager
    def capture(self):
        """Record the activations of the forward passes inside the block (the training forward)."""
        self._acts, self._capturing = [], True
        try:
            yield
        finally:
            self._capturing = False

    def hist_due(self, step: int) -> bool:
        return step == 1 or step % self.hist_every == 0 or step == self.total

    def when(self, step: int) -> dict[str, float]:
        """The ``pass`` (over the run's batches) and ``epoch`` (of the training set) of iteration ``step``."""
        return {"pass": step / self.per_epoch, "epoch": step / self.per_epoch * self.data_fraction}

    def epoch_index(self, step: int) -> int:
        """The 0-based epoch of iteration ``step`` (1-based)."""
        return (step - 1) // self.per_epoch

    def epoch_end(self, step: int) -> bool:
        return step % self.per_epoch == 0 or step == self.total

    def in_iteration_epoch(self, step: int) -> bool:
        return self.epoch_index(step) in self.iteration_epochs

    def outmean_window(self, step: int) -> tuple[bool, bool]:
        """(record, close): whether iteration ``step`` belongs to a ``grad_outmean_hist`` window
        and whether the window's histogram is written after it (module docstring): the listed
        iteration epochs, or the iteration of each ``grad_hist`` alone."""
        if self.iteration_epochs:
            inside = self.in_iteration_epoch(step)
            return inside, inside and self.epoch_end(step)
        due = self.hist_due(step)
        return due, due

    @torch.no_grad()
    def record(self, step: int, logits: torch.Tensor) -> None:
        """After ``backward()`` of iteration ``step`` (1-based) and before the optimizer step."""
        acts = self._acts + [moments(torch.softmax(logits.detach().float(), 1))]
        grads = [moments(p.grad) for p in self.weights]
        self.pending.append(torch.cat([torch.stack(acts), torch.stack(grads)], 1))  # (layers, 4)
        self.pending_steps.append(step)
        if self.hist_due(step):
            self._hist = torch.stack([histogram_counts(p.grad, self.edges) for p in self.weights])
        inside, close = self.outmean_window(step)
        if inside:
            self.pending_outmeans.append(torch.cat([output_means(p.grad) for p in self.weights]))
        if close and self.pending_outmeans:
            per_layer = torch.stack(self.pending_outmeans).split(self.outmean_sizes, dim=1)  # (n, layer values)
            self._outmean_hist = torch.stack([histogram_counts(u, self.edges) for u in per_layer])
            self.pending_outmeans = []

    def rows(self, step: int) -> list[dict]:
        """The rows due after iteration ``step``: histograms, flushed or per-epoch statistics."""
        out: list[dict] = []
        if self.per_epoch_mode:
            if self.epoch_end(step) and self.pending:
                if self.in_iteration_epoch(step):
                    out += self._iteration_rows(ITER_STATS, clear=False)
                out += self._epoch_rows(step)
        elif step % FLUSH_EVERY == 0 or step == self.total or self._hist is not None:
            out += self._iteration_rows(STATS)
        for name, counts in (("grad_hist", self._hist), ("grad_outmean_hist", self._outmean_hist)):
            if counts is not None:
                out += self._hist_rows(step, name, counts)
        self._hist = self._outmean_hist = None
        return out

    def _hist_rows(self, step: int, name: str, counts: torch.Tensor) -> list[dict]:
        return [{"iteration": step, **self.when(step), "metric": name, "layer": l + 1,
                 "bin": self.lower[k], "value": c}
                for l, row in enumerate(counts.cpu().tolist()) for k, c in enumerate(row)]

    def _iteration_rows(self, names: tuple[str, ...], clear: bool = True) -> list[dict]:
        """One row per pending iteration, layer and statistic, under ``names`` (STATS or ITER_STATS)."""
        if not self.pending:
            return []
        vals = torch.stack(self.pending).cpu().tolist()  # (n, layers, 4)
        out = [{"iteration": s, **self.when(s), "metric": names[k], "layer": l + 1, "value": v[l][k]}
               for s, v in zip(self.pending_steps, vals) for l in range(self.layers) for k in range(4)]
        if clear:
            self.pending, self.pending_steps = [], []
        return out

    def _epoch_rows(self, step: int) -> list[dict]:
        m = torch.stack(self.pending)                       # (n, layers, 4)
        act = pool_moments(m[:, :, 0:2]).cpu().tolist()     # (layers, 2)
        grad = pool_moments(m[:, :, 2:4]).cpu().tolist()
        q = torch.tensor([p / 100 for p in PERCENTILES], dtype=torch.float64, device=m.device)
        pct = torch.quantile(m[:, :, 0].double(), q, dim=0).T.cpu().tolist()  # (layers, percentiles)
        head = {"iteration": step, **self.when(step)}
        out = []
        for l in range(self.layers):
            vals = (act[l][0], act[l][1], grad[l][0], grad[l][1])
            out += [{**head, "metric": STATS[k], "layer": l + 1, "value": vals[k]} for k in range(4)]
            out += [{**head, "metric": "act_mean_pct", "layer": l + 1, "bin": p, "value": pct[l][i]}
                    for i, p in enumerate(PERCENTILES)]
        self.pending, self.pending_steps = [], []
        return out

    def state_dict(self) -> dict[str, Any]:
        pending = torch.stack(self.pending).cpu() if self.pending else torch.zeros(0, self.layers, 4)
        units = (torch.stack(self.pending_outmeans).cpu() if self.pending_outmeans
                 else torch.zeros(0, sum(self.outmean_sizes)))
        return {"pending": pending, "pending_steps": list(self.pending_steps), "pending_outmeans": units}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.edges.device
        self.pending = [t.to(device) for t in state["pending"]]
        self.pending_steps = [int(s) for s in state["pending_steps"]]
        self.pending_outmeans = [t.to(device) for t in state.get("pending_outmeans", ())]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
