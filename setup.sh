#!/usr/bin/env bash
# Set up yolo-dms from scratch in ./.venv: CPU-capable torch, Ultralytics, and this package (editable, with dev extras).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/pip install -q -e ".[dev]"
