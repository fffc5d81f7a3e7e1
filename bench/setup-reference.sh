#!/usr/bin/env bash
# Creates the Python reference environment (PyTorch + transformers on CPU) outside the repository,
# for the side-by-side benchmarks. Prints the interpreter path.
set -euo pipefail
venv="${SELFRET_REF_VENV:-$HOME/.cache/selfret/ref-venv}"
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet torch transformers gguf accelerate
fi
echo "$venv/bin/python"
