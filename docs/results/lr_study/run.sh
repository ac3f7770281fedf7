#!/usr/bin/env bash
# (Re)start the learning-rate study in the background; it resumes: finished runs (runs/*.json) are skipped.
#   docs/results/lr_study/run.sh            start or resume (detached; survives the shell)
#   docs/results/lr_study/run.sh --tables   rebuild tables.md / val_acc.png from the JSONs present
# Where the run directories and the study's log go: docs/results/study.sh.
NAME=lr_study
ARGS=(--lr-study --datasets mnist fashion_mnist --protocols no_momentum momentum
      --seeds 5 --max-epochs 100 --patience 10 --max-extensions 2 --jobs 2)
source "$(dirname "$0")/../study.sh"
