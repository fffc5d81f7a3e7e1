#!/usr/bin/env bash
# Puts an OpenBLAS into models/ (libscipy_openblas.so, from the PyPI package scipy-openblas32),
# so the model's matrix products take the fast path on a machine without a system BLAS and
# without root rights. selfret loads it at run time when no system OpenBLAS/MKL is found.
# Idempotent; a failure here only costs speed, so it warns instead of failing.
set -uo pipefail
cd "$(dirname "$0")/.."
dest="models/libscipy_openblas.so"
version="0.3.34.481.3"
if [ -f "$dest" ]; then
  echo "OpenBLAS present: $dest"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
    --dest "$tmp" "scipy-openblas32==$version" 2>/dev/null; then
  echo "warning: could not fetch scipy-openblas32 $version from PyPI; selfret runs without it (slower)" >&2
  exit 0
fi
wheel=$(ls "$tmp"/scipy_openblas32-*.whl | head -n 1)
python3 - "$wheel" "$tmp/lib.so" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/libscipy_openblas.so"))
    with z.open(member) as src, open(out, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
mkdir -p models
mv "$tmp/lib.so" "$dest"
echo "OpenBLAS ready: $dest ($(du -h "$dest" | cut -f1))"
