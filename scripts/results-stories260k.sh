#!/usr/bin/env bash
# Reproduces the stories260K tables of docs/RESULTS.md: every recipe x seed, calibrated and evaluated
# on WikiText-2 (valid -> test) and on TinyStories (train head -> valid head), seqlen 512.
# Usage: scripts/results-stories260k.sh [OUT_DIR] ; env: SEEDS="0 1 2", WINDOWS=200 (0 = all),
# NSAMPLES=64, RECIPES="fp rtn-w4a4kv4 quarot resq-rtn resq resq-learned", DOMAINS="wikitext2 tinystories".
# Finished runs (their JSON exists in OUT_DIR) are skipped, so the script can be resumed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-results/stories260k}"
SHARED="${RESQ_SHARED_DIR:-../shared}"
RESQ="${RESQ:-build/resq}"
MODEL="$SHARED/models/stories260K"
SEEDS="${SEEDS:-0 1 2}"
WINDOWS="${WINDOWS:-200}"
NSAMPLES="${NSAMPLES:-64}"
RECIPES="${RECIPES:-fp rtn-w4a4kv4 quarot resq-rtn resq resq-learned}"
DOMAINS="${DOMAINS:-wikitext2 tinystories}"
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$OUT"
max_windows=()
[ "$WINDOWS" != "0" ] && max_windows=(--max-windows "$WINDOWS")

run() {  # run DOMAIN CALIB_FLAG CALIB_FILE EVAL_FLAG EVAL_FILE
  local domain="$1" calib_flag="$2" calib="$3" eval_flag="$4" data="$5"
  for recipe in $RECIPES; do
    for seed in $SEEDS; do
      local tag="$domain-$recipe-s$seed" qdir
      qdir="$(mktemp -d)/q"
      [ -f "$OUT/$tag.eval.json" ] && continue
      "$RESQ" quantize --model "$MODEL" --out "$qdir" --config "configs/$recipe.json" "$calib_flag" "$calib" \
        --nsamples "$NSAMPLES" --seqlen 512 --seed "$seed" --json "$OUT/$tag.quant.json" --log-level warn
      "$RESQ" eval --model "$qdir" --mode "${MODE:-simulate}" "$eval_flag" "$data" --seqlen 512 "${max_windows[@]}" \
        --json "$OUT/$tag.eval.json" --log-level warn | grep '^ppl'
      rm -rf "$(dirname "$qdir")"
      echo "$tag done" >&2
    done
  done
}

for domain in $DOMAINS; do
  case "$domain" in
    wikitext2) run wikitext2 --calib-wikitext2 "$SHARED/data/wikitext-2-raw/wiki.valid.raw" \
                 --wikitext2 "$SHARED/data/wikitext-2-raw/wiki.test.raw" ;;
    tinystories) run tinystories --calib "$SHARED/data/tinystories/train_head.txt" \
                   --data "$SHARED/data/tinystories/valid_head.txt" ;;
    *) echo "unknown domain $domain" >&2; exit 2 ;;
  esac
done

# Table: mean ppl over seeds (± std over seeds), mean per-window stderr.
python3 - "$OUT" "$RECIPES" "$SEEDS" <<'PY'
import json, sys, statistics as st, os
out, recipes, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
for domain in ["wikitext2", "tinystories"]:
    if not any(f.startswith(domain + "-") for f in os.listdir(out)): continue
    print(f"\n### {domain}\n")
    print("| recipe | bits W/A/KV | ppl (mean over seeds) | std over seeds | mean ± stderr per run | seeds |")
    print("| --- | --- | --- | --- | --- | --- |")
    fp = None
    rows = []
    for r in recipes:
        ppls, errs, bits = [], [], None
        for s in seeds:
            p = os.path.join(out, f"{domain}-{r}-s{s}.eval.json")
            q = os.path.join(out, f"{domain}-{r}-s{s}.quant.json")
            if not os.path.exists(p): continue
            e = json.load(open(p)); ppls.append(e["ppl"]); errs.append(e["ppl_stderr"])
            b = json.load(open(q))["bits"]; bits = f'{b["weights"]:g}/{b["activations"]:g}/{b["kv"]:g}'
        if not ppls: continue
        m = st.mean(ppls); sd = st.stdev(ppls) if len(ppls) > 1 else 0.0
        rows.append((r, m))
        print(f"| {r} | {bits} | {m:.2f} | {sd:.2f} | {st.mean(errs):.2f} | {len(ppls)} |")
    d = dict(rows)
    if "fp" in d and "resq" in d and "quarot" in d:
        print(f"\ngap ratio (resq - fp) / (quarot - fp) = {(d['resq']-d['fp'])/(d['quarot']-d['fp']):.3f}")
    if "fp" in d and "resq-rtn" in d and "quarot" in d:
        print(f"gap ratio (resq-rtn - fp) / (quarot - fp) = {(d['resq-rtn']-d['fp'])/(d['quarot']-d['fp']):.3f}")
PY
