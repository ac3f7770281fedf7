#!/usr/bin/env bash
# (Re)start the training-set size study in the background; it resumes: finished runs (runs/*.json) are skipped.
#   docs/results/size_study/run.sh            start or resume (detached; survives the shell)
#   docs/results/size_study/run.sh --tables   rebuild tables.md from the JSONs present
# The whole training split (50 000 images) is the learning-rate study's runs (docs/results/lr_study).
# Run directories with checkpoints and per-run logs: $STUDY_WORK_DIR (default ../study-runs/size_study
# beside the checkout); the study's own log: $STUDY_WORK_DIR/study.log.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../../.." && pwd)"
WORK="${STUDY_WORK_DIR:-$REPO/../study-runs/size_study}"
OUT="$REPO/docs/results/size_study"
export PYTHONPATH="$REPO" OMP_NUM_THREADS=1 WANDB_MODE=disabled
export GAAF_DATA_DIR="${GAAF_DATA_DIR:?set GAAF_DATA_DIR to the MNIST / Fashion-MNIST root}"
ARGS=(--size-study --datasets mnist fashion_mnist --protocol no_momentum --train-sizes 1000 5000
      --reuse-lr-study "$REPO/docs/results/lr_study"
      --seeds 5 --max-epochs 500 --patience 10 --max-extensions 2 --jobs 2
      --out "$OUT" --work-dir "$WORK")
cd "$REPO"
if [[ "${1:-}" == "--tables" ]]; then
  exec python -m lightning_gaaf.cli.reproduce "${ARGS[@]}" --tables-only
fi
mkdir -p "$WORK"
if [[ -f "$WORK/study.pid" ]] && kill -0 "$(cat "$WORK/study.pid")" 2>/dev/null; then
  echo "the study is already running (pid $(cat "$WORK/study.pid")); log: $WORK/study.log" >&2
  exit 1
fi
setsid nohup nice -n 19 python -m lightning_gaaf.cli.reproduce "${ARGS[@]}" >> "$WORK/study.log" 2>&1 < /dev/null &
echo $! > "$WORK/study.pid"
echo "started pid $(cat "$WORK/study.pid"); log: $WORK/study.log"
