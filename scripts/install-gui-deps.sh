#!/usr/bin/env bash
# Runtime libraries on a minimal Debian/Ubuntu machine: the window (X11/Wayland, EGL/GL) and
# OpenBLAS for the model's matrix products.
set -euo pipefail
sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
$sudo_cmd apt-get update -qq
$sudo_cmd apt-get install -y -qq libopenblas0 libx11-6 libx11-xcb1 libxcursor1 libxi6 libxrandr2 libxkbcommon0 \
  libxkbcommon-x11-0 libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri libdbus-1-3
