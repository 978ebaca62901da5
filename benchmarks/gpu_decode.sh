#!/usr/bin/env bash
# The decode checks that need a GPU, as one script for a short device lease (about 10 minutes on an
# H200): new tokens per second of each decode path at the paper's T5 shapes, then one optimizer step of
# every method at the paper's shapes, eager (dynamic cache) against the default (static cache, compiled).
# Prints everything and copies the outputs to $OUT when that is set.
#
#   bash benchmarks/gpu_decode.sh
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
OUTDIR="${OUT:-$(mktemp -d)}"
cd "$REPO"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
timeout 240 "$PYTHON" benchmarks/decode.py --paper --device cuda --models base xl --rounds 3 2>&1 | tee "$OUTDIR/decode_paper.txt"
for mode in "dynamic false" "auto auto"; do
    set -- $mode
    timeout 200 "$PYTHON" benchmarks/paper_shape.py --students base --steps 2 --cache "$1" --compile "$2" \
        --out "$OUTDIR/paper_shape_$1.json" 2>&1 | tee "$OUTDIR/paper_shape_$1.txt"
done
