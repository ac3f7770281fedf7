#!/usr/bin/env bash
# (Re)start the learning-rate study in the background; it resumes: finished runs (runs/*.json) are skipped.
#   docs/results/lr_study/run.sh            start or resume (detached; survives the shell)
#   docs/results/lr_study/run.sh --tables   rebuild tables.md / val_acc.png from the JSONs present
# Run directories with checkpoints and per-run logs: $STUDY_WORK_DIR (default ../study-runs/lr_study
# beside the checkout); the study's own log: $STUDY_WORK_DIR/study.log.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../../.." && pwd)"
WORK="${STUDY_WORK_DIR:-$REPO/../study-runs/lr_study}"
OUT="$REPO/docs/results/lr_study"
export PYTHONPATH="$REPO" OMP_NUM_THREADS=1 WANDB_MODE=disabled
export GAAF_DATA_DIR="${GAAF_DATA_DIR:?set GAAF_DATA_DIR to the MNIST / Fashion-MNIST root}"
ARGS=(--lr-study --datasets mnist fashion_mnist --protocols no_momentum momentum
      --seeds 5 --max-epochs 100 --patience 10 --max-extensions 2 --jobs 2
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
