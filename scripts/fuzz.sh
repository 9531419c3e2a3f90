#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz (clang, coverage + ASan + UBSan, into build-fuzz/) and
# runs each for SECONDS from seeds (tests/fuzz/make_seeds.cpp, plus real files of ../shared when it
# exists) with the dictionaries of tests/fuzz/dict. Exits non-zero on any finding (crash, untyped
# exception, ASan/UBSan report, leak, timeout, out-of-memory), naming the harness and the
# reproducer. Prints the executions of every harness. See docs/FUZZING.md.
#
#   scripts/fuzz.sh SECONDS [HARNESS...]
# Environment: FUZZ_BUILD_DIR (build-fuzz), FUZZ_WORK_DIR (FUZZ_BUILD_DIR/work: corpora kept between
# runs, crashes), FUZZ_JOBS (build jobs, nproc), FUZZ_MAX_LEN (bytes per input, 65536),
# FUZZ_RSS_MB (2048), FUZZ_NICE (0), FUZZ_RUNS (stop each harness after this many executions, SECONDS
# still the cap; the long run of docs/FUZZING.md), RESQ_SHARED_DIR (../shared).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: scripts/fuzz.sh SECONDS [HARNESS...]   (harnesses: tests/fuzz/fuzz_*.cpp)" >&2
  exit 2
fi
SECONDS_EACH="$1"
shift
ALL_HARNESSES=(fuzz_model_config fuzz_recipe fuzz_safetensors fuzz_safetensors_dir fuzz_checkpoint_meta
               fuzz_checkpoint fuzz_tokenizer_json fuzz_sentencepiece)
HARNESSES=("${@:-${ALL_HARNESSES[@]}}")
BUILD_DIR="${FUZZ_BUILD_DIR:-build-fuzz}"
WORK="${FUZZ_WORK_DIR:-${BUILD_DIR}/work}"
SHARED="${RESQ_SHARED_DIR:-../shared}"
NICE="${FUZZ_NICE:-0}"

CXX_CLANG="$(command -v clang++ || true)"
if [[ -z "${CXX_CLANG}" ]]; then
  echo "fuzz: clang++ not found (scripts/install-deps.sh installs clang and libclang-rt-14-dev)" >&2
  exit 1
fi

cmake -S . -B "${BUILD_DIR}" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER="${CXX_CLANG}" \
  -DRESQ_FUZZ=ON -DRESQ_BUILD_TESTS=OFF -DRESQ_WITH_CUDA=OFF >/dev/null
nice -n "${NICE}" cmake --build "${BUILD_DIR}" -j "${FUZZ_JOBS:-$(nproc)}" --target resq_fuzz

# Seeds: made fresh each run (cheap), real small files of ../shared added as they are.
SEEDS="${WORK}/seeds"
mkdir -p "${WORK}"
rm -rf "${SEEDS}"
if [[ -d "${SHARED}" ]]; then
  "${BUILD_DIR}/fuzz/fuzz_make_seeds" "${SEEDS}" "${SHARED}" 2>"${WORK}/make_seeds.log" ||
    { echo "fuzz: the seed maker failed:" >&2; cat "${WORK}/make_seeds.log" >&2; exit 1; }
  stories="${SHARED}/models/stories260K"
  if [[ -d "${stories}" ]]; then
    cp "${stories}/config.json" "${SEEDS}/fuzz_model_config/shared-stories260K.json"
    mark=$'\n%%resq-fuzz-file%%\n'
    { cat "${stories}/tokenizer.model"; printf '%s' "${mark}"; cat "${stories}/tokenizer_config.json"
      printf '%s' "${mark}"; cat "${stories}/config.json"; printf '%s' "${mark}"; printf 'Once upon a time, Lily saw a cat.'
    } >"${SEEDS}/fuzz_sentencepiece/shared-stories260K.txt"
  fi
else
  "${BUILD_DIR}/fuzz/fuzz_make_seeds" "${SEEDS}" 2>"${WORK}/make_seeds.log" ||
    { echo "fuzz: the seed maker failed:" >&2; cat "${WORK}/make_seeds.log" >&2; exit 1; }
fi
for recipe in configs/*.json; do cp "${recipe}" "${SEEDS}/fuzz_recipe/repo-$(basename "${recipe}")"; done

dict_of() {
  case "$1" in
    fuzz_model_config) echo "json config" ;;
    fuzz_recipe) echo "json recipe" ;;
    fuzz_safetensors | fuzz_safetensors_dir) echo "json safetensors" ;;
    fuzz_checkpoint_meta) echo "json config resq_config" ;;
    fuzz_checkpoint) echo "json config resq_config safetensors" ;;
    fuzz_tokenizer_json | fuzz_sentencepiece) echo "json tokenizer config" ;;
    *) echo "json" ;;
  esac
}

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:allocator_may_return_null=0${ASAN_OPTIONS:+:${ASAN_OPTIONS}}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:${UBSAN_OPTIONS}}"
failed=()
printf '%-22s %12s %10s %8s\n' harness executions exec/s result
summary=""
for h in "${HARNESSES[@]}"; do
  bin="${BUILD_DIR}/fuzz/${h}"
  [[ -x "${bin}" ]] || { echo "fuzz: no harness ${h}" >&2; exit 2; }
  corpus="${WORK}/corpus/${h}"
  crashes="${WORK}/crashes/${h}"
  mkdir -p "${corpus}" "${crashes}"
  dict="${WORK}/${h}.dict"
  : >"${dict}"
  for d in $(dict_of "${h}"); do cat "tests/fuzz/dict/${d}.dict" >>"${dict}"; done
  log="${WORK}/${h}.log"
  rc=0
  nice -n "${NICE}" "${bin}" -max_total_time="${SECONDS_EACH}" -timeout=10 -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
    -max_len="${FUZZ_MAX_LEN:-65536}" ${FUZZ_RUNS:+-runs="${FUZZ_RUNS}"} -dict="${dict}" -artifact_prefix="${crashes}/" -print_final_stats=1 \
    "${corpus}" "${SEEDS}/${h}" >"${log}" 2>&1 || rc=$?
  execs="$(awk '/stat::number_of_executed_units/{print $2}' "${log}" | tail -1)"
  rate="$(awk '/stat::average_exec_per_sec/{print $2}' "${log}" | tail -1)"
  if [[ ${rc} -ne 0 ]]; then
    result="FINDING"
    failed+=("${h}")
  else
    result="clean"
  fi
  line="$(printf '%-22s %12s %10s %8s' "${h}" "${execs:-?}" "${rate:-?}" "${result}")"
  echo "${line}"
  summary+="${line}"$'\n'
  if [[ ${rc} -ne 0 ]]; then
    echo "---- ${h}: exit ${rc}, log ${log}; reproducer(s) in ${crashes}/ (run: ${bin} FILE)" >&2
    grep -E "ERROR|SUMMARY|runtime error|untyped|invariant|Test unit written" "${log}" | head -20 >&2 || true
  fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: FINDINGS in ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ${#HARNESSES[@]} harnesses clean, ${SECONDS_EACH} s each"
