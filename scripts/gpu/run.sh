#!/usr/bin/env bash
# One command on a GPU machine (no network): unpack the .debs packed by pack-deps.sh into a prefix,
# configure + build resq with CUDA against the installed PyTorch's CUDA libtorch, run the GPU suite
# (test_cuda, test_kernels, test_core), stories260K end to end (quantize, eval packed on cpu and cuda,
# generate on cuda with the paged KV cache), then `resq bench` (GEMMs vs cuBLASLt, the
# decoder layer vs plain libtorch, the whole model), and write report.md (one line per stage with its
# status and time, the ppl/decode lines and the bench tables), run.log, the JSON results and
# logs.tar.gz to RESULTS_DIR (argument 1, else $OUT, else ./gpu-results): 6 files, the device tool
# returns at most 8. Budget: < 10 minutes.
#   scripts/gpu/run.sh [RESULTS_DIR]
# RESQ_GPU_SUITE=quantize runs the quantization suite instead (issue 16: `quantize --device cuda`):
# the device-pipeline tests, stories260K quantized on cpu and on cuda (ppl of both), then each
# SHAPE:LAYERS of RESQ_QUANTIZE_SHAPES (default "llama-3.2-1b:16 llama-3-8b:4": the 1B shape whole,
# four layers of the 8B shape for its per-layer cost) made with make-model and quantized on cuda with
# RESQ_QUANTIZE_CALIB (default 128 x 2048) WikiText-2 tokens; their --json reports come back.
# Environment: RESQ_GPU_DEBS (folder of .debs; default .gpu-debs, shared/gpu-debs or ../shared/gpu-debs),
# RESQ_GPU_PREFIX (unpack prefix, default /tmp/resq-gpu-prefix), RESQ_BENCH_ARGS (extra arguments
# for `resq bench`, e.g. "--models llama-3-8b --repeats 10"), JOBS (build jobs), RESQ_TORCH_PREFIX
# (a libtorch CMake prefix instead of the installed PyTorch's, e.g. to rehearse this script on a
# machine without PyTorch: /usr/lib/x86_64-linux-gnu/cmake/Torch), RESQ_GPU_LAPACK (system, debian
# or auto: whose LAPACK/BLAS to link; auto = the system's when it has one), RESQ_GPU_BUILD_DIR (default
# build-gpu) and RESQ_GPU_REUSE_BUILD=1 (skip configure + build: rehearse the stages on a build made
# elsewhere).
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

BUILD="${RESQ_GPU_BUILD_DIR:-${ROOT}/build-gpu}"
# CUTLASS headers for the sm_90a wgmma GEMM travel as .cutlass (pack-deps.sh; carry it): CMake finds
# them there. Without them the build leaves that path out and says so in configure.log.
if [[ -f "${ROOT}/.cutlass/usr/include/cutlass/version.h" ]]; then
  step "CUTLASS: $(cat "${ROOT}/.cutlass/MANIFEST.txt" 2>/dev/null || echo present)"
else
  step "CUTLASS: .cutlass missing (carry it): the sm_90a wgmma GEMM is not built"
fi
if [[ "${RESQ_GPU_REUSE_BUILD:-0}" == 1 ]]; then
  # A rehearsal of the stages on a build made elsewhere (RESQ_GPU_BUILD_DIR), e.g. without a GPU.
  step "reusing the build in ${BUILD} (RESQ_GPU_REUSE_BUILD=1)"
else
step "configure (${BUILD}, CUDA arch ${ARCH})"
cmake -S "${ROOT}" -B "${BUILD}" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DRESQ_WITH_CUDA=ON \
  -DCMAKE_CUDA_COMPILER="${NVCC}" -DCMAKE_CUDA_ARCHITECTURES="${ARCH}" \
  -DCMAKE_PREFIX_PATH="${TORCH_PREFIX}${EXTRA_PREFIX:+;${EXTRA_PREFIX}}" \
  > "${RESULTS}/configure.log" 2>&1 || { tail -40 "${RESULTS}/configure.log"; fail "configure failed"; }
step "build"
cmake --build "${BUILD}" -j "${JOBS:-$(nproc)}" --target resq test_cuda test_kernels test_core \
  > "${RESULTS}/build.log" 2>&1 || { tail -60 "${RESULTS}/build.log"; fail "build failed"; }
step "built after $(( $(date +%s) - START )) s"
fi
# Which LAPACK/BLAS/torch the binary loads (one LAPACK: see the dependency section above).
ldd "${BUILD}/resq" | grep -E 'lapack|blas|gfortran|torch_cuda|c10_cuda' | tee -a "${LOG}" || true

STATUS=0
# Shared test data: the copy pack-deps.sh made when ../shared did not travel with the tree.
if [[ -z "${RESQ_SHARED_DIR:-}" && ! -d "${ROOT}/../shared/models" && -d "${ROOT}/.gpu-shared" ]]; then
  export RESQ_SHARED_DIR="${ROOT}/.gpu-shared"
