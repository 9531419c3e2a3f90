#!/usr/bin/env bash
# End-to-end tests of the resq CLI as a user runs it: exit codes, error messages, stdout/JSON results.
# Usage: cli_test.sh PATH/TO/resq   (RESQ_SHARED_DIR points at the shared data)
set -u
RESQ="$1"
SHARED="${RESQ_SHARED_DIR:-$(dirname "$0")/../../../shared}"
MODEL="$SHARED/models/stories260K"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0

check() {  # check NAME EXPECTED_RC PATTERN -- command...
  local name="$1" want_rc="$2" pattern="$3"
  shift 4
  "$@" >"$WORK/out" 2>"$WORK/err"
  local rc=$?
  if [ "$want_rc" = "nonzero" ]; then
    [ "$rc" -ne 0 ] && rc_ok=1 || rc_ok=0
  else
    [ "$rc" -eq "$want_rc" ] && rc_ok=1 || rc_ok=0
  fi
  if [ "$rc_ok" = 1 ] && grep -qE -- "$pattern" "$WORK/out" "$WORK/err"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL: $name (rc=$rc, want $want_rc, pattern '$pattern')"
    echo "--- stdout"; head -20 "$WORK/out"; echo "--- stderr"; head -20 "$WORK/err"
  fi
}

json_get() {  # json_get FILE EXPR  (python3 expression over `j`)
  python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"
}

check "version" 0 "^resq [0-9]+\.[0-9]+\.[0-9]+ \((Release|Debug|RelWithDebInfo|MinSizeRel) build\)" -- "$RESQ" --version
check "no subcommand" nonzero "subcommand" -- "$RESQ"
check "eval needs --model" nonzero "model" -- "$RESQ" eval --data "$SHARED/data/tinystories/valid_head.txt"
check "eval missing model dir" 1 "nowhere: not a directory" -- "$RESQ" eval --model "$WORK/nowhere" --data "$SHARED/data/tinystories/valid_head.txt" --seqlen 16
check "eval both data flags" 2 "exactly one of --data" -- "$RESQ" eval --model "$MODEL" --data a --wikitext2 b
check "eval bad seqlen" 2 "seqlen must be >= 2" -- "$RESQ" eval --model "$MODEL" --data "$SHARED/data/tinystories/valid_head.txt" --seqlen 1
check "eval missing data file" 1 "nofile.txt: cannot open" -- "$RESQ" eval --model "$MODEL" --data "$WORK/nofile.txt" --seqlen 16
printf 'tiny text' > "$WORK/short.txt"
check "eval text shorter than a window" 2 "fewer than one window" -- "$RESQ" eval --model "$MODEL" --data "$WORK/short.txt" --seqlen 512
check "eval bad dtype" 2 "dtype" -- "$RESQ" eval --model "$MODEL" --data "$WORK/short.txt" --seqlen 4 --dtype int8
check "eval bad device" 2 "device" -- "$RESQ" eval --model "$MODEL" --data "$WORK/short.txt" --seqlen 4 --device tpu

# Real evaluation: the in-domain fixture's first windows, through --json.
check "eval tinystories" 0 "ppl: [0-9.]+ ± [0-9.]+" -- "$RESQ" eval --model "$MODEL" \
  --data "$SHARED/data/tinystories/valid_head.txt" --seqlen 512 --max-windows 6 --json "$WORK/eval.json"
if python3 - "$WORK/eval.json" "$SHARED/fixtures/stories260K.tinystories-valid.json" <<'PY'
import json, sys
got = json.load(open(sys.argv[1])); ref = json.load(open(sys.argv[2]))
assert got["num_windows"] == 6 and got["seqlen"] == 512 and got["num_tokens"] == ref["num_tokens"], got
for a, b in zip(got["window_nll"], ref["window_nll"][:6]):
    assert abs(a - b) <= 1e-5 * abs(b), (a, b)
for key in ["ppl", "nll", "nll_stderr", "num_windows", "num_tokens", "seqlen", "seconds", "tokens_per_second", "model", "data", "window_nll"]:
    assert key in got, key
PY
then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: eval JSON vs fixture"; fi

# Tokenize: ids, JSON, BOS, decode round trip, file read verbatim.
check "tokenize text" 0 "^[0-9]+( [0-9]+)*$" -- "$RESQ" tokenize --model "$MODEL" --text "Once upon a time"
check "tokenize bos" 0 "^1 " -- "$RESQ" tokenize --model "$MODEL" --text "Once upon a time" --bos
ids="$("$RESQ" tokenize --model "$MODEL" --text "Once upon a time, a cat sat." 2>/dev/null)"
check "tokenize decode round trip" 0 "^Once upon a time, a cat sat\.$" -- "$RESQ" tokenize --model "$MODEL" --decode "$ids"
printf 'Lily saw a dog.\n' > "$WORK/t.txt"
check "tokenize file json" 0 '^\{"ids":\[[0-9,]+\]\}$' -- "$RESQ" tokenize --model "$MODEL" --file "$WORK/t.txt" --json
check "tokenize bad id" 2 "outside the vocabulary" -- "$RESQ" tokenize --model "$MODEL" --decode "3 99999"
check "tokenize non-integer id" 2 "not an integer" -- "$RESQ" tokenize --model "$MODEL" --decode "3 x"
check "tokenize two sources" 2 "exactly one of" -- "$RESQ" tokenize --model "$MODEL" --text a --file "$WORK/t.txt"

