"""enkf-repro: reproduce "Ensemble Kalman Filter optimizing Deep Neural Networks" figure by figure,
and train PyTorch networks (or any forward map) with ensemble Kalman methods.

Library entry points (imported on first use, so ``import enkf_repro`` stays cheap; ``dir(enkf_repro)``
lists them):

* :func:`train` - train any PyTorch network (an ``nn.Module``) on tensors or a Dataset with any
  method (``enkf``, ``eki``, ``etki``, ``haber``, ``ienk_simple``, ``sgd``, ``adam``), on class
  labels or real-valued targets (``task="regression"``, an observation operator ``observe=``, a
  noise covariance ``noise=``), through the same loop and run folders as the command line; returns
  a :class:`TrainResult` (the trained network, the tidy history, the final ensemble and
  ``predict``);
* :class:`EnsembleKalmanProcess` - the step object: a method built from a network or a parameter
  prior, driven by ``step(x, y)`` or by ``ask()`` / ``tell(outputs, y)`` around a forward map
  evaluated anywhere (a simulator outside PyTorch); ``ensemble``, ``predict``, ``state_dict``;
  the training loop steps through it too;
* :class:`Prediction` - an ensemble's predictions: predictive mean and spread, per-member error,
  NLL and calibration error;
* :class:`FixedStep`, :class:`KovachkiStuartStep`, :class:`DataMisfitController` - step
  schedulers (EKI, ETKI) as objects; :func:`register_logger` - a live-logging plug-in (``logger=``);
* :func:`load_dataset` - a built-in dataset (``"fashion_mnist"``, ``"mnist"``, ``"notmnist"``) as tensors;
* :func:`method_names` - the methods;
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
    "EnsembleKalmanProcess": ("enkf_repro.optim.process", "EnsembleKalmanProcess"),
    "Prediction": ("enkf_repro.optim.predictive", "Prediction"),
    "FixedStep": ("enkf_repro.optim.schedulers", "FixedStep"),
    "KovachkiStuartStep": ("enkf_repro.optim.schedulers", "KovachkiStuartStep"),
    "DataMisfitController": ("enkf_repro.optim.schedulers", "DataMisfitController"),
    "register_logger": ("enkf_repro.runs.loggers", "register_logger"),
    "method_names": ("enkf_repro.api", "method_names"),
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


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = list(_EXPORTS)
