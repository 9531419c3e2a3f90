#!/usr/bin/env bash
# One command on a GPU machine (no network): unpack the .debs packed by pack-deps.sh into a prefix,
# configure + build resq with CUDA against the installed PyTorch's CUDA libtorch, run the GPU tests
# (test_cuda) and the host emulation tests (test_kernels), then `resq bench`, and write logs and
# JSON results to RESULTS_DIR (argument 1, else $OUT, else ./gpu-results). Budget: < 10 minutes.
#   scripts/gpu/run.sh [RESULTS_DIR]
# Environment: RESQ_GPU_DEBS (folder of .debs; default .gpu-debs, shared/gpu-debs or ../shared/gpu-debs),
# RESQ_GPU_PREFIX (unpack prefix, default /tmp/resq-gpu-prefix), RESQ_BENCH_ARGS (extra arguments
# for `resq bench`, e.g. "--models llama-3-8b --repeats 10"), JOBS (build jobs), RESQ_TORCH_PREFIX
# (a libtorch CMake prefix instead of the installed PyTorch's, e.g. to rehearse this script on a
# machine without PyTorch: /usr/lib/x86_64-linux-gnu/cmake/Torch), RESQ_GPU_LAPACK (system, debian
# or auto: whose LAPACK/BLAS to link; auto = the system's when it has one).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
RESULTS="${1:-${OUT:-${ROOT}/gpu-results}}"
mkdir -p "${RESULTS}"
RESULTS="$(cd "${RESULTS}" && pwd)"
LOG="${RESULTS}/run.log"
step() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "${LOG}"; }
fail() { echo "run.sh: $*" | tee -a "${LOG}" >&2; exit 1; }
START=$(date +%s)

step "machine"
nvidia-smi > "${RESULTS}/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (no driver?)"
head -15 "${RESULTS}/nvidia-smi.txt" || true

# ---- dependencies: unpack the .debs (headers, CMake/pkg-config files, libraries) into a prefix.
PREFIX="${RESQ_GPU_PREFIX:-/tmp/resq-gpu-prefix}"
DEBS="${RESQ_GPU_DEBS:-}"
for d in "${ROOT}/.gpu-debs" "${ROOT}/shared/gpu-debs" "${ROOT}/../shared/gpu-debs"; do
  if [[ -z "${DEBS}" && -d "${d}" ]]; then DEBS="${d}"; fi
