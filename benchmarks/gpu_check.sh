#!/bin/bash
# A short check of training on a lent CUDA GPU (run from the repository root on the GPU machine, with the wheels of
# kornia, kornia_rs and monai in .whl; see studies/site-shift/README.md): automatic device choice, bf16 and fp16
# autocast (fp16 with loss scaling), a checkpoint resumed on the GPU, and torchrun with the nccl backend.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 MPLBACKEND=Agg PNEUMOSCAN_CACHE_DIR=/tmp/cache
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'bf16', torch.cuda.is_bf16_supported())"
DATA=synthetic:n_per_class=400,size=128,seed=1
COMMON=(--data "$DATA" --arch compact --image-size 128 --batch-size 64 --epochs 3 --patience 10)
for precision in auto fp16 fp32; do
  echo "== precision $precision (device auto)"
  python3 -m pneumoscan train "${COMMON[@]}" --precision "$precision" --out "runs/gpu-$precision" 2>&1 \
    | grep -E "epoch|accuracy|roc_auc|error" | tail -6
  python3 -c "import json; c=json.load(open('runs/gpu-$precision/config.json')); print('resolved', c['resolved']['device'], c['resolved']['autocast'])"
done
echo "== SIGKILL after epoch 1, then resume (fp16: the loss scaler's state travels too)"
python3 -m pneumoscan train "${COMMON[@]}" --precision fp16 --epochs 4 --out runs/gpu-resume > "$OUT/resume.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  python3 -c "import sys; from pneumoscan.training.checkpoint import Checkpoint; sys.exit(Checkpoint.load('runs/gpu-resume').loop.epochs_done < 1)" 2>/dev/null && break
  sleep 0.2
done
kill -9 $pid; wait $pid 2>/dev/null
python3 -m pneumoscan train --resume runs/gpu-resume 2>&1 | grep -E "epoch|error" | tail -5
echo "== torchrun, 1 process per GPU (nccl)"
python3 -m torch.distributed.run --standalone --nproc_per_node "$(nvidia-smi -L | wc -l)" -m pneumoscan train \
  "${COMMON[@]}" --out runs/gpu-torchrun 2>&1 | grep -E "epoch|error|Error" | tail -5
ls runs/gpu-torchrun
