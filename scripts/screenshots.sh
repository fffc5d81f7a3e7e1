#!/usr/bin/env bash
# Regenerates docs/screenshots/*.png from the real window under Xvfb (software GL).
# Needs: xvfb imagemagick and the GUI runtime libraries (scripts/install-gui-deps.sh), and a
# trained demo run (made here with the tiny model if runs/demo is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${SELFRET_BIN:-target/release/selfret}
[ -x "$bin" ] || cargo build --release
if [ ! -f runs/demo/checkpoint/manifest.ron ]; then
  "$bin" index --corpus corpora/ir_history.jsonl --model tiny --out runs/demo \
    --queries corpora/ir_history.queries.jsonl --steps 400 --checkpoint-every 100
fi
mkdir -p docs/screenshots
export XDG_DATA_HOME; XDG_DATA_HOME=$(mktemp -d)   # no remembered project: start clean
Xvfb :99 -screen 0 1280x800x24 -nolisten tcp & xvfb=$!
trap 'kill $xvfb 2>/dev/null || true' EXIT
sleep 1
export DISPLAY=:99 LIBGL_ALWAYS_SOFTWARE=1
shoot() { # panel seconds extra-args...
  local panel=$1 wait=$2; shift 2
  "$bin" gui --panel "$panel" --corpus corpora/ir_history.jsonl "$@" & local pid=$!
  sleep "$wait"
  import -window root "docs/screenshots/$panel.png"
  kill $pid; wait $pid 2>/dev/null || true
}
shoot corpus 4
shoot model 4
shoot train 4 --run runs/demo
shoot query 30 --run runs/demo --ask "Who introduced inverse document frequency?" --explain tf-idf-1 --bm25
shoot evaluate 75 --run runs/demo --evaluate corpora/ir_history.dev.jsonl
echo "screenshots written to docs/screenshots/"
