"""enkf-repro: reproduce "Ensemble Kalman Filter optimizing Deep Neural Networks" figure by figure.

Library entry points: :func:`enkf_repro.enkf.enkf_update` (the update as a pure function),
:class:`enkf_repro.ensemble.EnsembleForward` (batched, chunked member evaluation),
:func:`enkf_repro.runner.run_figure` (what ``enkf-repro run`` calls).
"""

__version__ = "0.1.0"
