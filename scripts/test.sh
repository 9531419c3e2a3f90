#!/usr/bin/env bash
# Quick start, step 2: build (if needed) and run the whole test suite through ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
export OMP_WAIT_POLICY=PASSIVE
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure "$@"
