#!/usr/bin/env bash
# Builds the torch-free readers (safetensors, packed checkpoint) and their malformed-input tests with
# AddressSanitizer + UBSan into build-asan/ and runs them: truncated files, flipped bytes, wrong
# versions and shape mismatches must give clear errors, never memory errors. Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${ASAN_BUILD_DIR:-build-asan}"
cmake -S . -B "${BUILD_DIR}" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DRESQ_SANITIZE=ON -DRESQ_WITH_CUDA=OFF >/dev/null
cmake --build "${BUILD_DIR}" -j "${JOBS:-$(nproc)}" --target test_format test_io test_report
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
"${BUILD_DIR}/tests/test_format"
"${BUILD_DIR}/tests/test_io"
"${BUILD_DIR}/tests/test_report"  # the HTML report reads quantize/eval JSON
echo "asan: test_format, test_io and test_report passed under AddressSanitizer + UBSan"
