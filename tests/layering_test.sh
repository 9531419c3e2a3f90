#!/usr/bin/env bash
# Layering check: computes which area includes which (include/resq/<area>, src/<area>, kernels/cpu,
# kernels/cuda, tools) and fails, naming file:line, on any include from a lower floor to a higher one.
# The floors are the `layers` block of docs/ARCHITECTURE.md, the one place they are written. A source
# file that belongs to no area fails too (a new area must get a floor). It first checks itself on a
# scratch tree with planted includes, so a broken resolver cannot pass vacuously.
#   tests/layering_test.sh [SOURCE_ROOT]   (default: the repository this script is in)
#   tests/layering_test.sh --graph [SOURCE_ROOT]   also prints the area graph (area -> areas: count)
set -uo pipefail
GRAPH=0
if [[ "${1:-}" == "--graph" ]]; then GRAPH=1; shift; fi
ROOT="${1:-$(cd "$(dirname "$0")/.." && pwd)}"

# check ROOT GRAPH: prints "file:line: ..." per violation on stdout, exits 1 on any.
check() {
  python3 - "$1" "$2" <<'PY'
import os, re, sys

root, graph = sys.argv[1], sys.argv[2] == "1"
table = os.path.join(root, "docs", "ARCHITECTURE.md")

def fail(msg):
    print(msg)
    sys.exit(1)

# ---- the floors: the ```layers block, one floor per line, bottom first
try:
    text = open(table, encoding="utf-8").read()
except OSError as e:
    fail(f"{table}: cannot read the floor table: {e}")
m = re.search(r"^```layers[ \t]*\n(.*?)^```", text, re.S | re.M)
if not m:
    fail(f"{table}: no ```layers block (the floor table)")
floor_of, paths_of = {}, {}
for n, line in enumerate(l.split("#", 1)[0].split() for l in m.group(1).splitlines()):
    if not line:
        continue
    level = len(set(floor_of.values())) + 1  # floors count from 1 at the bottom
    for entry in line:
        name, _, paths = entry.partition("=")
        if name in floor_of:
            fail(f"{table}: area {name} is on two floors")
        floor_of[name] = level
        paths_of[name] = paths.split(",") if paths else [f"include/resq/{name}", f"src/{name}"]
if not floor_of:
    fail(f"{table}: the layers block lists no area")

def area_of(rel):
    """The area of a repository-relative path: the one with the longest path that contains it."""
    best, best_len = None, -1
    for name, paths in paths_of.items():
        for p in paths:
            if (rel == p or rel.startswith(p.rstrip("/") + "/")) and len(p) > best_len:
                best, best_len = name, len(p)
    return best

SOURCE = (".h", ".hpp", ".cpp", ".cc", ".cu", ".cuh")
files = []
for top in ("include", "src", "kernels", "tools"):
    for d, dirs, names in os.walk(os.path.join(root, top)):
        dirs[:] = sorted(x for x in dirs if x != "node_modules")
        files += [os.path.relpath(os.path.join(d, f), root) for f in sorted(names) if f.endswith(SOURCE)]

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')

def resolve(rel, quote, target):
    """The repository file an include names, or None (system and third-party headers)."""
    candidates = [os.path.join(os.path.dirname(rel), target)] if quote == '"' else []
    candidates += [os.path.join("include", target), os.path.join("kernels", target)]
    for c in candidates:
        c = os.path.normpath(c)
        if os.path.isfile(os.path.join(root, c)):
            return c
    return None

violations, edges = [], {}
for rel in files:
    area = area_of(rel)
    if area is None:
        violations.append(f"{rel}:1: belongs to no area of {os.path.relpath(table, root)}: give its area a floor")
        continue
    with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            m = INCLUDE.match(line)
            if not m:
                continue
            dep = resolve(rel, m.group(1), m.group(2))
            to = area_of(dep) if dep else None
            if to is None or to == area:
                continue
            edges[(area, to)] = edges.get((area, to), 0) + 1
            if floor_of[to] > floor_of[area]:
                violations.append(
                    f"{rel}:{n}: {area} (floor {floor_of[area]}) includes {dep} of {to} (floor {floor_of[to]}), "
                    f"a higher floor: move the shared piece down or the includer up ({line.strip()})")
if graph:
    for (a, b), c in sorted(edges.items(), key=lambda e: (floor_of[e[0][0]], e[0])):
        print(f"graph: {a} (floor {floor_of[a]}) -> {b} (floor {floor_of[b]}): {c}", file=sys.stderr)
print(f"scanned {len(files)} files in {len(floor_of)} areas on {len(set(floor_of.values()))} floors",
      file=sys.stderr)
for v in violations:
    print(v)
sys.exit(1 if violations else 0)
PY
}

# 1. Self-check: a scratch tree with a two-floor table, includes that go down, sideways and to
#    system headers (allowed), one that goes up through a quoted relative path and one through the
#    include/ root, and a file in no area; exactly those three must be reported.
SCRATCH="$(mktemp -d)"
trap 'rm -rf "${SCRATCH}"' EXIT
mkdir -p "${SCRATCH}"/{docs,include/resq/low,include/resq/high,src/low,src/high,src/side,kernels/cpu,src/stray}
cat > "${SCRATCH}/docs/ARCHITECTURE.md" <<'PLANT'
```layers
low  side  kernels/cpu=kernels/cpu  pinned=include/resq/high/pinned.h
high
```
PLANT
printf '#pragma once\n' > "${SCRATCH}/include/resq/low/low.h"
printf '#pragma once\n' > "${SCRATCH}/include/resq/high/high.h"
printf '#pragma once\n' > "${SCRATCH}/include/resq/high/pinned.h"
printf '#pragma once\n' > "${SCRATCH}/kernels/cpu/k.h"
printf '#pragma once\n' > "${SCRATCH}/src/high/local.h"
cat > "${SCRATCH}/src/high/ok.cpp" <<'PLANT'
#include "resq/high/high.h"
#include "resq/low/low.h"
#include "cpu/k.h"
#include "local.h"
#include <vector>
PLANT
cat > "${SCRATCH}/src/low/bad.cpp" <<'PLANT'
#include "resq/low/low.h"
#include "resq/high/pinned.h"
  #  include <resq/high/high.h>
#include "../high/local.h"
#include "cpu/k.h"
PLANT
printf '#include "resq/low/low.h"\n' > "${SCRATCH}/src/side/fine.cpp"
printf 'int x;\n' > "${SCRATCH}/src/stray/lost.cpp"
self="$(check "${SCRATCH}" 0 2>/dev/null)"
expected="src/low/bad.cpp:3 src/low/bad.cpp:4 src/stray/lost.cpp:1"
got="$(printf '%s\n' "${self}" | cut -d: -f1,2 | sort | tr '\n' ' ' | sed 's/ $//')"
if [[ "${got}" != "${expected}" ]]; then
  echo "layering_test: self-check failed: expected hits at '${expected}', got '${got}':" >&2
  printf '%s\n' "${self}" >&2
  exit 2
fi

# 2. The real tree.
out="$(check "${ROOT}" "${GRAPH}")"
rc=$?
if ((rc != 0)); then
  printf '%s\n' "${out}"
  echo "layering_test: includes that run up the floors of docs/ARCHITECTURE.md (see above)" >&2
  exit 1
fi
echo "layering_test: no include runs up a floor (self-check passed)"
