#!/usr/bin/env bash
# Source-model recipe study: train named variants of bundle/configs/train.json concurrently on the
# GPUs of one host (round-robin), then evaluate each source-only on ct_val and mr_test (CT running
# statistics and per-volume statistics). Run from the repository root:
#   bash docs/benchmarks/train_study.sh CACHE_DIR OUT_DIR BUDGET_S SOLO_IT_PER_S
# Each variant gets BUDGET_S x its share of a GPU's measured solo iterations/s (SOLO_IT_PER_S, from
# train_throughput.py), rounded down to whole epochs, with a time limit of BUDGET_S + 60 s.
set -euo pipefail
CACHE=$1
OUT=$2
BUDGET=${3:-400}
SOLO=${4:-10}
declare -A VARIANTS=(
  [gin]="--augment#location_scale_prob 0 --augment#thick_slice_prob 0"
  [full]=""
  [full_pervol]="--crops_per_volume 8"
  [ls_pervol]="--augment#gin_prob 0 --crops_per_volume 8"
)
# EXTRA / EVAL_EXTRA: more arguments for training / evaluation (smoke tests); NAMES: a subset.
NAMES=${NAMES:-"gin full full_pervol ls_pervol"}
NGPU=$(python3 -c "import torch; print(max(torch.cuda.device_count(), 1))")
N=$(wc -w <<<"$NAMES")
SHARE=$(( (N + NGPU - 1) / NGPU ))
EPOCHS=$(python3 -c "print(max(int($BUDGET * $SOLO / $SHARE / 100), 1))")
VAL=$(( EPOCHS / 6 > 0 ? EPOCHS / 6 : 1 ))
echo "$N variants on $NGPU GPU(s), $SHARE per GPU: $EPOCHS epochs of 100 iterations each, validation every $VAL"
i=0
for name in $NAMES; do
  mkdir -p "$OUT/$name"
  CUDA_VISIBLE_DEVICES=$(( i % NGPU )) python3 -m monai.bundle run --config_file bundle/configs/train.json --bundle_root bundle \
    --dataset_dir "$CACHE" --ckpt_dir "$OUT/$name" --max_epochs "$EPOCHS" --val_interval "$VAL" \
    --time_limit_s $(( BUDGET + 60 )) ${VARIANTS[$name]} ${EXTRA:-} >"$OUT/$name/train.log" 2>&1 &
  i=$(( i + 1 ))
done
wait
i=0
for name in $NAMES; do
  CUDA_VISIBLE_DEVICES=$(( i % NGPU )) python3 -m grata_monai.cli source --data_dir "$CACHE" --bundle_dir bundle \
    --ckpt "$OUT/$name/model.pt" --splits ct_val,mr_test --out "$OUT/$name/source_eval.json" ${EVAL_EXTRA:-} \
    >"$OUT/$name/eval.log" 2>&1 &
  i=$(( i + 1 ))
done
wait
for name in $NAMES; do
  echo "== $name"; grep -E "^\||^ct_val|^mr_test" "$OUT/$name/eval.log" || tail -5 "$OUT/$name/eval.log"
done