fi
# Each stage appends one line to the report: name, status, seconds.
REPORT="${RESULTS}/report.md"
{
  echo "# resq GPU run $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "commit $(git -C "${ROOT}" rev-parse --short HEAD 2>/dev/null || echo '?'), GPU: $(nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null | head -1 || true)"
  grep -E "^torch|^libtorch|release" "${LOG}" | head -3
  echo
  echo "| stage | status | seconds |"
  echo "| --- | --- | --- |"
} > "${REPORT}"
# The device call allows 600 s in all: every stage gets at most what is left of RESQ_GPU_BUDGET_S
# (default 560 s from the start), and a stage with under 15 s left is reported as skipped.
DEADLINE=$(( START + ${RESQ_GPU_BUDGET_S:-560} ))
stage() {  # stage NAME TIMEOUT_S LOGFILE CMD...: runs CMD, logs, records status
  local name="$1" limit="$2" logf="$3"; shift 3
  local left=$(( DEADLINE - $(date +%s) ))
  if (( left < 15 )); then
    echo "| ${name} | SKIPPED (time budget spent) | 0 |" >> "${REPORT}"
    step "${name}: skipped, time budget spent"
    STATUS=1
    return
  fi
  (( limit > left )) && limit=${left}
  step "${name}"
  local t0 rc
  t0=$(date +%s)
  timeout "${limit}" "$@" > "${RESULTS}/${logf}" 2>&1
  rc=$?
  [[ ${rc} -eq 0 ]] || STATUS=1
  echo "| ${name} | $([[ ${rc} -eq 0 ]] && echo ok || echo "FAILED (rc ${rc}$([[ ${rc} -eq 124 ]] && echo ', timed out'))") | $(( $(date +%s) - t0 )) |" >> "${REPORT}"
  tail -4 "${RESULTS}/${logf}" | tee -a "${LOG}"
}
# The end of either suite: totals, then the logs packed. The device tool brings back at most 8
# files: report.md, run.log and the JSON results stay as they are; the detailed logs go into one archive.
finish() {
  step "done after $(( $(date +%s) - START )) s, status ${STATUS}; results in ${RESULTS}"
  echo "total $(( $(date +%s) - START )) s, status ${STATUS}" >> "${REPORT}"
  (cd "${RESULTS}" && ls ./*.log ./nvidia-smi.txt 2>/dev/null | grep -v '^./run.log$' | tar czf logs.tar.gz --remove-files -T -) \
    || echo "run.sh: could not pack the logs (they stay as files)"
  ls -l "${RESULTS}"
  exit "${STATUS}"
}
export OMP_WAIT_POLICY=PASSIVE
SHARED="${RESQ_SHARED_DIR:-${ROOT}/../shared}"
if [[ "${RESQ_GPU_SUITE:-all}" == quantize ]]; then
  stage "device-pipeline tests (test_core PipelineDevice/OnlineHadamardTorch/ResolveDevice, test_cuda GPTQ)" 240 \
    test_quantize_device.log bash -c "'${BUILD}/tests/test_core' --gtest_filter='PipelineDevice.*:OnlineHadamardTorch.*:ResolveDevice.*' && '${BUILD}/tests/test_cuda' --gtest_filter='*Gptq*'"
  NOTES="${RESULTS}/notes.tmp"
  if [[ -d "${SHARED}/models/stories260K" && -f "${SHARED}/data/tinystories/valid_head.txt" ]]; then
    for dev in cpu cuda; do
      rm -rf "${BUILD}/stories-${dev}"
      stage "quantize stories260K (resq) --device ${dev}" 120 "quantize_stories_${dev}.log" "${BUILD}/resq" quantize \
        --model "${SHARED}/models/stories260K" --out "${BUILD}/stories-${dev}" --config resq --device "${dev}" \
        --calib "${SHARED}/data/tinystories/valid_head.txt" --nsamples 128 --seqlen 256 --seed 0 \
        --json "${RESULTS}/quantize-stories-${dev}.json"
      stage "eval packed stories260K quantized on ${dev}" 120 "eval_stories_${dev}.log" "${BUILD}/resq" eval \
        --model "${BUILD}/stories-${dev}" --data "${SHARED}/data/tinystories/valid_head.txt" --seqlen 256 \
        --max-windows 300 --device cuda
      grep -HE "^ppl" "${RESULTS}/eval_stories_${dev}.log" | sed "s|${RESULTS}/||" >> "${NOTES}" || true
    done
  fi
  CALIB="${RESQ_QUANTIZE_CALIB:-128x2048}"
  for spec in ${RESQ_QUANTIZE_SHAPES:-llama-3.2-1b:16 llama-3-8b:4}; do
    shape="${spec%%:*}"; layers="${spec#*:}"
    [[ "${layers}" == "${spec}" ]] && layers=0
    what="${layers} layers"; [[ "${layers}" == 0 ]] && what="all layers"
    M="/tmp/resq-models/${shape}-L${layers}"
    if [[ ! -d "${M}" ]]; then
      mkdir -p /tmp/resq-models
      stage "make-model ${shape} (${what})" 240 "make_${shape}.log" "${BUILD}/resq" make-model --shape "${shape}" \
        --layers "${layers}" --out "${M}" --seed 0
    fi
    rm -rf "${M}-resq"
    stage "quantize ${shape} (${what}, resq GPTQ, ${CALIB}) --device cuda" 540 "quantize_${shape}.log" \
      "${BUILD}/resq" quantize --model "${M}" --out "${M}-resq" --config resq --device cuda \
      --calib-wikitext2 "${SHARED}/data/wikitext-2-raw/wiki.valid.raw" --nsamples "${CALIB%%x*}" --seqlen "${CALIB##*x}" \
      --json "${RESULTS}/quantize-${shape}-L${layers}.json"
    grep -HE "^stages|^compute" "${RESULTS}/quantize_${shape}.log" | sed "s|${RESULTS}/||" >> "${NOTES}" || true
  done
  { echo; echo '## Notes'; echo; sed 's/^/- /' "${NOTES}" 2>/dev/null; } >> "${REPORT}"
  rm -f "${NOTES}"
  finish
fi
stage "test_cuda (GPU kernels and runtime vs CPU references)" 240 test_cuda.log \
  "${BUILD}/tests/test_cuda" --gtest_output="json:${RESULTS}/test_cuda.json"
# Failed test names and the skip count go below the table (NOTES), not into it.
NOTES="${RESULTS}/notes.tmp"
{
  echo "test_cuda: $(grep -cE '^\[  SKIPPED \] .* \([0-9]+ ms\)$' "${RESULTS}/test_cuda.log") skipped;" \
    "failed: $(grep -E '^\[  FAILED  \] .* \([0-9]+ ms\)$' "${RESULTS}/test_cuda.log" | sed -E 's/^\[  FAILED  \] ([^ ]+).*/\1/' | paste -sd' ' - || true)"
} >> "${NOTES}"
stage "test_kernels (CPU kernels + host emulation of the CUDA kernels)" 240 test_kernels.log \
  "${BUILD}/tests/test_kernels" --gtest_output="json:${RESULTS}/test_kernels.json"
stage "test_core (runtime, decoding, attention; CUDA libtorch)" 300 test_core.log "${BUILD}/tests/test_core"

# End to end on stories260K: quantize (CPU), eval packed on cpu and cuda, generate on cuda (paged KV).
if [[ -d "${SHARED}/models/stories260K" && -f "${SHARED}/data/tinystories/valid_head.txt" ]]; then
  Q="${BUILD}/stories-resq"
  rm -rf "${Q}"  # quantize refuses an existing --out (a rerun in the same build folder)
  stage "quantize stories260K (resq.json)" 90 quantize.log "${BUILD}/resq" quantize --model "${SHARED}/models/stories260K" \
    --out "${Q}" --config "${ROOT}/configs/resq.json" --calib "${SHARED}/data/tinystories/valid_head.txt" \
    --nsamples 32 --seqlen 256 --seed 0 --device cpu
  # The same on the GPU (quantize --device cuda; the quantization suite measures it at scale).
  rm -rf "${Q}-cuda"
  stage "quantize stories260K (resq.json) --device cuda" 90 quantize_cuda.log "${BUILD}/resq" quantize \
    --model "${SHARED}/models/stories260K" --out "${Q}-cuda" --config "${ROOT}/configs/resq.json" \
    --calib "${SHARED}/data/tinystories/valid_head.txt" --nsamples 32 --seqlen 256 --seed 0 --device cuda
  stage "eval packed stories260K (quantized on cuda) --device cuda" 120 eval_qcuda.log "${BUILD}/resq" eval \
    --model "${Q}-cuda" --data "${SHARED}/data/tinystories/valid_head.txt" --seqlen 256 --max-windows 300 --device cuda
  for dev in cpu cuda; do
    stage "eval packed stories260K --device ${dev}" 180 "eval_${dev}.log" "${BUILD}/resq" eval --model "${Q}" \
      --data "${SHARED}/data/tinystories/valid_head.txt" --seqlen 256 --max-windows 300 --device "${dev}" \
      --json "${BUILD}/eval_${dev}.json"
  done
  stage "generate --device cuda (paged 4/8-bit KV cache)" 120 generate_cuda.log "${BUILD}/resq" generate --model "${Q}" \
    --device cuda --prompt "Once upon a time" --max-new-tokens 64
  grep -HE "^ppl|kv cache|decode:|^compute" "${RESULTS}"/eval_*.log "${RESULTS}"/quantize*.log "${RESULTS}/generate_cuda.log" 2>/dev/null | sed "s|${RESULTS}/||" >> "${NOTES}" || true
fi


# shellcheck disable=SC2086
stage "resq bench (GEMM vs cuBLASLt, layer prefill vs plain libtorch, end to end)" 420 bench.log \
  "${BUILD}/resq" bench --json "${RESULTS}/bench.json" ${RESQ_BENCH_ARGS:-}
{ echo; echo '## Notes'; echo; sed 's/^/- /' "${NOTES}" 2>/dev/null; echo; echo '## resq bench'; echo; echo '```'; grep -vE "^\[" "${RESULTS}/bench.log" | tail -60; echo '```'; } >> "${REPORT}"
rm -f "${NOTES}"
finish
