#!/usr/bin/env bash
# One install path for torch (and torchvision), shared by the Makefile, .ci/label.sh and .ci/deploy.sh:
#   bash .ci/torch.sh PYTHON SPEC...        e.g. bash .ci/torch.sh .venv/bin/python torch==2.13.0
# - TORCH_INDEX_OPT set (non-empty): `pip install $TORCH_INDEX_OPT SPEC...`, nothing else (your choice).
# - nvidia-smi found: the default index (a CUDA build).
# - otherwise the CPU build: PyTorch's CPU index is asked once (10 s); when it answers, the specs come
#   from it alone (--no-deps); when it does not, one message and the default index. In both cases a
#   second `pip install SPEC...` on the default index adds the dependencies (the specs are then satisfied).
# The last line says what was installed (version, CUDA or CPU, the environment's size).
set -euo pipefail
[ "$#" -ge 2 ] || { echo "usage: bash .ci/torch.sh PYTHON SPEC..." >&2; exit 2; }
py=$1; shift
CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
if [ -n "${TORCH_INDEX_OPT:-}" ]; then
  # shellcheck disable=SC2086  # the option string is split on purpose (e.g. "--index-url URL")
  "$py" -m pip install -q $TORCH_INDEX_OPT "$@"
elif command -v nvidia-smi >/dev/null; then
  "$py" -m pip install -q "$@"
else
  if "$py" -c "import sys, urllib.request as u; u.urlopen(sys.argv[1] + '/torch/', timeout=10)" "$CPU_INDEX" \
      2>/dev/null; then
    "$py" -m pip install -q --no-deps --retries 1 --index-url "$CPU_INDEX" "$@"
  else
    echo "torch.sh: PyTorch's CPU index ($CPU_INDEX) could not be reached (10 s limit): $* from the default index" >&2
  fi
  "$py" -m pip install -q "$@"
fi
"$py" - <<'EOF'
import sys
from pathlib import Path

import torch

size = sum(f.stat().st_size for f in Path(sys.prefix).rglob("*") if f.is_file() and not f.is_symlink())
build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
print(f"torch.sh: torch {torch.__version__} ({build} build) in {sys.prefix}, {size / 2**30:.1f} GiB")
EOF
