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

# shellcheck source=tests/cli/lib.sh
source "$(dirname "$0")/lib.sh"

check "version" 0 "^resq [0-9]+\.[0-9]+\.[0-9]+ \((Release|Debug|RelWithDebInfo|MinSizeRel) build\)" -- "$RESQ" --version
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
check "quantize prints where it computed" 0 "^compute: cpu, forward products fp32" -- cat "$WORK/qr.log"
check "quantize --device bad" 2 "--device: expected cpu, cuda, cuda:N or auto, got 'tpu'" -- "$RESQ" quantize --model "$MODEL" \
  --out "$WORK/qdev" --config resq-rtn --calib "$SHARED/data/tinystories/train_head.txt" --nsamples 4 --seqlen 128 --device tpu
if "$RESQ" --version | grep -q "CUDA: not available"; then
  check "quantize --device cuda without CUDA" 1 "--device cuda: this libtorch has no CUDA .* or use --device cpu" -- \
    "$RESQ" quantize --model "$MODEL" --out "$WORK/qdev" --config resq-rtn --calib "$SHARED/data/tinystories/train_head.txt" \
    --nsamples 4 --seqlen 128 --device cuda
fi
[ ! -e "$WORK/qdev" ] && passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL: a refused --device left $WORK/qdev"; }
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

# ---- reliability (docs/RELIABILITY.md) ------------------------------------------------------------
DATA="$SHARED/data/tinystories/valid_head.txt"
RTN="$(dirname "$0")/../../configs/resq-rtn.json"
# Exit codes: every usage error is 2, CLI11's own parse and validation errors included; help is 0.
check "unknown flag exits 2" 2 "--bogus" -- "$RESQ" eval --model "$MODEL" --data "$DATA" --bogus
check "missing option value exits 2" 2 "seqlen" -- "$RESQ" eval --model "$MODEL" --data "$DATA" --seqlen
check "non-numeric value exits 2" 2 "abc" -- "$RESQ" eval --model "$MODEL" --data "$DATA" --seqlen abc
check "missing required option exits 2" 2 "--config is required" -- "$RESQ" quantize --model "$MODEL" --out "$WORK/x"
check "unknown subcommand exits 2" 2 "subcommand" -- "$RESQ" frobnicate
check "no subcommand exits 2" 2 "subcommand" -- "$RESQ"
check "help exits 0" 0 "Usage" -- "$RESQ" eval --help
# Text inputs: regular files only, refused at once naming the flag (no hang on /dev/zero or a FIFO).
check "eval --data /dev/zero" 1 "/dev/zero: cannot read --data text file: not a regular file \(a character device\)" -- \
  timeout 60 "$RESQ" eval --model "$MODEL" --data /dev/zero --seqlen 16
check "eval --data a directory" 1 "cannot read --data text file: Is a directory" -- "$RESQ" eval --model "$MODEL" --data "$WORK" --seqlen 16
mkfifo "$WORK/fifo"
check "eval --data a FIFO" 1 "fifo: cannot read --data text file: not a regular file \(a FIFO\)" -- \
  timeout 60 "$RESQ" eval --model "$MODEL" --data "$WORK/fifo" --seqlen 16
check "tokenize --file /dev/zero" 1 "cannot read --file text file: not a regular file" -- timeout 60 "$RESQ" tokenize --model "$MODEL" --file /dev/zero
check "quantize --calib a directory" 1 "cannot read --calib text file: Is a directory" -- "$RESQ" quantize --model "$MODEL" \
  --out "$WORK/qd" --config "$RTN" --calib "$WORK" --nsamples 4 --seqlen 128
# Output paths are checked before the work starts.
check "quantize unwritable --json" 2 "--json: cannot write '$WORK/no/such/dir/r.json': No such file or directory" -- \
  "$RESQ" quantize --model "$MODEL" --out "$WORK/qj" --config "$RTN" --calib "$DATA" --nsamples 4 --seqlen 128 --json "$WORK/no/such/dir/r.json"
if grep -q "calibration\|layer" "$WORK/err" || [ -e "$WORK/qj" ]; then failed=$((failed + 1)); echo "FAIL: --json was checked after the work"; else passed=$((passed + 1)); fi
check "eval --json a directory" 2 "--json: cannot write '$WORK': it is a directory" -- "$RESQ" eval --model "$MODEL" --data "$DATA" --seqlen 16 --json "$WORK"
check "quantize --out below a file" 2 "--out: cannot create '/dev/null/ck': /dev/null is not a directory" -- \
  "$RESQ" quantize --model "$MODEL" --out /dev/null/ck --config "$RTN" --calib "$DATA" --nsamples 4 --seqlen 128
