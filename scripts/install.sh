#!/usr/bin/env bash
# Install resrec into ./.venv with a CPU build of PyTorch.
#
#   bash scripts/install.sh          the package and its command line
#   bash scripts/install.sh --dev    also the test, lint and tuning tools
#
# Environment:
#   RESREC_TORCH        the torch requirement (default: torch==2.13.0)
#   RESREC_TORCH_INDEX  index to take torch from. Default: PyTorch's CPU-only index,
#                       unless a local wheel directory (PIP_FIND_LINKS) already holds
#                       a CPU build. For a GPU build, set it to a CUDA index, e.g.
#                       https://download.pytorch.org/whl/cu126
#   PYTHON              the interpreter to build the venv with (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."

torch_req="${RESREC_TORCH:-torch==2.13.0}"
if [ -z "${RESREC_TORCH_INDEX+set}" ]; then
  RESREC_TORCH_INDEX="https://download.pytorch.org/whl/cpu"
  for dir in ${PIP_FIND_LINKS:-}; do
    if ls "$dir"/torch-*+cpu-*.whl >/dev/null 2>&1; then RESREC_TORCH_INDEX=""; fi
  done
fi

"${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ -n "$RESREC_TORCH_INDEX" ]; then
  .venv/bin/python -m pip install --quiet "$torch_req" --index-url "$RESREC_TORCH_INDEX"
else
  .venv/bin/python -m pip install --quiet "$torch_req"
fi

extras=""
if [ "${1:-}" = "--dev" ]; then extras="[dev,tune]"; fi
.venv/bin/python -m pip install --quiet -e ".${extras}"
.venv/bin/python -c "import torch, resrec; print('resrec', resrec.__version__, 'with torch', torch.__version__)"
