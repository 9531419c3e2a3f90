#!/usr/bin/env bash
# Installs every build/test dependency of resq from Debian packages (apt-get), then checks that
# libblas.so.3 resolves to OpenBLAS: Debian's libtorch calls whatever libblas.so.3 points to, and
# the netlib reference BLAS makes fp32 matmul ~50x slower.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev libeigen3-dev libcli11-dev nlohmann-json3-dev libspdlog-dev libfmt-dev
  libgtest-dev libsentencepiece-dev libpcre2-dev libutf8proc-dev liblapack-dev
  libopenblas0-openmp
  chromium  # headless, renders the HTML report in ctest report_render (tests/report/render_test.sh)
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all ${#PACKAGES[@]} packages already installed" >&2
fi

# Verify the BLAS that libtorch will call.
arch_triplet="$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)"
blas_link="$(update-alternatives --query "libblas.so.3-${arch_triplet}" 2>/dev/null | awk '/^Value:/{print $2}')"
if [[ "${blas_link}" != *openblas* ]]; then
  echo "install-deps: libblas.so.3 points to '${blas_link}', switching to OpenBLAS (openmp)" >&2
  $SUDO update-alternatives --set "libblas.so.3-${arch_triplet}" \
    "/usr/lib/${arch_triplet}/openblas-openmp/libblas.so.3"
  $SUDO update-alternatives --set "liblapack.so.3-${arch_triplet}" \
    "/usr/lib/${arch_triplet}/openblas-openmp/liblapack.so.3"
  blas_link="$(update-alternatives --query "libblas.so.3-${arch_triplet}" | awk '/^Value:/{print $2}')"
fi
echo "install-deps: libblas.so.3 -> ${blas_link}" >&2
if [[ "${blas_link}" != *openblas* ]]; then
  echo "install-deps: ERROR: libblas.so.3 is not OpenBLAS" >&2
  exit 1
fi

# Node.js runs HuggingFace's own `tokenizers` (npm) in the BPE differential test.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "install-deps: installing nodejs npm" >&2
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends nodejs npm
fi
"$(dirname "$0")/install-node-deps.sh"
