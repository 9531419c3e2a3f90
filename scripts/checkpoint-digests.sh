#!/usr/bin/env bash
# Quantizes stories260K with every recipe in configs/ (fixed seed, small calibration) and prints one
# line per written file: "recipe file sha256". Two builds that print the same lines write
# byte-identical checkpoints, which is how refactors prove they changed no behaviour:
#   scripts/checkpoint-digests.sh build-before/resq > before.txt
#   scripts/checkpoint-digests.sh build/resq > after.txt && diff before.txt after.txt
# Environment: RESQ_SHARED_DIR (default ../shared), WORK (scratch folder, default a temp dir; the
# checkpoints are written under the same path each run, so paths recorded inside them match).
set -euo pipefail
export LC_ALL=C  # one glob and sort order everywhere
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RESQ="${1:-${ROOT}/build/resq}"
SHARED="${RESQ_SHARED_DIR:-${ROOT}/../shared}"
WORK="${WORK:-/tmp/resq-checkpoint-digests}"
MODEL="${SHARED}/models/stories260K"
CALIB="${SHARED}/data/tinystories/train_head.txt"
[[ -x "${RESQ}" ]] || { echo "checkpoint-digests: ${RESQ} is not an executable" >&2; exit 1; }
[[ -d "${MODEL}" && -f "${CALIB}" ]] || { echo "checkpoint-digests: ${MODEL} or ${CALIB} missing" >&2; exit 1; }
rm -rf "${WORK}"
mkdir -p "${WORK}/configs"
# The checkpoint records the recipe's path: copy the recipes to the scratch folder so that two
# checkouts in different folders record the same path.
cp "${ROOT}"/configs/*.json "${WORK}/configs/"
for cfg in "${WORK}"/configs/*.json; do
  name="$(basename "${cfg}" .json)"
  out="${WORK}/${name}"
  OMP_WAIT_POLICY=PASSIVE "${RESQ}" quantize --model "${MODEL}" --out "${out}" --config "${cfg}" --calib "${CALIB}" \
    --nsamples 16 --seqlen 128 --seed 7 --threads 2 --log-level warn > "${WORK}/${name}.log" 2>&1 ||
    { echo "checkpoint-digests: quantize with ${name} failed:" >&2; tail -5 "${WORK}/${name}.log" >&2; exit 1; }
  (cd "${out}" && find . -type f | LC_ALL=C sort | while read -r f; do echo "${name} ${f#./} $(sha256sum "${f}" | cut -d' ' -f1)"; done)
done
