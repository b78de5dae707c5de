#!/usr/bin/env bash
# One-command set-up: a venv in .venv with a CPU torch (or the machine's own torch on GPU boxes) and thinkgen.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned, so that nothing below can pull a multi-GB CUDA build on a CPU machine.
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[dev]"
python -c "import thinkgen, torch; print('thinkgen', thinkgen.__version__, 'torch', torch.__version__)"
