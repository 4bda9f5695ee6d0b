#!/usr/bin/env bash
# README run command: set up the environment, then train + test PCSNet 8-shot on the offline demo data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/anomalib train --config configs/demo.yaml "$@"
