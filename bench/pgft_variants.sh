#!/usr/bin/env bash
# The PGFT variants of docs/training.md, measured together against the pretrained and the
# recalibrated HED on held-out photographs. Needs the dev install, Debian's opencv-doc and
# libjxl-testdata, and PyPI (the scikit-learn and matplotlib wheels are read, not installed).
#
#   bench/pgft_variants.sh [OUT] [--more]     (default OUT: runs/pgft-variants)
#
# Without --more it makes docs/training.md's table (the output-level and the feature-level
# variant); --more adds the variants that did not fit in the documented session: more
# photographs, and that run continued to 1200 steps.
#
# Every run writes a resume point every 50 steps: run the script again after a kill and
# each run continues where it stopped (a finished run, one with its NAME.json report, is
# not run again). One thread each: on a shared 2-core machine a second PyTorch thread
# mostly spins (docs/training.md, "Threads").
set -euo pipefail
out=${1:-runs/pgft-variants}
more=${2:-}
photos=$out/photos
export MEGASR_CPU_THREADS=${MEGASR_CPU_THREADS:-1}
python "$(dirname "$0")/pgft_photos.py" "$photos" --more

train() {  # NAME STEPS [OPTIONS...]: one fine-tuning of the bundled HED
    local name=$1 steps=$2
    shift 2
    if [ -f "$out/$name.json" ]; then  # finished: keep its report (and its training time)
        echo "== $name: finished before ($out/$name.json)"
        return
    fi
    echo "== $name: $steps steps $* ($(uptime))"
    megasr train pgft-extractor --extractor hed --steps "$steps" --batch-size 4 --crop 128 \
        --lr 5e-5 --seed 0 --checkpoint-every 50 --out "$out/$name.safetensors" \
        --report "$out/$name.json" "$@"
}

train output 400 --data "$photos/train"
train features 400 --data "$photos/train" --side-weight 1 --feature-weight 1
names=(output features)
if [ "$more" = "--more" ]; then
    train features-more 400 --data "$photos/train" --data "$photos/train-more" \
        --side-weight 1 --feature-weight 1
    # The longer run continues the one above from its step-400 resume point.
    if [ ! -d "$out/features-more-1200.safetensors.state" ]; then
        cp -r "$out/features-more.safetensors.state" "$out/features-more-1200.safetensors.state"
    fi
    train features-more-1200 1200 --data "$photos/train" --data "$photos/train-more" \
        --side-weight 1 --feature-weight 1
    names+=(features-more features-more-1200)
fi

echo "== evaluation ($(uptime))"
candidates=()
for name in "${names[@]}"; do
    candidates+=(--candidate "$name=$out/$name.safetensors")
done
megasr train pgft-eval --extractor hed --train-data "$photos/train" \
    --val-data "$photos/held-out" --seed 0 "${candidates[@]}" --report "$out/table.json"
echo "== done ($(uptime))"
