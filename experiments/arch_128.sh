#!/usr/bin/env bash
# Issue 3 architecture table, budget runs: the MONAI backbones at 128 px, at most 6 epochs each
# (a full run of DenseNet-121 does not fit a session on 2 cores). Same split as every other run.
# EfficientNet-B0 at Adam's default lr 1e-3 did not learn in 3 epochs (validation AUC 0.51-0.57,
# every film called pneumonia), so it runs at 3e-4.
set -euo pipefail
DATA=${DATA:-../shared/data/chest_xray}
run() {
  local arch=$1; shift
  local out=runs/arch-128/$arch
  [ -f "$out/model.json" ] && return 0
  .venv/bin/pneumoscan train --data "$DATA" --arch "$arch" --optimizer adam --image-size 128 --epochs 6 "$@" --out "$out"
}
run densenet121
run efficientnet_b0 --lr 3e-4
