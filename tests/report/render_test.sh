#!/usr/bin/env bash
# The HTML report renders in a real browser: quantizes stories260K (resq recipe, a few calibration
# windows), writes `quantize --report` plus eval results through `resq report`, renders the page with
# headless Chromium to a 1200x2000 PNG and checks the PNG is not blank (decoded here: the share of
# non-white pixels and the number of distinct colours). Exit 77 (ctest: skipped) with the reason
# printed only when no browser can start.
# Usage: render_test.sh PATH/TO/resq [KEEP_PNG]   (RESQ_SHARED_DIR points at the shared data)
set -u
RESQ="$1"
KEEP_PNG="${2:-}"
SHARED="${RESQ_SHARED_DIR:-$(dirname "$0")/../../../shared}"
MODEL="$SHARED/models/stories260K"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

BROWSER=""
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1; then BROWSER="$(command -v "$b")"; break; fi
done
if [ -z "$BROWSER" ]; then
  echo "SKIPPED: no headless browser (chromium) on PATH; scripts/install-deps.sh installs Debian's chromium"
  exit 77
fi

"$RESQ" quantize --model "$MODEL" --config resq --out "$WORK/q" --calib "$SHARED/data/tinystories/train_head.txt" \
  --nsamples 8 --seqlen 128 --json "$WORK/q.json" >"$WORK/log" 2>&1 || { echo "FAIL: quantize"; cat "$WORK/log"; exit 1; }
"$RESQ" eval --model "$WORK/q" --kl-base "$MODEL" --data "$SHARED/data/tinystories/valid_head.txt" --seqlen 128 \
  --max-windows 4 --json "$WORK/e.json" >"$WORK/log" 2>&1 || { echo "FAIL: eval"; cat "$WORK/log"; exit 1; }
"$RESQ" report "$WORK/q.json" --eval-json "$WORK/e.json" --out "$WORK/report.html" >"$WORK/log" 2>&1 ||
  { echo "FAIL: report"; cat "$WORK/log"; exit 1; }

mkdir -p "$WORK/profile"
timeout 120 "$BROWSER" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --user-data-dir="$WORK/profile" --screenshot="$WORK/report.png" --window-size=1200,2000 \
  "file://$WORK/report.html" >"$WORK/browser.log" 2>&1
rc=$?
if [ ! -s "$WORK/report.png" ]; then
  echo "SKIPPED: $BROWSER could not start or render (exit $rc):"
  tail -5 "$WORK/browser.log"
  exit 77
fi

python3 - "$WORK/report.png" <<'PY' || exit 1
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, w = 8, b"", 0
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b"IHDR":
        w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
        bpp = 3 if ctype == 2 else 4
    elif kind == b"IDAT":
        idat += body
    pos += 12 + n
raw = zlib.decompress(idat)
stride = w * bpp
prev = bytearray(stride)
nonwhite, colors, i = 0, set(), 0
for y in range(h):
    f = raw[i]; line = bytearray(raw[i + 1:i + 1 + stride]); i += 1 + stride
    for x in range(stride):  # undo the PNG row filter
        a = line[x - bpp] if x >= bpp else 0
        b = prev[x]; c = prev[x - bpp] if x >= bpp else 0
        if f == 1: line[x] = (line[x] + a) & 255
        elif f == 2: line[x] = (line[x] + b) & 255
        elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    prev = line
    for x in range(0, stride, bpp):
        px = bytes(line[x:x + 3])
        if px != b"\xff\xff\xff":
            nonwhite += 1
        if y % 4 == 0:
            colors.add(px)
share = nonwhite / (w * h)
print(f"report.png: {w}x{h}, {100 * share:.1f}% non-white pixels, {len(colors)} distinct colours (every 4th row)")
assert w == 1200 and h == 2000, (w, h)
assert share > 0.03, "the rendered report is (nearly) blank"
assert len(colors) > 50, "too few colours: the charts did not render"
PY
if [ -n "$KEEP_PNG" ]; then cp "$WORK/report.png" "$KEEP_PNG"; fi
echo "report_render: passed"
