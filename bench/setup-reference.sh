#!/usr/bin/env bash
# Creates the Python reference environment (PyTorch + transformers on CPU, and TRL/PEFT for
# scripts/train_hf.py) outside the repository, for the side-by-side benchmarks. Prints the
# interpreter path.
set -euo pipefail
venv="${SELFRET_REF_VENV:-$HOME/.cache/selfret/ref-venv}"
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
fi
# An environment made before TRL and PEFT were added gets them too.
if ! "$venv/bin/python" -c "import torch, transformers, gguf, accelerate, trl, datasets, peft" 2>/dev/null; then
  "$venv/bin/pip" install --quiet torch transformers gguf accelerate trl datasets peft >&2
fi
echo "$venv/bin/python"
