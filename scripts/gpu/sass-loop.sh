#!/usr/bin/env bash
# Counts the SASS instructions of a CUDA kernel's main loop (the backward branch whose body holds
# the most IMMA/HMMA instructions), per opcode, for sm_80 and sm_90a. No GPU needed.
#   scripts/gpu/sass-loop.sh [SOURCE.cu] [KERNEL_NAME_PART ...]
# Default: kernels/cuda/decode_gemv.cu, its four main variants. Disassembler: cuobjdump/nvdisasm
# from the CUDA toolkit when present (the GPU machines have them); else NVDISASM=/path/to/nvdisasm
# of an older toolkit (e.g. Debian 12 non-free nvidia-cuda-toolkit 11.8, unpacked with dpkg -x),
# which cannot read CUDA 13 ELF files but disassembles a raw .text section (`-b SM80|SM90`): the
# section is cut out of the cubin here. Needs nvcc and python3.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SRC="${1:-${ROOT}/kernels/cuda/decode_gemv.cu}"
shift || true
KERNELS=("$@")
if [[ ${#KERNELS[@]} -eq 0 ]]; then
  KERNELS=("ILb0ENS1_12PreQuantized" "ILb1ENS1_12PreQuantized" "ILb0EtE" "ILb1EtE")
fi
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
NVDISASM="${NVDISASM:-$(command -v nvdisasm || true)}"
[[ -n "${NVDISASM}" && -x "${NVDISASM}" ]] || { echo "sass-loop: no nvdisasm (set NVDISASM)" >&2; exit 2; }
TMP="$(mktemp -d)"
trap 'rm -rf "${TMP}"' EXIT
for arch in 80 90a; do
  "${NVCC}" -std=c++17 -O3 -I"${ROOT}/kernels" -I"${ROOT}/include" -cubin -arch "sm_${arch}" -o "${TMP}/k.cubin" "${SRC}"
  for k in "${KERNELS[@]}"; do
    python3 - "${TMP}/k.cubin" "${k}" "${TMP}/text.bin" <<'EOF'
import struct, sys
data = open(sys.argv[1], 'rb').read()
shoff = struct.unpack_from('<Q', data, 0x28)[0]
shentsize, shnum, shstrndx = struct.unpack_from('<HHH', data, 0x3A)
secs = [struct.unpack_from('<IIQQQQIIQQ', data, shoff + i * shentsize) for i in range(shnum)]
so = secs[shstrndx][4]
def name(o):
    return data[so + o:data.index(b'\0', so + o)].decode()
for s in secs:
    if name(s[0]).startswith('.text.') and sys.argv[2] in name(s[0]):
        open(sys.argv[3], 'wb').write(data[s[4]:s[4] + s[5]])
        break
else:
    sys.exit('sass-loop: no kernel matching ' + sys.argv[2])
EOF
    b=SM80; [[ ${arch} == 90a ]] && b=SM90
    "${NVDISASM}" -b "${b}" "${TMP}/text.bin" > "${TMP}/k.sass"
    python3 - "${TMP}/k.sass" "sm_${arch} ${k}" <<'EOF'
import re, sys
ins = []
for l in open(sys.argv[1]):
    m = re.match(r'\s*/\*([0-9a-f]+)\*/\s+(.*?);', l)
    if m:
        ins.append((int(m.group(1), 16), m.group(2).strip()))
best = None
for a, t in ins:
    m = re.search(r'BRA\s+(?:`\()?0x([0-9a-f]+)', t)
    if not m or int(m.group(1), 16) >= a:
        continue
    tgt = int(m.group(1), 16)
    body = [x for x in ins if tgt <= x[0] <= a]
    n = sum('MMA' in x[1] for x in body)
    if n and (best is None or n > best[0] or (n == best[0] and len(body) < len(best[1]))):
        best = (n, body)
if best is None:
    sys.exit('sass-loop: no loop with mma instructions')
ops = {}
for _, t in best[1]:
    op = re.sub(r'^@!?U?P\w+\s+', '', t).split()[0].split('.')[0]
    ops[op] = ops.get(op, 0) + 1
print(f"{sys.argv[2]}: loop {best[1][0][0]:#x}-{best[1][-1][0]:#x}, {len(best[1])} instructions, {best[0]} mma; "
      + ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda x: -x[1])))
EOF
  done
done