# make-model + eval on the made model; errors.
check "make-model qwen2" 0 "wrote .*tiny-qwen2" -- "$RESQ" make-model --shape tiny-qwen2 --out "$WORK/q" --seed 3
check "make-model existing dir" 2 "already exists" -- "$RESQ" make-model --shape tiny-qwen2 --out "$WORK/q"
check "make-model unknown shape" 2 "unknown shape 'gpt5'" -- "$RESQ" make-model --shape gpt5 --out "$WORK/g"
[ ! -e "$WORK/g" ] && passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL: failed make-model left a directory"; }
check "eval made model" 0 "ppl: " -- "$RESQ" eval --model "$WORK/q" --data "$SHARED/data/tinystories/valid_head.txt" --seqlen 64 --max-windows 3

# Byte-level BPE end to end: a Llama-3-shaped model with the real Llama-3 tokenizer.
check "make-model llama3 tokenizer" 0 "wrote" -- "$RESQ" make-model --shape tiny-llama3 --tokenizer "$SHARED/tokenizers/llama3" --out "$WORK/l3"
check "eval llama3 tokenizer" 0 "protocol: 1 BOS, seqlen 128, 2 non-overlapping windows.*289077 tokens in text" -- \
  "$RESQ" eval --model "$WORK/l3" --wikitext2 "$SHARED/data/wikitext-2-raw/wiki.test.raw" --seqlen 128 --max-windows 2
check "tokenize llama3 dir" 0 '^128000 9906 1917$' -- "$RESQ" tokenize --model "$SHARED/tokenizers/llama3" --text "Hello world" --bos

# quantize + eval of a quantized directory; errors.
check "quantize resq-rtn" 0 "wrote .*recipe resq-rtn: W4.50 A4.50 KV4.50" -- "$RESQ" quantize --model "$MODEL" --out "$WORK/qr" \
  --config "$(dirname "$0")/../../configs/resq-rtn.json" --calib "$SHARED/data/tinystories/train_head.txt" --nsamples 4 --seqlen 128
cp "$WORK/out" "$WORK/qr.log"
check "quantize prints the bit budget" 0 "bits/weight on disk .* budget" -- cat "$WORK/qr.log"
check "eval packed (default)" 0 "resq packed checkpoint, integer kernels" -- "$RESQ" eval --model "$WORK/qr" --data "$SHARED/data/tinystories/valid_head.txt" --seqlen 128 --max-windows 2
check "eval --mode simulate" 0 "resq packed checkpoint, simulated arithmetic" -- "$RESQ" eval --model "$WORK/qr" --data "$SHARED/data/tinystories/valid_head.txt" --seqlen 128 --max-windows 2 --mode simulate
check "eval --mode bad" 2 "expected packed or simulate" -- "$RESQ" eval --model "$WORK/qr" --data "$SHARED/data/tinystories/valid_head.txt" --seqlen 128 --mode int
check "eval --mode on a HF dir" 2 "not a resq packed checkpoint" -- "$RESQ" eval --model "$MODEL" --data "$SHARED/data/tinystories/valid_head.txt" --seqlen 128 --mode packed
check "inspect" 0 "o_proj .* packed .* permuted" -- "$RESQ" inspect "$WORK/qr" --json "$WORK/inspect.json"
if python3 - "$WORK/inspect.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
assert j["format"] == "resq-packed" and j["format_version"] == 1, j
s = j["sizes"]
assert s["quantized_weights"] == 5 * (64*64*2 + 32*64*2 + 172*64*3), s
assert 4.0 < s["bits_per_quantized_weight"] < 6.0 and s["file_bytes"] > 0, s
assert j["sites"]["o_proj"]["high"] == {"rule": "per_head", "group": 8, "count": 1}, j["sites"]["o_proj"]
PY
then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: inspect JSON"; fi
check "inspect a HF dir" 1 "not a resq packed checkpoint" -- "$RESQ" inspect "$MODEL"
cp -r "$WORK/qr" "$WORK/qr-broken"
head -c 20000 "$WORK/qr/model.safetensors" > "$WORK/qr-broken/model.safetensors"
check "eval truncated packed checkpoint" 1 "qr-broken/model.safetensors" -- "$RESQ" eval --model "$WORK/qr-broken" --data "$SHARED/data/tinystories/valid_head.txt" --seqlen 64
check "quantize onto an existing dir" 2 "already exists" -- "$RESQ" quantize --model "$MODEL" --out "$WORK/qr" \
  --config "$(dirname "$0")/../../configs/resq-rtn.json" --calib "$SHARED/data/tinystories/train_head.txt" --nsamples 4 --seqlen 128
