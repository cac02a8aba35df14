#!/usr/bin/env python
"""Same as `enkf-repro bench`: time one EnKF iteration against the GEMM rate and a naive loop."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enkf_repro.bench import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
