#!/usr/bin/env bash
# Reproduce docs/benchmarks.md: the study of adaptation variants on the dev MR volumes and ct_val
# (it writes study.md/json/png and results.json / results_ct.json with the chosen default), the
# organ volumes on the third-center CT series where present, then the report.
# Usage: bash docs/benchmarks/run.sh [DATA_DIR] [OUT_DIR]   (DATA_DIR holds datalist.json: the abdomen
# set or its compact cache from `grata-monai cache`; a CUDA GPU is used when present)
set -euo pipefail
DATA=${1:-../shared/data/abdomen}
OUT=${2:-docs/benchmarks}
mkdir -p "$OUT"
export GRATA_BUNDLE_DIR=${GRATA_BUNDLE_DIR:-bundle}   # run from the repository root
python -m grata_monai.cli study --data_dir "$DATA" --out_dir "$OUT"
IRCAD=${IRCAD:-../shared/data/ircad01/PATIENT_DICOM}   # the unlabelled third-center CT series, where present
if [ -d "$IRCAD" ]; then
  python -m grata_monai.cli volumes --dataset_dir "$IRCAD" --out "$OUT/volumes_ircad01.json"
fi
if python -c "import matplotlib" 2>/dev/null; then
  python -m grata_monai.cli report --bench_dir "$OUT" --md docs/benchmarks.md
fi
