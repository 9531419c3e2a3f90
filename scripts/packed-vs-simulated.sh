#!/usr/bin/env bash
# Packed integer runtime vs simulated arithmetic on the same checkpoints (docs/RESULTS.md, "Packed
# vs simulated"): quantizes stories260K with each recipe (WikiText-2 valid calibration, 64 x 512
# tokens, seed 0), then evaluates every checkpoint on WikiText-2 test (seqlen 512, WINDOWS windows)
# with `--mode packed` and `--mode simulate`, and prints the relative ppl difference.
# Usage: scripts/packed-vs-simulated.sh OUT_DIR   (env: RESQ, RECIPES, WINDOWS, SEED)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: scripts/packed-vs-simulated.sh OUT_DIR}"
RESQ="${RESQ:-build/resq}"
SHARED="${RESQ_SHARED_DIR:-../shared}"
RECIPES="${RECIPES:-resq quarot}"
WINDOWS="${WINDOWS:-200}"
SEED="${SEED:-0}"
mkdir -p "$OUT"
printf '| recipe | simulate ppl | packed ppl | relative difference | packed tokens/s | simulate tokens/s |\n| --- | ---: | ---: | ---: | ---: | ---: |\n' > "$OUT/table.md"
for recipe in $RECIPES; do
  q="$OUT/$recipe-s$SEED"
  [ -d "$q" ] || "$RESQ" quantize --model "$SHARED/models/stories260K" --out "$q" --config "configs/$recipe.json" \
    --calib-wikitext2 "$SHARED/data/wikitext-2-raw/wiki.valid.raw" --nsamples 64 --seqlen 512 --seed "$SEED" \
    --json "$OUT/$recipe.quant.json" --log-level warn
  for mode in simulate packed; do
    "$RESQ" eval --model "$q" --mode "$mode" --wikitext2 "$SHARED/data/wikitext-2-raw/wiki.test.raw" --seqlen 512 \
      --max-windows "$WINDOWS" --json "$OUT/$recipe.$mode.json" --log-level warn | grep -E '^(ppl|time)'
  done
  python3 - "$OUT/$recipe.simulate.json" "$OUT/$recipe.packed.json" "$recipe" >> "$OUT/table.md" <<'PY'
import json, sys
s, p = (json.load(open(f)) for f in sys.argv[1:3])
print(f"| {sys.argv[3]} | {s['ppl']:.4f} | {p['ppl']:.4f} | {abs(p['ppl'] - s['ppl']) / s['ppl'] * 100:.3f}% | "
      f"{p['tokens_per_second']:.0f} | {s['tokens_per_second']:.0f} |")
PY
done
cat "$OUT/table.md"
