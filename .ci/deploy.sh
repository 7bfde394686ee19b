#!/usr/bin/env bash
# MONAI Deploy integration: its own venv (.venv-deploy), built from scratch, then the Deploy and DICOM tests.
# The App SDK needs pydicom>=3 and highdicom; torch 2.13.0 is the CPU build from PyTorch's CPU
# index on a machine without nvidia-smi (a plain `torch` pulls CUDA wheels; the CI machine, which
# cannot reach that index, finds the same CPU build on its disk). pylibjpeg + openjpeg decode JPEG 2000 series.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
rm -rf .venv-deploy
python3 -m venv .venv-deploy
. .venv-deploy/bin/activate
python -m pip install -q --upgrade pip
if command -v nvidia-smi >/dev/null; then
  python -m pip install -q torch==2.13.0
else  # CPU build from PyTorch's CPU index (as the Makefile; dependencies come with the SDK below)
  python -m pip install -q --no-deps --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
fi
python -m pip install -q "monai-deploy-app-sdk==4.0.0" "monai==1.6.1" highdicom "pydicom>=3" pylibjpeg pylibjpeg-openjpeg pytest
python -m pip install -q -e .   # torch 2.13.0 is already there, so nothing else is pulled
echo "deploy env built in $((SECONDS - start)) s"

set +e
python -m pytest -q -p no:cacheprovider tests/integration/test_deploy.py tests/test_dicom.py
status=$?
set -e
echo "deploy env built and tested in $((SECONDS - start)) s"
[ "$status" -eq 5 ] && { echo "pytest collected no tests: failing on purpose" >&2; exit 1; }
exit "$status"
