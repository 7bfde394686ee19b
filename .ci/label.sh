#!/usr/bin/env bash
# MONAI Label integration: its own venv (.venv-label), built from scratch, then the MONAI Label tests.
# MONAI Label imports torchvision, whose build must match torch's. On a machine without nvidia-smi
# the pair comes from PyTorch's CPU index (CPU builds, well under 1 GB) when that index answers.
# PyPI has no CPU build of either for x86_64 Linux, and PyPI's torchvision fails to import beside a
# CPU torch ('operator torchvision::nms does not exist'): where PyTorch's index cannot be reached
# (the CI machine reaches PyPI only), the env falls back to PyPI's pair, CUDA builds that run on the
# CPU (torch 2.14.1 + torchvision 0.29.1, local files on the CI machine; about 5.5 GB).
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
TORCH_PAIR=(torch==2.14.1 torchvision==0.29.1)
CPU_INDEX=https://download.pytorch.org/whl/cpu
if command -v nvidia-smi >/dev/null; then
  python -m pip install -q "${TORCH_PAIR[@]}"
elif python -c "import urllib.request as u; u.urlopen('$CPU_INDEX/torch/', timeout=10)" 2>/dev/null; then
  python -m pip install -q --index-url "$CPU_INDEX" "${TORCH_PAIR[@]}"   # PyTorch's documented CPU install
else
  echo "PyTorch's CPU index is not reachable: torch and torchvision from PyPI (CUDA builds, run on the CPU)"
  python -m pip install -q "${TORCH_PAIR[@]}"
fi
python -m pip install -q "monailabel==0.8.5" "monai==1.5.2" "pydicom<3" "pynetdicom<3" "dicomweb-client<0.60" "numpy<2" pytest
python -m pip install -q -e . --no-deps
python -m pip install -q fire tqdm nibabel
echo "label env built in $((SECONDS - start)) s, $(du -sh .venv-label | cut -f1) ($(python -c 'import torch; print(torch.__version__)'))"

set +e
python -m pytest -q -p no:cacheprovider tests/integration/test_monailabel.py
status=$?
set -e
echo "label env built and tested in $((SECONDS - start)) s"
[ "$status" -eq 5 ] && { echo "pytest collected no tests: failing on purpose" >&2; exit 1; }
exit "$status"
