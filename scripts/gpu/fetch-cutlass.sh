#!/usr/bin/env bash
# Downloads Debian 13 (trixie) contrib's header-only libcutlass-dev (CUTLASS 3.x / CuTe) and unpacks
# it into a private, git-ignored prefix (never installed system-wide), for the sm_90a wgmma prefill
# GEMM (kernels/cuda/wgmma_gemm.cu). Configure with -DRESQ_CUTLASS_DIR=<prefix>/usr/include, or
# leave it unset: CMake looks in <repo>/.cutlass/usr/include by default.
#   scripts/gpu/fetch-cutlass.sh [PREFIX]     (default: <repo>/.cutlass; ~5 MB download)
# Exit code 3 (not 1) when the package cannot be fetched (no network, mirror down), so CI can tell
# "could not fetch" from a real failure; the build then simply leaves the wgmma path out.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PREFIX="${1:-${ROOT}/.cutlass}"
mkdir -p "${PREFIX}"
PREFIX="$(cd "${PREFIX}" && pwd)"
if [[ -f "${PREFIX}/usr/include/cutlass/version.h" ]]; then
  echo "fetch-cutlass: already in ${PREFIX}/usr/include"
  exit 0
fi
CACHE="${PREFIX}/apt"
mkdir -p "${CACHE}/lists/partial" "${CACHE}/debs"
echo "deb [trusted=yes] http://deb.debian.org/debian trixie contrib" > "${CACHE}/sources.list"
APT=(-o "Dir::Etc::sourcelist=${CACHE}/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=${CACHE}/lists"
     -o APT::Get::List-Cleanup=0)
apt-get "${APT[@]}" update -q > "${CACHE}/update.log" 2>&1 ||
  { tail -5 "${CACHE}/update.log" >&2 || true; echo "fetch-cutlass: apt update of trixie contrib failed" >&2; exit 3; }
(cd "${CACHE}/debs" && apt-get "${APT[@]}" download libcutlass-dev > "${CACHE}/download.log" 2>&1) ||
  { tail -5 "${CACHE}/download.log" >&2 || true; echo "fetch-cutlass: download of libcutlass-dev failed" >&2; exit 3; }
dpkg -x "${CACHE}"/debs/libcutlass-dev_*.deb "${PREFIX}" || exit 3
[[ -f "${PREFIX}/usr/include/cutlass/version.h" ]] ||
  { echo "fetch-cutlass: the package has no usr/include/cutlass/version.h" >&2; exit 3; }
V="$(grep -E '^#define CUTLASS_(MAJOR|MINOR|PATCH) ' "${PREFIX}/usr/include/cutlass/version.h" | awk '{print $3}' | paste -sd.)"
dpkg-deb -f "${CACHE}"/debs/libcutlass-dev_*.deb Package Version | paste -sd' ' > "${PREFIX}/MANIFEST.txt"
echo "fetch-cutlass: CUTLASS ${V} headers in ${PREFIX}/usr/include ($(du -sh "${PREFIX}/usr" | cut -f1))"
