#!/usr/bin/env bash
# Source rules that keep one build working against pip PyTorch (GPU machine) and Debian's libtorch:
# fails, naming file:line, when a source file
#   - uses at::NoGradGuard (PyTorch 2.11 no longer exposes it; c10::NoGradGuard from
#     c10/core/GradMode.h works in every version),
#   - includes lapacke.h (LAPACK is called through include/resq/linalg/lapack.h: a system LAPACKE
#     built for another LAPACK version fails to link),
#   - includes or uses spdlog or {fmt} anywhere but src/common/log.cpp (PyTorch's include directory
#     ships its own, newer {fmt}, which Debian's spdlog does not compile with: resq/common/log.h).
# It first checks itself on planted violations, so a broken pattern cannot pass vacuously.
#   tests/source_rules_test.sh [SOURCE_ROOT]   (default: the repository this script is in)
set -uo pipefail
ROOT="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
LOG_CPP="src/common/log.cpp"

# Prints "file:line: [rule] why: text" for every violation in the source files under the current
# directory's include/ src/ tools/ kernels/ tests/, and the number of files scanned to fd 3.
scan() {
  local files=()
  mapfile -t files < <(find include src tools kernels tests -type f \
    \( -name '*.h' -o -name '*.hpp' -o -name '*.cpp' -o -name '*.cc' -o -name '*.cu' -o -name '*.cuh' \) \
    -not -path '*/node_modules/*' 2>/dev/null | sort)
  echo "${#files[@]}" >&3
  ((${#files[@]})) || return 0
  local rule regex exempt why file line text
  while IFS=$'\t' read -r rule regex exempt why; do
    [[ "${exempt}" == "-" ]] && exempt=""
    while IFS=: read -r file line text; do
      [[ -n "${exempt}" && "${file}" == "${exempt}" ]] && continue
      echo "${file}:${line}: [${rule}] ${why}: ${text}"
    done < <(grep -nHE -- "${regex}" "${files[@]}")
  done <<RULES
no-grad	(^|[^A-Za-z0-9_:])at::NoGradGuard([^A-Za-z0-9_]|$)	-	at::NoGradGuard is gone in PyTorch 2.11, use c10::NoGradGuard (c10/core/GradMode.h)
lapacke	^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"]lapacke[A-Za-z0-9_]*\.h[>"]	-	do not include LAPACKE, call LAPACK through resq/linalg/lapack.h
log-include	^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"](spdlog|fmt)/	${LOG_CPP}	spdlog/{fmt} only in ${LOG_CPP}, log through resq/common/log.h
log-use	(^|[^A-Za-z0-9_])(spdlog|fmt)::	${LOG_CPP}	spdlog/{fmt} only in ${LOG_CPP}, use resq::log and resq::strprintf
RULES
}

# 1. Self-check: a scratch tree with one violation of each rule, next to the same constructs where
#    they are allowed (in log.cpp, c10::NoGradGuard, lapack.h, my_fmt::), must give exactly the
#    planted hits.
SCRATCH="$(mktemp -d)"
trap 'rm -rf "${SCRATCH}"' EXIT
mkdir -p "${SCRATCH}/src/common" "${SCRATCH}/src/quant" "${SCRATCH}/tools"
cat > "${SCRATCH}/src/quant/planted.cpp" <<'PLANT'
#include <lapacke.h>
  #  include "spdlog/spdlog.h"
void f() { at::NoGradGuard g; c10::NoGradGuard ok; }
void g() { auto s = fmt::format("{}", 1); }
PLANT
cat > "${SCRATCH}/src/common/log.cpp" <<'PLANT'
#include <spdlog/spdlog.h>
void h() { spdlog::info("allowed here"); }
PLANT
cat > "${SCRATCH}/tools/fine.cpp" <<'PLANT'
#include "resq/linalg/lapack.h"
void k() { c10::NoGradGuard g; my_fmt::x(); }
PLANT
self="$(cd "${SCRATCH}" && scan 3>/dev/null)"
got="$(echo "${self}" | sed -E 's/^([^ ]+ \[[^]]+\]).*/\1/' | sort)"
expected="src/quant/planted.cpp:1: [lapacke]
src/quant/planted.cpp:2: [log-include]
src/quant/planted.cpp:3: [no-grad]
src/quant/planted.cpp:4: [log-use]"
if [[ "${got}" != "${expected}" ]]; then
  echo "source_rules_test: self-check failed: the rules do not flag exactly the planted violations" >&2
  echo "expected:" >&2; echo "${expected}" >&2
  echo "got:" >&2; echo "${self}" >&2
  exit 1
fi

# 2. The real tree.
cd "${ROOT}" || { echo "source_rules_test: cannot enter ${ROOT}" >&2; exit 1; }
count_file="${SCRATCH}/count"
violations="$(scan 3>"${count_file}")"
scanned="$(cat "${count_file}")"
if ((scanned < 50)); then
  echo "source_rules_test: only ${scanned} source files found under ${ROOT}: wrong source root?" >&2
  exit 1
fi
if [[ -n "${violations}" ]]; then
  echo "${violations}" >&2
  echo "source_rules_test: $(echo "${violations}" | wc -l) violation(s) in ${scanned} files under ${ROOT}" >&2
  exit 1
fi
echo "source_rules_test: ${scanned} source files follow the rules"
