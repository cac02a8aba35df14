#!/usr/bin/env bash
# The GPU checks of the engine as one command that fits one call of at most 8 minutes: versions
# and launcher prerequisites, fused vs PyTorch vs float64 accuracy, the benchmark rows (J = 1000,
# 5000, 20000 per precision, host times, the naive loop, one epoch), a profile of one J = 5000
# iteration, the GPU tests (junit), and OUT/SUMMARY.md marking each GPU target met or missed.
# Each step runs under its own timeout (they add up to 430 s) and writes its results to OUT as
# soon as they are measured; SUMMARY.md is rewritten after every step, so a step that is killed
# loses nothing measured before it. Run from the repository's root, with the Hydra wheels and the
# data beside the checkout (.whl/device-env.sh is sourced when present):
#   OUT=/path/to/out bash scripts/gpu_check.sh            # on a machine with a CUDA GPU
#   OUT=/path/to/out bash scripts/gpu_check.sh --dry-run  # anywhere: CPU, Triton interpreter, tiny sizes
# OUT receives 8 files: SUMMARY.md, env.txt, check.log, gpu-tests.xml, gpu-tests.log,
# accuracy.jsonl, bench.jsonl, profile.txt. Steps: scripts/gpu_check.py; docs/gpu.md.
set -uo pipefail
dry=""
[ "${1:-}" = "--dry-run" ] && dry="--dry-run"
: "${OUT:?set OUT to a folder}"
mkdir -p "$OUT"
rm -f "$OUT"/{SUMMARY.md,env.txt,check.log,gpu-tests.xml,gpu-tests.log,accuracy.jsonl,bench.jsonl,profile.txt}
# shellcheck disable=SC1091
[ -f .whl/device-env.sh ] && source .whl/device-env.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# measured kernel plans and chunk sizes: kept between steps, never in OUT
export ENKF_REPRO_CACHE="${ENKF_REPRO_CACHE:-${TMPDIR:-/tmp}/enkf-repro-gpu-check}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
# the dry run gives each step twice its time: the interpreter on a shared CPU is slow
factor=1
if [ -n "$dry" ]; then export TRITON_INTERPRET=1 OMP_NUM_THREADS=1; factor=2; fi

summary() { timeout 30 "$PY" scripts/gpu_check.py summary "$OUT" $dry >> "$OUT/check.log" 2>&1; }

# step NAME SECONDS COMMAND...: run under its own timeout (SIGINT first, so pytest still writes
# its junit file; KILL 5 s later), log its output and status, then rewrite SUMMARY.md
step() {
  local name=$1 limit=$(( $2 * factor )) t0 rc
  shift 2
  t0=$(date +%s)
  echo "== $name (limit ${limit} s)" >> "$OUT/check.log"
  timeout -s INT -k 5 "$limit" "$@" >> "$OUT/check.log" 2>&1
  rc=$?
  echo "step $name rc=$rc seconds=$(( $(date +%s) - t0 )) limit=$limit" >> "$OUT/check.log"
  summary
}

t_start=$(date +%s)
step env 40 "$PY" scripts/gpu_check.py env "$OUT" $dry
step accuracy 75 "$PY" scripts/gpu_check.py accuracy "$OUT" $dry
step bench 150 "$PY" scripts/gpu_check.py bench "$OUT" $dry
step profile 45 "$PY" scripts/gpu_check.py profile "$OUT" $dry
step gpu-tests 120 sh -c "$PY -m pytest -q -rfE -m gpu -o addopts='' -p no:cacheprovider \
  --junitxml='$OUT/gpu-tests.xml' tests/test_kernels.py tests/test_kernel_gate.py tests/test_models.py \
  > '$OUT/gpu-tests.log' 2>&1"
echo "total $(( $(date +%s) - t_start )) s" >> "$OUT/check.log"
tail -n 30 "$OUT/SUMMARY.md"
