#!/usr/bin/env bash
# Train the bundle's source model on one GPU, then evaluate it source-only (CT running statistics and
# per-volume statistics) with `grata-monai source`. Run from the repository root:
#   bash bundle/scripts/train_gpu.sh [CACHE_DIR] [OUT_DIR] [more monai.bundle run overrides...]
# CACHE_DIR is a compact copy of the data (`grata-monai cache`) or the data folder itself (default
# .cache/abdomen); the model lands in OUT_DIR/model.pt with OUT_DIR/training_log.json (loss and
# ct_val Dice curves). Train MR -> CT with: ... --train_key mr_test --val_key ct_val.
set -euo pipefail
CACHE=${1:-.cache/abdomen}
OUT_DIR=${2:-out/train}
shift $(( $# > 2 ? 2 : $# ))
mkdir -p "$OUT_DIR"
python3 -m monai.bundle run --config_file bundle/configs/train.json --bundle_root bundle \
    --dataset_dir "$CACHE" --ckpt_dir "$OUT_DIR" "$@" 2>&1 | grep -v "Loading dataset" | tee "$OUT_DIR/train.log"
python3 -m grata_monai.cli source --data_dir "$CACHE" --bundle_dir bundle --ckpt "$OUT_DIR/model.pt" \
    --splits "${SPLITS:-ct_val,mr_test}" --out "$OUT_DIR/source_eval.json" ${EVAL_EXTRA:-} 2>&1 | grep -v -i warn | tee "$OUT_DIR/eval.log"
