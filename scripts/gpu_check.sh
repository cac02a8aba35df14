#!/usr/bin/env bash
# The GPU checks of the engine and the paper-scale runs, as one command for a machine with a
# CUDA GPU (about 9 minutes on an H200). Run from the repository's root with the Hydra wheels
# and the data prepared beside the checkout (.whl/device-env.sh sets PYTHONPATH and
# ENKF_REPRO_DATA), and OUT set to a folder whose files are kept:
#   OUT=/tmp/out bash scripts/gpu_check.sh [minutes for the paper-scale runs, default 4]
# It writes $OUT/gpu-tests.log, $OUT/bench.md and $OUT/paper.tar.gz (results/paper/ with its
# REPORT.md); rerunning continues the paper-scale runs where the time budget stopped them.
set -uo pipefail
minutes=${1:-4}
: "${OUT:?set OUT to a folder}"
[ -f .whl/device-env.sh ] && source .whl/device-env.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
date -u +"%Y-%m-%d %H:%M UTC" >> "$OUT/gpu.txt"

# 1. the CUDA paths at real shapes against the PyTorch reference (kernels, precisions, engine)
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_kernels.py tests/test_models.py \
  2>&1 | tee "$OUT/gpu-tests.log" | tail -5

# 2. the engine benchmark: J = 1000 ... 20000 per precision, the EKI row, one epoch at J = 5000
timeout 240 python3 -m enkf_repro bench --device cuda --epoch --markdown "$OUT/bench.md" 2>&1 | tail -40

# 3. paper scale on the offline proxies, within a time budget (whole figures first), then the report
timeout $((minutes * 60 + 60)) python3 -m enkf_repro reproduce scale=paper dataset.test_only=true \
  time_budget=${minutes}m out_dir=results 2>&1 | tail -30
tar czf "$OUT/paper.tar.gz" results/paper 2>/dev/null && ls -la "$OUT"
