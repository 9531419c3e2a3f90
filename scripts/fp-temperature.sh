#!/usr/bin/env bash
# The floating-point model's perplexity with its logits divided by a temperature T: how calibrated
# the model is on a text (docs/RESULTS.md, "Why WikiText-2 ppl does not follow"). T > 1 lowering the
# ppl means the model is overconfident there, so any noise that flattens its logits (quantization
# included) lowers the ppl too, whatever it does to the model's fidelity.
# Usage: scripts/fp-temperature.sh MODEL_DIR "EVAL FLAGS" [T ...]   (default T: 0.9 1.0 1.1 1.2 1.4 1.6)
#   e.g. scripts/fp-temperature.sh ../shared/models/stories260K "--wikitext2 ../shared/data/wikitext-2-raw/wiki.test.raw"
# Each T copies MODEL_DIR to a temporary directory with model.norm.weight divided by T (logits = lm_head ·
# (RMSNorm(h) ∘ w): exactly logits / T) and runs `resq eval` (seqlen 512, 200 windows) on it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  sed -n '6,7p' "$0" >&2
  exit 2
fi
MODEL="$1"
read -r -a EVAL_FLAGS <<< "$2"
shift 2
TEMPS=("$@")
[ ${#TEMPS[@]} -eq 0 ] && TEMPS=(0.9 1.0 1.1 1.2 1.4 1.6)
RESQ="${RESQ:-build/resq}"
[ -f "$MODEL/model.safetensors" ] || { echo "fp-temperature: $MODEL/model.safetensors: not found (a single-file HF model is expected)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT INT TERM
for t in "${TEMPS[@]}"; do
  out="$work/T$t"
  cp -r "$MODEL" "$out"
  python3 - "$out/model.safetensors" "$t" <<'EOF'
import json, struct, sys
path, t = sys.argv[1], float(sys.argv[2])
if not t > 0:
    sys.exit(f"fp-temperature: temperature {t} must be > 0")
data = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
if "model.norm.weight" not in header:
    sys.exit(f"fp-temperature: {path}: no tensor 'model.norm.weight'")
entry = header["model.norm.weight"]
if entry["dtype"] != "F32":
    sys.exit(f"fp-temperature: {path}: model.norm.weight is {entry['dtype']}, this script handles F32")
begin, end = (8 + n + o for o in entry["data_offsets"])
for i in range(begin, end, 4):
    data[i:i + 4] = struct.pack("<f", struct.unpack("<f", data[i:i + 4])[0] / t)
open(path, "wb").write(bytes(data))
EOF
  printf 'T=%s ' "$t"
  "$RESQ" eval --model "$out" "${EVAL_FLAGS[@]}" --seqlen 512 --max-windows 200 --log-level warn | grep '^ppl'
  rm -rf "$out"
done
