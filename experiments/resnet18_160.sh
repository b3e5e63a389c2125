#!/usr/bin/env bash
# Issue 3 architecture table: ResNet-18 (torchvision layout, stride-2 stem) at 160 px, same split.
set -euo pipefail
DATA=${DATA:-../shared/data/chest_xray}
out=runs/arch-160/resnet18-s2
[ -f "$out/model.json" ] || .venv/bin/pneumoscan train --data "$DATA" --arch resnet18 --optimizer adam --image-size 160 --epochs 12 --out "$out"
