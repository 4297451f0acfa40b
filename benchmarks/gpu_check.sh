#!/usr/bin/env bash
# The GPU figures of the README's "Stage 1 on a GPU" table, in one run on a bare CUDA machine:
#   1. full-scale drivesim data (9,053 + 468 scenes) with one process per core;
#   2. the stage-1 step of configs/gpu.yaml against its bare backbone (forward+backward at the
#      same batch rows, input size, bf16, channels_last, compile) and the peak memory;
#   3. one real-size fold (fold 0 of 5, configs/gpu.yaml as it stands), capped at FOLD_LIMIT_S.
# The fold runs before the step bench (capped at BENCH_LIMIT_S), so that a short lease spends
# itself on the figure that takes longest to get. STEPS picks steps (e.g. STEPS=bench on a machine
# that already has the data), so a lease can split them over two calls.
# Pretrained weights are off (the machine is offline): the compute is the same.
#
#   bash benchmarks/gpu_check.sh            # writes $OUT (default outputs/gpu_check)
#   TRAIN_SCENES=20 TEST_SCENES=4 DEVICE=cpu OVERRIDES='stage1.model.backbone=convnext_atto ...' \
#       bash benchmarks/gpu_check.sh        # the same steps on a CPU, to check the script
set -uo pipefail
PY=${PY:-python3}
OUT=${OUT:-outputs/gpu_check}
DATA=${DATA:-data/full}
TRAIN_SCENES=${TRAIN_SCENES:-9053}
TEST_SCENES=${TEST_SCENES:-468}
DEVICE=${DEVICE:-cuda}
FOLD_LIMIT_S=${FOLD_LIMIT_S:-420}
BENCH_LIMIT_S=${BENCH_LIMIT_S:-150}
OVERRIDES=${OVERRIDES:-}
STEPS=${STEPS:-data fold bench}
wants() { [[ " $STEPS " == *" $1 "* ]]; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

# shellcheck disable=SC2086  # OVERRIDES is a list of key=value words
{
  echo "== device"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  $PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
  wants data && { echo "== data"; start=$(date +%s)
  [ -f "$DATA/train_features.csv" ] || $PY -m drivesim --out "$DATA" --train-scenes "$TRAIN_SCENES" \
      --test-scenes "$TEST_SCENES" --seed 0 --workers "$(nproc)" --quiet
  echo "data_seconds $(( $(date +%s) - start ))"; }
  wants fold && { echo "== one fold"; start=$(date +%s)
  timeout "$FOLD_LIMIT_S" $PY -m trajstack stage1 --config configs/gpu.yaml --data "$DATA" --exp gpu_fold0 \
      stage1.folds=[0] stage1.model.pretrained=false stage1.progress=false stage1.device="$DEVICE" $OVERRIDES
  echo "fold_rc $? fold_seconds $(( $(date +%s) - start ))"
  cp outputs/gpu_fold0/stage1/*/log.txt "$OUT/fold_log.txt" 2>/dev/null
  cp outputs/gpu_fold0/stage1/*/fold0/metrics.jsonl "$OUT/fold_metrics.jsonl" 2>/dev/null; }
  wants bench && { echo "== step vs bare backbone"
  timeout "$BENCH_LIMIT_S" $PY -m benchmarks.bench_stage1 --config gpu --data "$DATA" --device "$DEVICE" \
      --batches 30 stage1.model.pretrained=false stage1.device="$DEVICE" $OVERRIDES | tee "$OUT/bench_stage1.json"
  echo "bench_rc ${PIPESTATUS[0]}"; }
} 2>&1 | tee "$OUT/gpu_check.log"
