"""Command line: ``enkf-repro run|plot|compare|list|bench|reproduce ...``: parse the subcommand, call its
library function, and turn errors into one line and an exit code (0 done, 2 bad config or data,
3 a run diverged, 130 interrupted)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

from .errors import EnkfReproError

USAGE = """usage: enkf-repro <command> [key=value ...]

commands:
  run figure=ID [overrides]     run a figure's experiments (Hydra app: -m, --cfg job, --help work)
  plot figure=ID [overrides]    draw <out_dir>/<scale>/fig<ID>/fig<ID>.png and .pdf from its CSVs
  compare by=KEY[,KEY] [where=KEY=VALUE ...] [out_dir=DIR] [scale=S] [metric=M]
                                group a sweep's runs by config keys: mean +/- std plot, final-value table
  list                          every figure id, what it shows, and its cost at each scale
  bench [--help]                time the ensemble engine against the naive loop (table)
  reproduce [scale=smoke|paper] [figures=1,8,...]
                                run, plot and report every figure (REPORT.md)

common overrides: scale=smoke|paper  dataset=mnist|fashion_mnist|notmnist  dataset.root=DIR
  dataset.test_only=true  device=auto|cpu|cuda  seed=N  out_dir=DIR  init.sigma=S
  model.activation=logistic|relu|tanh  optimizer.ensemble_size=J  optimizer.gamma=G
  optimizer.repetitions=R  optimizer.update_mode=sequential|batch  ensemble.chunk_size=N
examples:
  enkf-repro run figure=8 scale=smoke dataset=fashion_mnist
  enkf-repro plot figure=8 scale=smoke
  enkf-repro run -m figure=8 scale=smoke model.activation=relu,tanh
  enkf-repro compare scale=smoke by=optimizer.gamma,optimizer.ensemble_size
"""


# command -> (module, function) of the library that handles its arguments (imported on use)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("enkf_repro.runs.launch", "run_main"),
    "plot": ("enkf_repro.report.render", "plot_main"),
    "list": ("enkf_repro.report.listing", "list_main"),
    "compare": ("enkf_repro.report.compare", "compare_main"),
    "bench": ("enkf_repro.bench", "main"),
    "reproduce": ("enkf_repro.report.reproduce", "reproduce_main"),
}


def command(name: str) -> Callable[[list[str]], int]:
    module, function = COMMANDS[name]
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"enkf-repro: error: unknown command {cmd!r}; expected one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    try:
        return command(cmd)(rest) or 0
    except EnkfReproError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"enkf-repro: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("enkf-repro: interrupted; rerun the same command to resume (finished runs are skipped, the "
              "interrupted one continues from its checkpoint)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