done
EXTRA_PREFIX=""
if [[ -n "${DEBS}" ]] && ls "${DEBS}"/*.deb >/dev/null 2>&1; then
  step "unpacking $(ls "${DEBS}"/*.deb | wc -l) .debs from ${DEBS} into ${PREFIX}"
  mkdir -p "${PREFIX}"
  for deb in "${DEBS}"/*.deb; do dpkg -x "${deb}" "${PREFIX}" || fail "dpkg -x ${deb}"; done
  # The packages' pkg-config and CMake files name /usr; point them at the prefix.
  find "${PREFIX}" -name '*.pc' -exec sed -i "s|^prefix=/usr|prefix=${PREFIX}/usr|" {} +
  find "${PREFIX}/usr" -name '*.cmake' -exec \
    sed -i "s|\"/usr/include|\"${PREFIX}/usr/include|g; s|\"/usr/lib/|\"${PREFIX}/usr/lib/|g" {} +
  MULTIARCH="$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"
  LIBDIR="${PREFIX}/usr/lib/${MULTIARCH}"
  export PKG_CONFIG_PATH="${LIBDIR}/pkgconfig:${PREFIX}/usr/share/pkgconfig:${PKG_CONFIG_PATH:-}"
  export LD_LIBRARY_PATH="${LIBDIR}:${LD_LIBRARY_PATH:-}"
  export PATH="${PATH}:${PREFIX}/usr/bin"
  EXTRA_PREFIX="${PREFIX}/usr;${LIBDIR}/cmake;${PREFIX}/usr/share/cmake"

  # LAPACK/BLAS: exactly one, the same at link and at run time. The system's when ldconfig knows
  # liblapack.so.3 and libblas.so.3 (an image may carry a newer LAPACK, and libraries built against
  # it, e.g. its own LAPACKE 3.12, fail to link against Debian's 3.11 put first); Debian's unpacked
  # lapack/ and blas/ only when the system has none. RESQ_GPU_LAPACK=system|debian forces a choice
  # (to rehearse either branch on one machine). CMake finds it with find_package(LAPACK).
  LDCONFIG="$(command -v ldconfig || echo /sbin/ldconfig)"
  ABI_TAG=""  # ldconfig -p also lists other ABIs' libraries (i386): only this machine's
  case "$(uname -m)" in x86_64) ABI_TAG="x86-64" ;; aarch64) ABI_TAG="AArch64" ;; esac
  ldconfig_path() {
    "${LDCONFIG}" -p 2>/dev/null | awk -v n="$1" -v t="${ABI_TAG}" '$1 == n && index($0, t) { print $NF; exit }'
  }
  SYS_LAPACK="$(ldconfig_path liblapack.so.3)"
  SYS_BLAS="$(ldconfig_path libblas.so.3)"
  LAPACK_FROM="${RESQ_GPU_LAPACK:-auto}"
  if [[ "${LAPACK_FROM}" == auto ]]; then
    LAPACK_FROM=debian
    if [[ -n "${SYS_LAPACK}" && -n "${SYS_BLAS}" ]]; then LAPACK_FROM=system; fi
  fi
  if [[ "${LAPACK_FROM}" == system ]]; then
    [[ -n "${SYS_LAPACK}" && -n "${SYS_BLAS}" ]] || fail "RESQ_GPU_LAPACK=system but ldconfig -p lists no liblapack.so.3/libblas.so.3"
    step "LAPACK/BLAS: the system's (${SYS_LAPACK}, ${SYS_BLAS})"
    # Without the development links (liblapack.so, libblas.so) CMake cannot find them: link to the
    # runtime libraries through links of our own (the binary still records liblapack.so.3).
    rm -rf "${PREFIX}/system-lapack"
    for lib in lapack blas; do
      if [[ -z "$(ldconfig_path "lib${lib}.so")" ]]; then
        mkdir -p "${PREFIX}/system-lapack"
        ln -sf "$(ldconfig_path "lib${lib}.so.3")" "${PREFIX}/system-lapack/lib${lib}.so"
      fi
    done
    if [[ -d "${PREFIX}/system-lapack" ]]; then
      export CMAKE_LIBRARY_PATH="${PREFIX}/system-lapack${CMAKE_LIBRARY_PATH:+:${CMAKE_LIBRARY_PATH}}"
    fi
    # Debian's libgfortran (gcc 12) first on LD_LIBRARY_PATH would shadow the system's, which a
    # system LAPACK built by a newer gfortran may need; the system's is backward compatible.
    if [[ -n "$(ldconfig_path libgfortran.so.5)" ]]; then rm -f "${LIBDIR}"/libgfortran.so.5*; fi
  elif [[ "${LAPACK_FROM}" == debian ]]; then
    step "LAPACK/BLAS: Debian's, unpacked (${LIBDIR}/lapack, ${LIBDIR}/blas)"
    # dpkg -x does not run the alternatives that would link them into ${LIBDIR}.
    export LD_LIBRARY_PATH="${LIBDIR}/lapack:${LIBDIR}/blas:${LD_LIBRARY_PATH}"
    export CMAKE_LIBRARY_PATH="${LIBDIR}/lapack:${LIBDIR}/blas${CMAKE_LIBRARY_PATH:+:${CMAKE_LIBRARY_PATH}}"
  else
    fail "RESQ_GPU_LAPACK=${LAPACK_FROM}: expected system, debian or auto"
  fi
else
  step "no .debs found (RESQ_GPU_DEBS, shared/gpu-debs): using the system's packages"
fi

# ---- toolchain: nvcc, cmake, libtorch (CUDA) from PyTorch.
NVCC="$(command -v nvcc || true)"
if [[ -z "${NVCC}" && -x /usr/local/cuda/bin/nvcc ]]; then NVCC=/usr/local/cuda/bin/nvcc; fi
[[ -n "${NVCC}" ]] || fail "nvcc not found (install the CUDA toolkit or put it on PATH)"
command -v cmake >/dev/null || fail "cmake not found"
TORCH_PREFIX="${RESQ_TORCH_PREFIX:-}"
if [[ -z "${TORCH_PREFIX}" ]]; then
  TORCH_PREFIX="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null || true)"
  [[ -n "${TORCH_PREFIX}" ]] || fail "python3 -c 'import torch' failed: PyTorch (CUDA) provides libtorch (or set RESQ_TORCH_PREFIX)"
fi
{
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null ||
    echo "libtorch from ${TORCH_PREFIX}"
  "${NVCC}" --version | tail -2
  cmake --version | head -1
} | tee -a "${LOG}"
# Build only for this GPU (CI compiles 80;86;89;90a): compute capability 9.0 -> 90a.
CC_RAW="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')"
ARCH="${CC_RAW:-80}"
if [[ "${ARCH}" == "90" ]]; then ARCH="90a"; fi
GEN=()
if command -v ninja >/dev/null; then GEN=(-G Ninja); fi

BUILD="${ROOT}/build-gpu"
step "configure (${BUILD}, CUDA arch ${ARCH})"
cmake -S "${ROOT}" -B "${BUILD}" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DRESQ_WITH_CUDA=ON \
  -DCMAKE_CUDA_COMPILER="${NVCC}" -DCMAKE_CUDA_ARCHITECTURES="${ARCH}" \
  -DCMAKE_PREFIX_PATH="${TORCH_PREFIX}${EXTRA_PREFIX:+;${EXTRA_PREFIX}}" \
  > "${RESULTS}/configure.log" 2>&1 || { tail -40 "${RESULTS}/configure.log"; fail "configure failed"; }
step "build"
cmake --build "${BUILD}" -j "${JOBS:-$(nproc)}" --target resq test_cuda test_kernels \
  > "${RESULTS}/build.log" 2>&1 || { tail -60 "${RESULTS}/build.log"; fail "build failed"; }
step "built after $(( $(date +%s) - START )) s"

STATUS=0
# Shared test data: the copy pack-deps.sh made when ../shared did not travel with the tree.
if [[ -z "${RESQ_SHARED_DIR:-}" && ! -d "${ROOT}/../shared/models" && -d "${ROOT}/.gpu-shared" ]]; then
  export RESQ_SHARED_DIR="${ROOT}/.gpu-shared"
fi
step "test_cuda (GPU kernels vs CPU references, bit for bit)"
if ! "${BUILD}/tests/test_cuda" --gtest_output="json:${RESULTS}/test_cuda.json" > "${RESULTS}/test_cuda.log" 2>&1; then
  STATUS=1
fi
grep -E '^\[ +(OK|FAILED|SKIPPED|PASSED) ' "${RESULTS}/test_cuda.log" | tee -a "${LOG}"
step "test_kernels (CPU kernels + host emulation of the CUDA GEMM)"
if ! OMP_WAIT_POLICY=PASSIVE "${BUILD}/tests/test_kernels" --gtest_output="json:${RESULTS}/test_kernels.json" \
     > "${RESULTS}/test_kernels.log" 2>&1; then
  STATUS=1
fi
tail -3 "${RESULTS}/test_kernels.log" | tee -a "${LOG}"

step "resq bench (GPU)"
# shellcheck disable=SC2086
if ! timeout 400 "${BUILD}/resq" bench --json "${RESULTS}/bench.json" ${RESQ_BENCH_ARGS:-} \
     > "${RESULTS}/bench.log" 2>&1; then
  STATUS=1
fi
cat "${RESULTS}/bench.log" >> "${LOG}"
tail -5 "${RESULTS}/bench.log"

step "done after $(( $(date +%s) - START )) s, status ${STATUS}; results in ${RESULTS}"
# The device tool brings back at most 8 files: keep run.log and the JSON results as they are and
# pack the detailed logs into one archive.
(cd "${RESULTS}" && tar czf logs.tar.gz --remove-files nvidia-smi.txt configure.log build.log test_cuda.log \
  test_kernels.log bench.log) || echo "run.sh: could not pack the logs (they stay as files)"
ls -l "${RESULTS}"
exit "${STATUS}"
