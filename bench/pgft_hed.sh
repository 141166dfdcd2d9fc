#!/usr/bin/env bash
# Prior-guided fine-tuning of HED on photographs that ship in packages, measured on held-out
# photographs (docs/training.md). Runs on a 2-core CPU; needs the dev install (scikit-image)
# and Debian's opencv-doc. The fine-tuned weights land in OUT/hed-pgft.safetensors.
#
#   bench/pgft_hed.sh [OUT]        (default OUT: runs/pgft-hed)
set -euo pipefail
out=${1:-runs/pgft-hed}
python "$(dirname "$0")/pgft_photos.py" "$out/photos"
megasr train pgft-extractor --extractor hed \
    --data "$out/photos/train" --val-data "$out/photos/held-out" \
    --steps 500 --batch-size 4 --crop 192 --lr 5e-5 --seed 0 \
    --out "$out/hed-pgft.safetensors"
