#!/usr/bin/env bash
# MONAI Label integration: its own venv (.venv-label), built from scratch, then the MONAI Label tests
# on the bundle's own sample (no outside data). A skipped test fails this script: a host test that
# runs nothing must not pass.
# MONAI Label imports torchvision, whose build must match torch's; .ci/torch.sh installs the pair
# (CPU builds from PyTorch's CPU index on a machine without nvidia-smi when that index answers).
# PyPI has no CPU build of either for x86_64 Linux, and PyPI's torchvision fails to import beside a
# CPU torch ('operator torchvision::nms does not exist'): where PyTorch's index cannot be reached
# (the CI machine reaches PyPI and its local mirrors only), the env takes PyPI's pair, CUDA builds that
# run on the CPU (torch 2.14.1 + torchvision 0.29.1 with the nvidia-* wheels); torch.sh prints the
# environment's size.
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
bash .ci/torch.sh python torch==2.14.1 torchvision==0.29.1
python -m pip install -q "monailabel==0.8.5" "monai==1.5.2" "pydicom<3" "pynetdicom<3" "dicomweb-client<0.60" "numpy<2" pytest
python -m pip install -q -e . --no-deps
python -m pip install -q fire tqdm nibabel scikit-image "numpy<2"
echo "label env built in $((SECONDS - start)) s, $(du -sh .venv-label | cut -f1)"

bash .ci/host-tests.sh tests/integration/test_monailabel.py
