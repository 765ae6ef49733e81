#!/usr/bin/env bash
# Creates .venv and installs phenaki-ray with everything the demo and the tests need.
# Idempotent: a second run only checks. Needs Python 3.11 and the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.phenaki-installed
want=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
# Torch first, so later resolution keeps it: on machines without CUDA the CPU build
# (a local wheel on our machines) avoids pulling several GB of CUDA packages.
if command -v nvidia-smi >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch>=2.4"
else
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
echo "$want" > "$stamp"
