#!/usr/bin/env bash
# Wall time of one short single run per method (EnKF, EKI, never-look-back, IEnK) in this checkout
# and in an earlier commit, interleaved, so a restructuring can be checked for slowdowns:
#   ENKF_REPRO_DATA=... bash scripts/bench_methods_vs.sh <commit> [repeats, default 2]
# Prints "method | <commit> s | this checkout s" per repeat (the run's "finished in" time, which
# excludes start-up and plotting). Settings that changed defaults since are pinned to the old ones
# (zero initial biases, IEnK perturbing one layer at a time).
set -euo pipefail
base=${1:?usage: bench_methods_vs.sh <commit> [repeats]}
reps=${2:-2}
here=$(git rev-parse --show-toplevel)
old=$(mktemp -d)
out=$(mktemp -d)
trap 'git -C "$here" worktree remove --force "$old" >/dev/null 2>&1 || true; rm -rf "$out"' EXIT
git -C "$here" worktree add -f --detach "$old" "$base" >/dev/null 2>&1
common="dataset=fashion_mnist train.eval_every=1000 dataset.test_size=500 progress=false restart=true seed=0"
declare -A run=(
  [enkf]="optimizer=enkf model=paper_cnn optimizer.ensemble_size=500 train.max_batches=2"
  [eki]="optimizer=eki model=dnn2 optimizer.ensemble_size=500 train.max_batches=20"
  [haber]="optimizer=haber model=dnn2 train.max_batches=40"
  [ienk]="optimizer=ienk_simple model=mlp train.max_batches=2")
declare -A pin=([enkf]="init.bias_sigma=0" [eki]="init.bias_sigma=0" [haber]="" [ienk]="optimizer.perturb=per_layer")
seconds() {  # tree, extra overrides...
  local tree=$1; shift
  (cd "$tree" && PYTHONPATH="$tree" python -m enkf_repro run "$@" out_dir="$out/$(basename "$tree")" 2>&1) |
    grep -o "finished in [0-9.]* s" | tail -1 | grep -o "[0-9.]*" || echo "failed"
}
echo "method | $base s | this checkout s"
for r in $(seq "$reps"); do
  for m in enkf eki haber ienk; do
    # shellcheck disable=SC2086
    a=$(seconds "$old" ${run[$m]} $common)
    # shellcheck disable=SC2086
    b=$(seconds "$here" ${run[$m]} $common ${pin[$m]})
    echo "$m | $a | $b"
  done
done
