#!/usr/bin/env python
"""What every kernel configuration compiles to for Hopper (sm_90), without a GPU: the
tensor-core instruction and how the warps share the tile, shared memory per program and
programs per SM, registers, spills, and the widths of the global loads and async copies.

    python scripts/sm90_report.py                      # every configuration, every mode, 8x8 fc
    python scripts/sm90_report.py --markdown out.md    # also write the table to a file
    python scripts/sm90_report.py --defaults           # only the default configurations at batch 64

Compiles with the installed Triton (about a minute for the whole table on two cores).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)              # compiled kernels, not the interpreter
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enkf_repro.models.kernels import compiled  # noqa: E402
from enkf_repro.models.kernels import paper_cnn_triton as K  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--defaults", action="store_true", help="only the default configurations at batch 64")
    ap.add_argument("--pool", action="store_true", help="also the pool_conv2 variant of kernel B")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    import triton

    rows = []
    for precision in K.PRECISIONS:
        configs = K.default_configs(64, precision) if args.defaults else K.CONV1_CONFIGS + K.CONV2_CONFIGS
        rows += compiled.report(configs, (precision,), (False, True) if args.pool else (False,))
    rows.sort(key=lambda r: (r["kernel"], r["config"], K.PRECISIONS.index(r["precision"])))
    text = (f"Compiled for sm_90 with Triton {triton.__version__} (activation tanh; launcher specialisation: "
            "16-byte aligned buffers)\n\n" + compiled.markdown(rows) + "\n")
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
