#!/usr/bin/env bash
# Train the bundle on a compact cache (grata-monai cache) within a wall-clock budget, then
# evaluate the final model source-only (CT running statistics and per-volume statistics:
# `grata-monai source`, run as a module so an uninstalled checkout works).
# Run from the repository root:
#   bundle/scripts/train_gpu.sh <cache_dir> <out_dir> <train_budget_s>
# A 4-epoch probe times one epoch (validation included); the full run gets as many epochs as
# fit the budget (the one-cycle schedule then spans exactly those epochs).
set -euo pipefail
CACHE=${1:-.cache/abdomen}
OUT_DIR=${2:-out}
BUDGET=${3:-400}
CFG=bundle/configs/train.json
EXTRA=${EXTRA:-}  # extra config overrides for both runs (smoke tests)
mkdir -p "$OUT_DIR"
python3 -m monai.bundle run --config_file $CFG --bundle_root bundle --dataset_dir "$CACHE" --ckpt_dir /tmp/probe \
    --train#trainer#max_epochs 4 --val_interval 2 $EXTRA 2>&1 | tee "$OUT_DIR/probe.log"
read -r EPOCHS VAL <<<"$(python3 - "$OUT_DIR/probe.log" "$BUDGET" <<'PY'
import re, sys, datetime as dt
t = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+ \S+) - INFO - Epoch\[(\d+)\] Metrics -- train", line)
    if m:
        t[int(m[2])] = dt.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
per_epoch = (t[4] - t[2]) / 2
epochs = max(int(float(sys.argv[2]) / per_epoch), 4)
print(epochs, max(epochs // 6, 1))
print(f"probe: {per_epoch:.2f} s/epoch -> {epochs} epochs", file=sys.stderr)
PY
)"
echo "training $EPOCHS epochs, validating every $VAL"
python3 -m monai.bundle run --config_file $CFG --bundle_root bundle --dataset_dir "$CACHE" --ckpt_dir "$OUT_DIR" \
    --train#trainer#max_epochs "$EPOCHS" --val_interval "$VAL" --time_limit_s $((BUDGET + 60)) $EXTRA \
    2>&1 | grep -v "Loading dataset" | tee "$OUT_DIR/train.log"
python3 -m grata_monai.bench.cli source --data_dir "$CACHE" --bundle_dir bundle --ckpt "$OUT_DIR/model.pt" \
    --splits ct_val,mr_test --out "$OUT_DIR/source_eval.json" ${EVAL_EXTRA:-} 2>&1 | grep -v -i warn | tee "$OUT_DIR/eval.log"
