#!/usr/bin/env bash
# The fused kernels under another Triton (and torch) release than the development environment's,
# e.g. the GPU machines' Triton 3.6 with torch 2.11: makes a separate virtual environment with
# those releases, then runs there, from this checkout,
#   1. the interpreter tests of the kernels and of the engine's gate (tests/test_kernels.py,
#      tests/test_kernel_gate.py: the default, CPU-only selection),
#   2. the sm_90 compilation tests (tests/test_kernels.py -m slow: every configuration in every
#      mode compiled for Hopper by that Triton's ptxas; no GPU needed).
# Usage (from the repository's root):
#   bash scripts/triton_compat.sh VENV [TRITON_SPEC] [TORCH_SPEC]
#   bash scripts/triton_compat.sh ../venv-t36 triton==3.6.0 torch==2.11.0
# Wheels come from pip's index, or from WHEELS=<folder> (pip --find-links, e.g. wheels fetched
# once with `pip download --no-deps -d <folder> triton==3.6.0 torch==2.11.0`). With
# BASE_SITE=<site-packages of an existing environment> only the two wheels are installed (without
# their dependencies) and everything else (numpy, hydra, pytest, torch's CUDA libraries) is taken
# from there, behind the new environment's own packages; without it pip installs the
# dependencies too. An existing VENV is reused. Prints the versions and each run's counts; exits
# non-zero when a test failed. Add a release to TESTED_TRITON (models/kernels/paper_cnn_triton.py)
# only after this passed with it.
set -uo pipefail
venv=${1:?usage: bash scripts/triton_compat.sh VENV [TRITON_SPEC] [TORCH_SPEC]}
triton_spec=${2:-triton==3.6.0}
torch_spec=${3:-}
find=()
[ -n "${WHEELS:-}" ] && find=(--find-links "$WHEELS")
py=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv" || exit 2
fi
if [ -n "${BASE_SITE:-}" ]; then
  "$venv/bin/pip" install -q --no-deps "${find[@]}" "$triton_spec" ${torch_spec:+"$torch_spec"} || exit 2
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$BASE_SITE" > "$site/zz-base-site.pth"
else
  "$venv/bin/pip" install -q "${find[@]}" "$triton_spec" ${torch_spec:+"$torch_spec"} || exit 2
  "$venv/bin/pip" install -q "${find[@]}" numpy pytest "hydra-core>=1.3,<1.4" "omegaconf>=2.3,<2.4" \
    pandas matplotlib tqdm || exit 2
fi

export PYTHONPATH="$PWD" OMP_NUM_THREADS=1
"$venv/bin/python" -c 'import sys, torch, triton; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, triton {triton.__version__} ({triton.__file__})")' || exit 2
status=0
echo "== interpreter: tests/test_kernels.py tests/test_kernel_gate.py"
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_kernel_gate.py 2>&1 | tail -n 3
[ "${PIPESTATUS[0]}" = 0 ] || status=1
echo "== sm_90 compilation: tests/test_kernels.py -m slow"
"$venv/bin/python" -m pytest -q -p no:cacheprovider -m slow tests/test_kernels.py 2>&1 | tail -n 3
[ "${PIPESTATUS[0]}" = 0 ] || status=1
exit $status
