#!/usr/bin/env bash
# Configures and builds resq into build/ (Release by default; BUILD_TYPE=Debug to change).
# Extra CMake options may be passed as arguments, e.g. scripts/build.sh -DRESQ_WITH_CUDA=ON.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
JOBS="${JOBS:-$(nproc)}"
cmake -S . -B "${BUILD_DIR}" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" "$@"
cmake --build "${BUILD_DIR}" -j "${JOBS}"
