#!/usr/bin/env bash
# MONAI Deploy integration: its own venv (.venv-deploy), built from scratch, then the Deploy tests on
# the bundle's own sample (no outside data; a skipped test fails this script: a host test that runs
# nothing must not pass), then the DICOM tests under pydicom 3 (those on real series in
# ../shared/data skip with their reason where it is absent).
# The App SDK needs pydicom>=3 and highdicom; torch 2.13.0 comes from .ci/torch.sh (the CPU build on a
# machine without nvidia-smi). pylibjpeg + openjpeg decode JPEG 2000 series.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
rm -rf .venv-deploy
python3 -m venv .venv-deploy
. .venv-deploy/bin/activate
python -m pip install -q --upgrade pip
bash .ci/torch.sh python torch==2.13.0
python -m pip install -q "monai-deploy-app-sdk==4.0.0" "monai==1.6.1" highdicom "pydicom>=3" pylibjpeg pylibjpeg-openjpeg pytest
python -m pip install -q -e .   # torch 2.13.0 is already there, so nothing else is pulled
echo "deploy env built in $((SECONDS - start)) s, $(du -sh .venv-deploy | cut -f1)"

set +e
bash .ci/host-tests.sh tests/integration/test_deploy.py
host=$?
python -m pytest -q -rs -p no:cacheprovider tests/test_dicom.py
dicom=$?
set -e
[ "$host" -eq 0 ] && [ "$dicom" -eq 0 ]
