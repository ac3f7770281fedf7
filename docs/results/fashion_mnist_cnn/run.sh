#!/usr/bin/env bash
# Table 5's question on Fashion-MNIST, in one go on a GPU machine: does GAAF improve a CNN, with and
# without batch-norm? The paper's SVHN network adapted to 28x28 grayscale, four variants (base, BN,
# GAAF, BN+GAAF; ReLU with the shifted-sigmoid shape), the same protocol for all (the bundled
# configs fashion_mnist_cnn_*.yaml: SGD lr 0.05, momentum 0.9, weight decay 5e-4, cosine over 30
# epochs), seeds 0..SEEDS-1. Selection is the configs' own (best val/acc checkpoint); test data are
# read once per run, by gaaf-fit's test on that checkpoint.
#
#   GAAF_DATA_DIR=<dir with FashionMNIST/raw/*> bash docs/results/fashion_mnist_cnn/run.sh [OUT] [SEEDS] [gaaf-fit args...]
#
# Extra arguments go to every gaaf-fit run (e.g. a smoke test: --trainer.max_epochs 1
# --trainer.limit_train_batches 2 --trainer.limit_val_batches 2 --trainer.limit_test_batches 2).
# Needs the package installed (pip install -e .). About 12 runs x 30 epochs: minutes per run on one
# GPU, ~20 core-hours on a 2-core CPU. Re-running skips finished runs. Writes OUT/table.md (test
# accuracy mean and sample std per variant), OUT/gaaf-report/ (gradient information per layer, ...).
set -euo pipefail
OUT="${1:-fashion_mnist_cnn}"
SEEDS="${2:-3}"
VARIANTS=(base bn gaaf bn_gaaf)
mkdir -p "$OUT"
for seed in $(seq 0 $((SEEDS - 1))); do
  for v in "${VARIANTS[@]}"; do
    run="$OUT/runs/$v/seed_$seed"
    if [ -f "$run/stats/metrics.json" ] && grep -q '"test/acc"' "$run/stats/metrics.json"; then
      continue
    fi
    rm -rf "$run"
    mkdir -p "$OUT/runs"
    echo "fashion_mnist_cnn: $v seed $seed"
    gaaf-fit --config "fashion_mnist_cnn_$v" --seed_everything "$seed" --run_dir "$run" \
      --trainer.enable_progress_bar false "${@:3}" >"$OUT/runs/$v.seed_$seed.log" 2>&1 || {
      echo "fashion_mnist_cnn: $v seed $seed failed, see $OUT/runs/$v.seed_$seed.log" >&2
      exit 1
    }
  done
done
gaaf-report "$OUT"/runs/{base,bn,gaaf,bn_gaaf}/seed_0 --labels base BN GAAF BN+GAAF --out "$OUT/gaaf-report"
python - "$OUT" "$SEEDS" <<'PY'
import json, statistics, sys
from pathlib import Path
from lightning_gaaf.stats import read_stats
out, seeds = Path(sys.argv[1]), int(sys.argv[2])
rows = ["| variant | test accuracy % (mean, sample std) | runs |", "|---|---|---|"]
for v, label in (("base", "base"), ("bn", "BN"), ("gaaf", "GAAF"), ("bn_gaaf", "BN+GAAF")):
    accs = [100 * read_stats(out / "runs" / v / f"seed_{s}" / "stats" / "metrics.json")["test"]["test/acc"] for s in range(seeds)]
    std = statistics.stdev(accs) if len(accs) > 1 else float("nan")
    rows.append(f"| {label} | {statistics.mean(accs):.2f} ({std:.2f}) | {len(accs)} |")
(out / "table.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