# Integrity: inspect verifies every checksum; a flipped byte in a packed weight (still a valid
# 8-bit code) passes the structural checks but not the checksum: inspect and eval --verify refuse it.
check "inspect verifies checksums" 0 "integrity: [0-9]+ tensors match their xxh64 checksums" -- "$RESQ" inspect "$WORK/qr"
cp -r "$WORK/qr" "$WORK/qr-flip"
python3 - "$WORK/qr-flip/model.safetensors" model.layers.2.self_attn.q_proj.qweight8 <<'PY'
import json, struct, sys
path, name = sys.argv[1], sys.argv[2]
b = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", b[:8])[0]
begin = json.loads(b[8:8 + n])[name]["data_offsets"][0]
b[8 + n + begin + 5] ^= 1
open(path, "wb").write(b)
PY
check "inspect a flipped byte" 1 "tensor 'model.layers.2.self_attn.q_proj.qweight8' is corrupt" -- "$RESQ" inspect "$WORK/qr-flip"
check "eval --verify a flipped byte" 1 "tensor 'model.layers.2.self_attn.q_proj.qweight8' is corrupt" -- \
  "$RESQ" eval --model "$WORK/qr-flip" --data "$DATA" --seqlen 64 --max-windows 1 --verify
check "eval --verify" 0 "ppl: " -- "$RESQ" eval --model "$WORK/qr" --data "$DATA" --seqlen 64 --max-windows 1 --verify
check "eval --verify on a HF dir" 2 "--verify: .* is not a resq packed checkpoint" -- "$RESQ" eval --model "$MODEL" --data "$DATA" --seqlen 64 --verify
# NaN weights: quantize refuses them naming the tensor (RTN too); eval stops at a non-finite loss.
cp -r "$WORK/q" "$WORK/nan"  # the tiny-qwen2 model made above
python3 - "$WORK/nan/model.safetensors" model.layers.0.mlp.up_proj.weight <<'PY'
import json, struct, sys
path, name = sys.argv[1], sys.argv[2]
b = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", b[:8])[0]
e = json.loads(b[8:8 + n])[name]
pos = 8 + n + e["data_offsets"][0]
nan = {"F32": struct.pack("<I", 0x7FC00000), "BF16": struct.pack("<H", 0x7FC0), "F16": struct.pack("<H", 0x7E00)}[e["dtype"]]
b[pos + 5 * len(nan):pos + 6 * len(nan)] = nan
open(path, "wb").write(b)
PY
check "quantize refuses NaN weights" 1 "tensor 'model.layers.0.mlp.up_proj.weight' element 5 is NaN: refusing to quantize" -- \
  "$RESQ" quantize --model "$WORK/nan" --out "$WORK/qnan" --config "$RTN" --calib "$DATA" --nsamples 4 --seqlen 64
[ ! -e "$WORK/qnan" ] && passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL: quantize of a NaN model left a directory"; }
check "eval a NaN model" 1 "non-finite loss" -- "$RESQ" eval --model "$WORK/nan" --data "$DATA" --seqlen 64 --max-windows 2
if grep -q "ppl:" "$WORK/out"; then failed=$((failed + 1)); echo "FAIL: eval printed a ppl for a NaN loss"; else passed=$((passed + 1)); fi
# Interruption: SIGINT while the checkpoint is being written exits 130 and leaves neither the output
# nor its temporary directory; a temporary directory of a dead process is removed by the next run.
set -m  # job control: the background job receives SIGINT like a foreground one
"$RESQ" quantize --model "$MODEL" --out "$WORK/qint" --config "$(dirname "$0")/../../configs/resq.json" --calib "$DATA" \
  --nsamples 64 --seqlen 256 --threads 1 >"$WORK/int.out" 2>"$WORK/int.err" &
qpid=$!
set +m
for _ in $(seq 1 1200); do [ -d "$WORK/qint.tmp.$qpid" ] && break; sleep 0.02; done
kill -INT "$qpid"
wait "$qpid"; rc=$?
if [ "$rc" = 130 ] && grep -q "interrupted by SIGINT" "$WORK/int.err" && [ ! -e "$WORK/qint" ] && [ -z "$(ls -d "$WORK"/qint.tmp.* 2>/dev/null)" ]; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); echo "FAIL: SIGINT during quantize (rc=$rc)"; tail -3 "$WORK/int.err"; ls -d "$WORK"/qint* 2>/dev/null
fi
mkdir -p "$WORK/qs.tmp.999999999/sub" && echo spill > "$WORK/qs.tmp.999999999/sub/spill-0-1"  # pid above pid_max: dead
check "stale temporary removed" 0 "wrote" -- "$RESQ" quantize --model "$MODEL" --out "$WORK/qs" --config "$RTN" --calib "$DATA" --nsamples 4 --seqlen 64
cp "$WORK/err" "$WORK/qs.err"
check "stale temporary named" 0 "removed .*qs.tmp.999999999, left behind by an interrupted run" -- cat "$WORK/qs.err"
[ ! -e "$WORK/qs.tmp.999999999" ] && passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL: stale temporary directory kept"; }

echo "cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
