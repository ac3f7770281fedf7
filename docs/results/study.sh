#!/usr/bin/env bash
# What docs/results/*/run.sh share: start a gaaf-reproduce study detached (nice 19, one thread per
# run, W&B off) or, with --tables, rebuild its tables. Sourced by a study's run.sh after it sets
#   NAME  the study's folder under docs/results and ../study-runs (e.g. lr_study)
#   ARGS  gaaf-reproduce's arguments without --out / --work-dir
# Run directories with checkpoints and per-run logs: $STUDY_WORK_DIR (default ../study-runs/NAME
# beside the checkout); the study's own log: $STUDY_WORK_DIR/study.log.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="${STUDY_WORK_DIR:-$REPO/../study-runs/$NAME}"
ARGS+=(--out "$REPO/docs/results/$NAME" --work-dir "$WORK")
export PYTHONPATH="$REPO" OMP_NUM_THREADS=1 WANDB_MODE=disabled
export GAAF_DATA_DIR="${GAAF_DATA_DIR:?set GAAF_DATA_DIR to the MNIST / Fashion-MNIST root}"
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
