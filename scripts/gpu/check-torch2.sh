#!/usr/bin/env bash
# Compiles (syntax only) every translation unit that includes libtorch against PyTorch 2.x headers,
# without a GPU or PyTorch: the GPU build links a pip PyTorch 2.x, while this machine and CI have
# Debian 12's libtorch 1.13, so code behind TORCH_VERSION_MAJOR >= 2 (the fused SDPA path) and any
# API that 2.x removed (at::NoGradGuard) would otherwise first fail on the GPU machine.
#   scripts/gpu/check-torch2.sh [BUILD_DIR]     (default build/, configured with compile_commands.json)
# Downloads Debian 13's libtorch-dev (2.6 headers, ~2.4 MB) once into BUILD_DIR/torch2-headers.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD="${1:-${ROOT}/build}"
[[ -d "${BUILD}" ]] || { echo "check-torch2: build folder ${BUILD} missing (configure the build first)" >&2; exit 1; }
BUILD="$(cd "${BUILD}" && pwd)"  # absolute: the download runs in a subfolder
CC_JSON="${BUILD}/compile_commands.json"
[[ -f "${CC_JSON}" ]] || { echo "check-torch2: ${CC_JSON} missing (configure the build first)" >&2; exit 1; }
CACHE="${BUILD}/torch2-headers"
HEADERS="${CACHE}/root/usr/include"
if [[ ! -f "${HEADERS}/torch/csrc/api/include/torch/version.h" ]]; then
  mkdir -p "${CACHE}/lists/partial" "${CACHE}/debs"
  echo "deb [trusted=yes] http://deb.debian.org/debian trixie main" > "${CACHE}/sources.list"
  APT=(-o "Dir::Etc::sourcelist=${CACHE}/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=${CACHE}/lists"
       -o APT::Get::List-Cleanup=0)
  # Exit code 3 (not 1) when the headers cannot be fetched, so CI can tell "could not check" from
  # "does not compile".
  apt-get "${APT[@]}" update -q > "${CACHE}/update.log" 2>&1 || { tail -5 "${CACHE}/update.log" || true; exit 3; }
  (cd "${CACHE}/debs" && apt-get "${APT[@]}" download libtorch-dev > "${CACHE}/download.log" 2>&1) ||
    { tail -5 "${CACHE}/download.log" || true; exit 3; }
  dpkg -x "${CACHE}"/debs/libtorch-dev_*.deb "${CACHE}/root" || exit 3
fi
VERSION="$(grep -E '^#define TORCH_VERSION_(MAJOR|MINOR) ' "${HEADERS}/torch/csrc/api/include/torch/version.h" | awk '{print $3}' | paste -sd.)"
echo "check-torch2: libtorch ${VERSION} headers from ${HEADERS}" >&2
# Every C++ compile command that sees libtorch's headers, with the 2.x headers searched first.
python3 - "${CC_JSON}" "${HEADERS}" > "${CACHE}/commands.txt" <<'EOF'
import json, shlex, sys
entries = json.load(open(sys.argv[1]))
hdr = sys.argv[2]
for e in entries:
    cmd = e.get("command") or " ".join(shlex.quote(a) for a in e["arguments"])
    if e["file"].endswith(".cu") or "torch/csrc/api/include" not in cmd:
        continue
    args = shlex.split(cmd)
    if args[0].endswith("ccache"):  # a compiler launcher: the compiler is the next word
        args = args[1:]
    out = []
    skip = False
    for a in args[1:]:
        if skip:
            skip = False
            continue
        if a in ("-o", "-MF", "-MT"):
            skip = True
            continue
        if a in ("-c", "-MD"):
            continue
        out.append(a)
    # The compiler, then the 2.x headers first.
    print(e["directory"] + "\t" + " ".join(shlex.quote(w) for w in args[:1] + ["-isystem", hdr, "-isystem",
          hdr + "/torch/csrc/api/include", "-fsyntax-only"] + out))
EOF
N="$(wc -l < "${CACHE}/commands.txt")"
echo "check-torch2: ${N} translation units" >&2
FAIL=0
while IFS=$'\t' read -r dir cmd; do
  if ! (cd "${dir}" && eval "${cmd}") > "${CACHE}/last.log" 2>&1; then
    FAIL=$((FAIL + 1))
    grep -E "error" "${CACHE}/last.log" | head -5
  fi
done < "${CACHE}/commands.txt"
echo "check-torch2: $((N - FAIL)) of ${N} translation units compile against libtorch ${VERSION}" >&2
# The closing line CI reads: each translation unit is one check.
echo "check-torch2: $((N - FAIL)) passed, ${FAIL} failed"
((FAIL == 0)) || exit 1
