#!/usr/bin/env bash
# One prior-guided fine-tuning of HED on photographs that ship in packages, measured on
# held-out photographs against the pretrained and the recalibrated HED (docs/training.md;
# bench/pgft_variants.sh runs every variant of the table). Needs the dev install and
# Debian's opencv-doc. The fine-tuned weights land in OUT/hed-pgft.safetensors, resume
# points in OUT/hed-pgft.safetensors.state: run it again after a kill to continue.
#
#   bench/pgft_hed.sh [OUT]        (default OUT: runs/pgft-hed)
set -euo pipefail
out=${1:-runs/pgft-hed}
export MEGASR_CPU_THREADS=${MEGASR_CPU_THREADS:-1}
python "$(dirname "$0")/pgft_photos.py" "$out/photos"
megasr train pgft-extractor --extractor hed \
    --data "$out/photos/train" --val-data "$out/photos/held-out" \
    --steps 400 --batch-size 4 --crop 128 --lr 5e-5 --seed 0 --checkpoint-every 50 \
    --out "$out/hed-pgft.safetensors" --report "$out/hed-pgft.json"
