#!/usr/bin/env bash
# Installs phenaki-ray (into .venv) and runs the demo: the whole pipeline on the synthetic world on a local
# Ray cluster. Extra arguments go to `phenaki demo` (e.g. --out DIR, --fast).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/phenaki demo "$@"
