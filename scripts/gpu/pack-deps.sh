#!/usr/bin/env bash
# Packs the Debian .debs that resq's build needs and a GPU machine (no network) may lack into one
# folder, for scripts/gpu/run.sh to unpack there with dpkg -x (never installed system-wide).
# Run it where apt can reach the Debian mirror: scripts/gpu/pack-deps.sh [OUT_DIR]
# (default: .gpu-debs in the repository, git-ignored, so it can travel with the working tree to
# the GPU machine: the device tool's `carry`). Downloads some 15 MB; nothing else.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:-${ROOT}/.gpu-debs}"
mkdir -p "${OUT}"
OUT="$(cd "${OUT}" && pwd)"

# Headers / static libraries / CMake and pkg-config files the build uses (cmake/Dependencies.cmake)
# and the shared libraries they link at run time. libtorch comes from the GPU machine's PyTorch;
# cmake (>= 3.25), g++ and the CUDA toolkit (nvcc, cudart, cublasLt) must be there already.
# LAPACK/BLAS are packed for machines that have none; run.sh uses the system's when it has them.
# No LAPACKE: resq calls LAPACK's Fortran routines itself (include/resq/linalg/lapack.h).
PACKAGES=(
  libeigen3-dev libcli11-dev nlohmann-json3-dev
  libspdlog-dev libspdlog1.10 libfmt-dev libfmt9
  libgtest-dev googletest
  libsentencepiece-dev libsentencepiece0
  libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3
  libutf8proc-dev libutf8proc2
  liblapack-dev liblapack3 libblas-dev libblas3 libgfortran5
  pkgconf pkgconf-bin libpkgconf3 ninja-build
)

cd "${OUT}"
missing=()
for p in "${PACKAGES[@]}"; do
  if ! apt-cache show "${p}" >/dev/null 2>&1; then missing+=("${p}"); fi
done
if ((${#missing[@]})); then
  echo "pack-deps: not known to apt here (run apt-get update?): ${missing[*]}" >&2
  exit 1
fi
apt-get download "${PACKAGES[@]}"
{
  echo "# resq GPU build dependencies, packed $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "${PRETTY_NAME}")"
  for f in ./*.deb; do dpkg-deb -f "${f}" Package Version | paste -sd' '; done
} > MANIFEST.txt
echo "pack-deps: $(ls ./*.deb | wc -l) packages, $(du -sh . | cut -f1) in ${OUT}"

# CUTLASS 3.x headers for the sm_90a wgmma GEMM (.cutlass, git-ignored, ~13 MB): carried with the
# working tree like .gpu-debs (the device tool's `carry`); CMake finds them there by default.
"${ROOT}/scripts/gpu/fetch-cutlass.sh" || echo "pack-deps: CUTLASS headers not fetched: the GPU build leaves the wgmma GEMM out" >&2

# The GPU tests read a few small files of ../shared (stories260K, the TinyStories heads and
# WikiText-2's validation and test texts for the quantize runs, ~7 MB), which do not travel to the GPU
# machine: copy them into .gpu-shared (git-ignored, never committed) for run.sh, which points
# RESQ_SHARED_DIR at it.
SHARED_SRC="${RESQ_SHARED_DIR:-${ROOT}/../shared}"
SHARED_OUT="${ROOT}/.gpu-shared"
if [[ -d "${SHARED_SRC}/models/stories260K" && -f "${SHARED_SRC}/data/tinystories/valid_head.txt" ]]; then
  mkdir -p "${SHARED_OUT}/models" "${SHARED_OUT}/data/tinystories" "${SHARED_OUT}/data/wikitext-2-raw"
  cp -r "${SHARED_SRC}/models/stories260K" "${SHARED_OUT}/models/"
  cp "${SHARED_SRC}/data/tinystories/valid_head.txt" "${SHARED_OUT}/data/tinystories/"
  for f in data/tinystories/train_head.txt data/wikitext-2-raw/wiki.valid.raw data/wikitext-2-raw/wiki.test.raw; do
    if [[ -f "${SHARED_SRC}/${f}" ]]; then cp "${SHARED_SRC}/${f}" "${SHARED_OUT}/${f}"; fi
  done
  echo "pack-deps: test data in ${SHARED_OUT} ($(du -sh "${SHARED_OUT}" | cut -f1))"
else
  echo "pack-deps: ${SHARED_SRC} lacks models/stories260K or data/tinystories/valid_head.txt: not copied" >&2
fi
