#!/usr/bin/env bash
# (Re)start the CNN study in the background; it resumes: finished runs (runs/*.json) are skipped.
#   docs/results/fashion_mnist_cnn/run.sh            start or resume (detached; survives the shell)
#   docs/results/fashion_mnist_cnn/run.sh --tables   rebuild tables.md / val_acc.png from the JSONs present
# The budget is cut for a 2-core CPU (10 000 training images, 15 epochs, 3 seeds); the full budget, on
# a GPU machine: --train-size 50000 --max-epochs 30 --seeds 5 --jobs 1 (README.md beside this file).
# Where the run directories and the study's log go: docs/results/study.sh.
NAME=fashion_mnist_cnn
ARGS=(--cnn-study --train-size 10000 --max-epochs 15 --seeds 3 --patience 10 --max-extensions 2 --jobs 2)
source "$(dirname "$0")/../study.sh"
