"""enkf-repro: reproduce "Ensemble Kalman Filter optimizing Deep Neural Networks" figure by figure.

Library entry points (imported on first use, so ``import enkf_repro`` stays cheap):

* :func:`train` - train any PyTorch classifier (an ``nn.Module``) on tensors or a Dataset with any
  method (``enkf``, ``eki``, ``etki``, ``haber``, ``ienk_simple``, ``sgd``, ``adam``), through the
  same loop and run folders as the command line; returns a :class:`~enkf_repro.api.TrainResult`
  (the trained network, the tidy history);
* :func:`load_dataset` - a built-in dataset (``"fashion_mnist"``, ``"mnist"``, ``"notmnist"``) as tensors;
* :func:`compose` - a run or figure config from overrides (``["figure=8", "scale=smoke"]``);
* :func:`run_figure` - run (or resume, or skip) every run of a composed config; what
  ``enkf-repro run`` calls;
* :func:`enkf_update` - the EnKF update as a pure function on tensors;
* :func:`read_runs` - every run's rows under a folder (any depth) as one tidy DataFrame, optionally
  with settings of each run's config as columns;
* :func:`compare` - group a sweep's runs by config keys: a mean +/- std plot per group and a table
  of the final values (what ``enkf-repro compare`` calls); returns a
  :class:`~enkf_repro.report.compare.CompareResult`;
* :func:`plot_figure` - draw a composed figure config's figure from the runs under its folder
  (what ``enkf-repro plot`` calls);
* :func:`reproduce` - run, plot and report every figure (or some): the path of REPORT.md (what
  ``enkf-repro reproduce`` calls);
* :func:`figure_table` - every figure, what it shows and its cost at each scale (what
  ``enkf-repro list`` prints).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "train": ("enkf_repro.api", "train"),
    "TrainResult": ("enkf_repro.api", "TrainResult"),
    "load_dataset": ("enkf_repro.api", "load_dataset"),
    "compose": ("enkf_repro.api", "compose"),
    "run_figure": ("enkf_repro.runs.runner", "run_figure"),
    "enkf_update": ("enkf_repro.optim.enkf", "enkf_update"),
    "read_runs": ("enkf_repro.runs.folder", "read_runs"),
    "compare": ("enkf_repro.report.compare", "compare"),
    "CompareResult": ("enkf_repro.report.compare", "CompareResult"),
    "plot_figure": ("enkf_repro.report.render", "plot_figure"),
    "reproduce": ("enkf_repro.report.reproduce", "reproduce"),
    "reproduce_config": ("enkf_repro.report.reproduce", "reproduce_config"),
    "figure_table": ("enkf_repro.report.listing", "figure_table"),
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        module, attr = _EXPORTS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'enkf_repro' has no attribute {name!r}")


__all__ = list(_EXPORTS)
