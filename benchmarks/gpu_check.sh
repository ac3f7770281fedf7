#!/usr/bin/env bash
# GPU readiness in one go, on a CUDA machine (< 8 minutes): the CUDA-marked tests (compiled GAAF on
# CUDA, bf16 autocast, a 2-GPU DDP fit when two GPUs exist) and the activation benchmark on CUDA,
# then one summary block.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, package importable
#
# Exit code: 0 when the tests passed and the benchmark ran, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
export GAAF_BACKEND="${GAAF_BACKEND:-auto}"
PY="${PYTHON:-python}"
LOG="$(mktemp -d)"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to torch; nothing to check" >&2
  exit 1
fi
GPUS="$("$PY" -c "import torch; print(torch.cuda.device_count(), torch.cuda.get_device_name(0))")"

START=$(date +%s)
timeout 420 "$PY" -m pytest -q -m cuda tests/ -p no:cacheprovider >"$LOG/tests.txt" 2>&1
TESTS_RC=$?
timeout 240 "$PY" benchmarks/activation.py --device cuda --rounds 30 --mlp-rounds 60 >"$LOG/bench.txt" 2>&1
BENCH_RC=$?
END=$(date +%s)

echo "================ lightning-gaaf GPU check ================"
echo "GPUs:        $GPUS"
echo "torch:       $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"
echo "CUDA tests:  $(tail -n 1 "$LOG/tests.txt") (exit $TESTS_RC)"
echo "benchmark:   exit $BENCH_RC"
grep -E "^  \(" "$LOG/bench.txt" || tail -n 5 "$LOG/bench.txt"
echo "time:        $((END - START)) s; logs in $LOG"
echo "=========================================================="
[ "$TESTS_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]
