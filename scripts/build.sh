#!/usr/bin/env bash
# Configures and builds resq into build/ (Release by default; BUILD_TYPE=Debug to change).
# Extra CMake options may be passed as arguments, e.g. scripts/build.sh -DRESQ_SANITIZE=ON.
# CUDA: the kernels are built (for 80;86;89;90a) whenever nvcc is found (on PATH or at
# /usr/local/cuda/bin/nvcc), so CI compiles every kernel even without a GPU; RESQ_WITH_CUDA=0 in
# the environment turns that off, RESQ_WITH_CUDA=1 requires it.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
JOBS="${JOBS:-$(nproc)}"
CUDA_ARGS=()
case "${RESQ_WITH_CUDA:-auto}" in
  0|OFF|off|no|NO|false|FALSE)
    CUDA_ARGS=(-DRESQ_WITH_CUDA=OFF) ;;
  *)
    NVCC="$(command -v nvcc || true)"
    if [[ -z "${NVCC}" && -x /usr/local/cuda/bin/nvcc ]]; then NVCC=/usr/local/cuda/bin/nvcc; fi
    if [[ -n "${NVCC}" ]]; then
      CUDA_ARGS=(-DRESQ_WITH_CUDA=ON "-DCMAKE_CUDA_COMPILER=${NVCC}")
    elif [[ "${RESQ_WITH_CUDA:-auto}" != "auto" ]]; then
      echo "build.sh: RESQ_WITH_CUDA=${RESQ_WITH_CUDA} but nvcc was not found" >&2
      exit 1
    else
      CUDA_ARGS=(-DRESQ_WITH_CUDA=OFF)
    fi ;;
esac
# The sm_90a wgmma GEMM needs CUTLASS headers (.cutlass/, git-ignored): fetched once when CUDA is
# on; when the download is unavailable (exit 3) that path is left out of the build, not an error.
if [[ "${CUDA_ARGS[0]}" == "-DRESQ_WITH_CUDA=ON" && ! -f .cutlass/usr/include/cutlass/version.h ]]; then
  rc=0
  scripts/gpu/fetch-cutlass.sh || rc=$?
  if [[ ${rc} -eq 3 ]]; then
    echo "build.sh: CUTLASS headers could not be fetched (network): the sm_90a wgmma GEMM is left out" >&2
  elif [[ ${rc} -ne 0 ]]; then
    exit "${rc}"
  fi
fi
cmake -S . -B "${BUILD_DIR}" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" "${CUDA_ARGS[@]}" "$@"
cmake --build "${BUILD_DIR}" -j "${JOBS}"
