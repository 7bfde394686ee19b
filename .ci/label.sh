#!/usr/bin/env bash
# MONAI Label integration: its own venv (.venv-label), built from scratch, then the MONAI Label tests.
# MONAI Label needs torchvision; PyPI's torchvision breaks beside the CPU torch 2.13, so this env
# uses torch 2.14.1 + torchvision 0.29.1 (local files on the CI machine) and pydicom<3 pins.
# MONAI is pinned to 1.5.2: MONAI 1.6's Spacingd updates every `image_*` entry of the data dict as a
# metadata dict when the input is NIfTI, and MONAI Label 0.8.5 puts the string `image_path` there
# (AttributeError: 'str' object has no attribute 'update'); see docs/monai-label.md.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
rm -rf .venv-label
python3 -m venv .venv-label
. .venv-label/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q "monailabel==0.8.5" "monai==1.5.2" "pydicom<3" "pynetdicom<3" "dicomweb-client<0.60" "numpy<2" pytest
python -m pip install -q -e . --no-deps
python -m pip install -q fire tqdm nibabel
echo "label env built in $((SECONDS - start)) s"

set +e
python -m pytest -q -p no:cacheprovider tests/integration/test_monailabel.py
status=$?
set -e
echo "label env built and tested in $((SECONDS - start)) s"
[ "$status" -eq 5 ] && { echo "pytest collected no tests: failing on purpose" >&2; exit 1; }
exit "$status"
