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
# Headless chromium + chromedriver from Debian for the page tests (tests/test_demo_page.py). Checked on
# every run (before the stamp): the venv can outlive a machine's system packages.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium and chromium-driver (apt-get) for the browser tests"
    if ! { $SUDO apt-get update -qq >/dev/null &&
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
      echo "note: apt-get could not install chromium; the browser tests will be skipped"
    fi
  else
    echo "note: chromium/chromedriver missing and apt-get not usable here (needs root or passwordless sudo);" \
      "the browser tests will be skipped. Install Debian's chromium and chromium-driver to run them."
  fi
fi
stamp=.venv/.phenaki-installed
want=$(cat pyproject.toml scripts/install.sh scripts/constraints.txt | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
# Torch first, then everything else under a constraints file that holds it: on machines without CUDA the CPU
# build (a local wheel on our machines) avoids several GB of CUDA packages, and without the constraint the
# bench extra's torchvision would make pip swap torch for a CUDA build.
if command -v nvidia-smi >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch>=2.6"  # pyproject.toml's floor
  constraints=$(mktemp)
  trap 'rm -f "$constraints"' EXIT
  .venv/bin/python -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' > "$constraints"
else
  constraints=scripts/constraints.txt
  .venv/bin/python -m pip install -q -c "$constraints" torch
fi
.venv/bin/python -m pip install -q -c "$constraints" -e ".[dev,bench]"
echo "$want" > "$stamp"
