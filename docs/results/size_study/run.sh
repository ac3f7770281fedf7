#!/usr/bin/env bash
# (Re)start the training-set size study in the background; it resumes: finished runs (runs/*.json) are skipped.
#   docs/results/size_study/run.sh            start or resume (detached; survives the shell)
#   docs/results/size_study/run.sh --tables   rebuild tables.md from the JSONs present
# The whole training split (50 000 images) is the learning-rate study's runs (docs/results/lr_study).
# Where the run directories and the study's log go: docs/results/study.sh.
NAME=size_study
ARGS=(--size-study --datasets mnist fashion_mnist --protocol no_momentum --control --train-sizes 1000 5000
      --reuse-lr-study "$(cd "$(dirname "$0")/.." && pwd)/lr_study"
      --seeds 5 --max-epochs 500 --patience 10 --max-extensions 2 --jobs 2)
source "$(dirname "$0")/../study.sh"
