#!/bin/bash
# The site-shift recipe search (issue 9) on a lent GPU, every cell on the same platform so cells compare
# fairly: 8 recipes x 2 held-out series x 2 seeds, plus SimCLR pre-training per held-out series, then
# ensembles of diverse members. Each (recipe, series) is its own `pneumoscan study` process, all at
# once on one GPU. Run from the repository root on the GPU machine, with the Kaggle training split at
# .gpu/chest_xray and the wheels of kornia, kornia_rs and monai in .whl (see studies/site-shift/README.md):
#   bash studies/site-shift/gpu_search.sh        # results: $OUT/search.tar.gz (small files only)
set -u
LIMIT=${LIMIT:-420}   # seconds each study process may run; finished runs are kept, the rest is cut off
[ -n "${NO_INSTALL:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 MPLBACKEND=Agg OMP_NUM_THREADS=1
OUT=${OUT:-/tmp/out}
W=runs/gpu-search
mkdir -p "$W" "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, kornia, monai; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/test_training.py -k gpu 2>&1 | tail -2

DATA=${DATA:-.gpu/chest_xray} DEVICE=${DEVICE:-cuda}
BASE=(--config configs/site-shift-search.toml --set data="$DATA" --set device="$DEVICE" --seeds 2 ${EXTRA:-})
study() {  # study NAME SERIES [study args...]
  local name=$1 series=$2; shift 2
  PNEUMOSCAN_CACHE_DIR=/tmp/cache-$name-$series timeout -s INT "$LIMIT" python3 -m pneumoscan study "${BASE[@]}" \
    --set hold_out_series="$series" "$@" --out "$W/$name-$series" > "$W/$name-$series.log" 2>&1
}
ssl_study() {  # SimCLR on the training side of the same carve (held-out series left out), then fine-tuning
  local series=$1
  PNEUMOSCAN_CACHE_DIR=/tmp/cache-ssl-$series timeout -s INT 150 python3 -m pneumoscan pretrain \
    --config configs/ssl-pretrain-128.toml --set data="$DATA" --set device="$DEVICE" --set epochs="${SSL_EPOCHS:-30}" \
    --hold-out-series "$series" --out "$W/pretrain-$series" > "$W/pretrain-$series.log" 2>&1
  LIMIT=$((LIMIT - 150)) study ssl "$series" --cell "ssl: weights=$W/pretrain-$series/backbone.safetensors"
}
started=$(date +%s)
for series in NORMAL2 IM; do
  study base "$series" --cell "base:" &
  study crop "$series" --cell "crop: border_crop=0.08" &
  study reg "$series" --cell "reg: mixup=0.2; label_smoothing=0.1; erasing=0.25" &
  study lowres "$series" --cell "lowres: image_size=96" &
  study equalize "$series" --cell "equalize: intensity=equalize" &
  study clahe "$series" --cell "clahe: intensity=clahe" &
  study resnet18 "$series" --cell "resnet18: arch=resnet18" &
  ssl_study "$series" &
done
wait
echo "studies took $(( $(date +%s) - started )) s"

# Ensembles of diverse members, per series and seed, from whichever runs finished
mkdir -p "$W/ensembles"
member() { ls -d "$W/$1-$2"/c0*/seed"$3" 2>/dev/null | head -1; }
for series in NORMAL2 IM; do for seed in 0 1; do
  for combo in "base equalize clahe" "base resnet18 equalize" "base crop lowres equalize clahe resnet18"; do
    members=()
    for name in $combo; do
      m=$(member "$name" "$series" "$seed"); [ -n "$m" ] && [ -f "$m/model.json" ] && members+=("$m")
    done
    [ ${#members[@]} -ge 2 ] || continue
    out="$W/ensembles/${combo// /+}-$series-seed$seed"
    timeout 60 python3 -m pneumoscan ensemble "${members[@]}" --out "$out" > "$out.log" 2>&1 &
  done
done; done
wait
find "$W" \( -name model.json -o -name metrics.csv -o -name config.json -o -name 'study.*' -o -name '*.log' \
  -o -name pretrain.json \) -print0 | tar -czf "$OUT/search.tar.gz" --null -T -
ls -la "$OUT"; tail -n 3 "$W"/*.log | tail -n 80