check "quantize a packed checkpoint" 2 "already a resq packed checkpoint" -- "$RESQ" quantize --model "$WORK/qr" --out "$WORK/qr2" \
  --config "$(dirname "$0")/../../configs/resq-rtn.json" --calib "$SHARED/data/tinystories/train_head.txt" --nsamples 4 --seqlen 128
check "quantize bad recipe" 1 "nope.json" -- "$RESQ" quantize --model "$MODEL" --out "$WORK/qx" --config "$WORK/nope.json" --calib "$WORK/t.txt"
check "quantize no calib" 2 "exactly one of --calib" -- "$RESQ" quantize --model "$MODEL" --out "$WORK/qx" --config "$(dirname "$0")/../../configs/resq.json"

# bench --cpu: rows for every backend, JSON written; GPU bench not available yet.
check "bench cpu" 0 "llama-3.2-1b  down .*resq-w4a4w8a8" -- "$RESQ" bench --cpu --models llama-3.2-1b --m 1 --repeats 1 --warmup 0 --no-bf16 --json "$WORK/bench.json"
if python3 - "$WORK/bench.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
assert {"device", "threads", "rows"} <= set(j), j.keys()
rows = j["rows"]
assert len(rows) == 8, len(rows)  # 4 layers x (torch-fp32, resq)
for r in rows:
    assert {"backend", "M", "N", "K", "us", "gops", "speedup"} <= set(r) and r["us"] > 0, r
    if r["backend"] == "torch-fp32": assert abs(r["speedup"] - 1.0) < 1e-12
PY
then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: bench JSON"; fi
check "bench without --cpu" 2 "use --cpu" -- "$RESQ" bench
check "bench --e2e without a GPU" 2 "use --cpu" -- "$RESQ" bench --e2e --e2e-layers 2
check "bench --layer without a GPU" 2 "use --cpu" -- "$RESQ" bench --layer
check "bench unknown model" 2 "unknown model 'gpt5'" -- "$RESQ" bench --cpu --models gpt5

# A truncated checkpoint is rejected with the file named, exit 1.
mkdir -p "$WORK/broken"
cp "$MODEL/config.json" "$MODEL/tokenizer.model" "$WORK/broken/"
head -c 100000 "$MODEL/model.safetensors" > "$WORK/broken/model.safetensors"
check "eval truncated weights" 1 "model.safetensors" -- "$RESQ" eval --model "$WORK/broken" --data "$SHARED/data/tinystories/valid_head.txt" --seqlen 64

# generate: incremental decoding with the packed KV cache on the checkpoint made above; errors.
check "generate packed" 0 "kv cache: [0-9]+ bytes packed 4/8-bit" -- "$RESQ" generate --model "$WORK/qr" --prompt "Once upon a time" \
  --max-new-tokens 16 --json "$WORK/gen.json"
if python3 - "$WORK/gen.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
assert j["mode"] == "packed" and j["bos"] is True and j["prompt_ids"][0] == 1, j
n = len(j["generated_ids"])
assert 1 <= n <= 16 and (n == 16 or j["stopped_at_eos"]), j
assert j["text"].startswith("Once upon a time") and len(j["text"]) > len("Once upon a time"), j["text"]
kv = j["kv_cache"]
assert kv["packed"] and 0 < kv["bytes"] < kv["fp32_bytes"] and kv["positions"] == len(j["prompt_ids"]) + n - 1, kv
assert j["decode_tokens"] == n - 1 and j["prefill_tokens_per_second"] > 0, j
PY
then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: generate JSON"; fi
gen_text() { "$RESQ" generate --model "$WORK/qr" --prompt "Once upon a time" --max-new-tokens 12 2>/dev/null | sed '/^prefill: /,$d'; }
gen_a="$(gen_text)"; gen_b="$(gen_text)"
if [ -n "$gen_a" ] && [ "$gen_a" = "$gen_b" ]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: generate greedy is not deterministic: '$gen_a' vs '$gen_b'"; fi
check "generate simulate" 0 "kv cache: [0-9]+ bytes float" -- "$RESQ" generate --model "$WORK/qr" --mode simulate --prompt "Once upon a time" --max-new-tokens 4
check "generate fp sampled" 0 "decode: [0-9]+ tokens in .* tokens/s" -- "$RESQ" generate --model "$MODEL" --prompt "Lily saw a dog" --max-new-tokens 8 --temperature 0.8 --top-k 20 --seed 3
check "generate bad mode" 2 "expected packed or simulate" -- "$RESQ" generate --model "$WORK/qr" --prompt "Hi" --mode int
check "generate empty prompt" 2 "--prompt is empty" -- "$RESQ" generate --model "$MODEL" --prompt ""
check "generate negative temperature" 2 "--temperature must be" -- "$RESQ" generate --model "$MODEL" --prompt "Hi" --temperature -1
check "generate beyond max positions" 2 "max_position_embeddings is 512" -- "$RESQ" generate --model "$MODEL" --prompt "Hi" --max-new-tokens 600

check "demo" 0 "demo finished" -- "$RESQ" demo

echo "cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
