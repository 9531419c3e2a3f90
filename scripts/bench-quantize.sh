#!/usr/bin/env bash
# Speed/memory benchmark of `resq quantize` at real scale (the quantization issue's target:
# Llama-3.2-1B shape, 32 x 2048 calibration tokens, <= 30 min and peak RSS <= bf16 size + 2 GiB on
# the 2-core machine). Makes the random-init model once, then quantizes it and prints the report.
# Usage: scripts/bench-quantize.sh [SHAPE] [NSAMPLES] [SEQLEN] [RECIPE]
#        (defaults: llama-3.2-1b 32 2048 resq); WORK=/tmp/resq-bench-quantize keeps the model;
#        DEVICE=cpu|cuda|auto (default auto: the GPU where there is one, see docs/QUANTIZE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPE="${1:-llama-3.2-1b}"
NSAMPLES="${2:-32}"
SEQLEN="${3:-2048}"
RECIPE="${4:-resq}"
WORK="${WORK:-/tmp/resq-bench-quantize}"
RESQ="${RESQ_BIN:-build/resq}"  # e.g. RESQ_BIN=build-perf/resq for another build directory
SHARED="${RESQ_SHARED_DIR:-../shared}"
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$WORK"
if [ ! -d "$WORK/$SHAPE" ]; then
  "$RESQ" make-model --shape "$SHAPE" --out "$WORK/$SHAPE" --seed 0
fi
rm -rf "$WORK/$SHAPE-$RECIPE"
/usr/bin/time -v "$RESQ" quantize --model "$WORK/$SHAPE" --out "$WORK/$SHAPE-$RECIPE" \
  --config "configs/$RECIPE.json" --calib-wikitext2 "$SHARED/data/wikitext-2-raw/wiki.valid.raw" \
  --nsamples "$NSAMPLES" --seqlen "$SEQLEN" --device "${DEVICE:-auto}" --json "$WORK/$SHAPE-$RECIPE.report.json" 2> "$WORK/$SHAPE-$RECIPE.stderr"
grep -E "Elapsed|Maximum resident" "$WORK/$SHAPE-$RECIPE.stderr"
du -sb "$WORK/$SHAPE" | awk '{printf "model directory: %.2f GiB\n", $1 / 2^30}'
