#!/usr/bin/env bash
# Reproduce docs/benchmarks.md: sweep on the dev MR volumes, then every method on all MR volumes
# (bf16 and fp32) and on the in-domain CT validation volumes, then the report.
# Usage: bash docs/benchmarks/run.sh [DATA_DIR] [OUT_DIR]   (DATA_DIR holds datalist.json: the abdomen
# set or its compact cache from `grata-monai cache`; a CUDA GPU is used when present)
set -euo pipefail
DATA=${1:-../shared/data/abdomen}
OUT=${2:-docs/benchmarks}
mkdir -p "$OUT"
export GRATA_BUNDLE_DIR=${GRATA_BUNDLE_DIR:-bundle}   # run from the repository root
python -m grata_monai.bench.cli sweep --data_dir "$DATA" --out "$OUT/sweep.json" --amp=True
python -m grata_monai.bench.cli benchmark --data_dir "$DATA" --key mr_test --amp=True \
  --settings_from "$OUT/sweep.json" --out "$OUT/results.json"
python -m grata_monai.bench.cli benchmark --data_dir "$DATA" --key mr_test --amp=False --batch_views=False --methods source,norm_stats,grata \
  --settings_from "$OUT/sweep.json" --out "$OUT/results_mr_before.json"
python -m grata_monai.bench.cli benchmark --data_dir "$DATA" --key ct_val --amp=True \
  --settings_from "$OUT/sweep.json" --out "$OUT/results_ct.json"
IRCAD=${IRCAD:-../shared/data/ircad01/PATIENT_DICOM}   # the unlabelled third-center CT series, where present
if [ -d "$IRCAD" ]; then
  python -m grata_monai.bench.cli volumes --dataset_dir "$IRCAD" --settings_from "$OUT/sweep.json" \
    --out "$OUT/volumes_ircad01.json"
fi
if python -c "import matplotlib" 2>/dev/null; then
  python -m grata_monai.bench.cli report --bench_dir "$OUT" --md docs/benchmarks.md
fi
