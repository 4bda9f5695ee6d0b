#!/usr/bin/env bash
# Build (once) the virtual environment the README's commands run in: .venv with CPU-capable
# torch/torchvision, anomalib and this package installed editable with its extras.
# Re-runs are no-ops until pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PCSNET_VENV:-.venv}"
STAMP="$VENV/.pcsnet-env-ready"
if [[ -f "$STAMP" && "$STAMP" -nt pyproject.toml && "$STAMP" -nt scripts/setup_env.sh ]]; then
  exit 0
fi
python3 -m venv "$VENV"
# torchvision's PyPI wheels need the matching torch build (BRIEF §4): pin the pair explicitly.
if [[ "$(uname -m)" == "x86_64" ]]; then
  TORCH=("torch==2.14.1" "torchvision==0.29.1")
else
  TORCH=("torch==2.9.1" "torchvision==0.24.1")
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${TORCH[@]}"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[demo,export,dev,benchmark]"
touch "$STAMP"
