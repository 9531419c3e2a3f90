#!/usr/bin/env bash
# Installs the npm packages of the BPE differential test (tests/text/diff: HuggingFace's
# `tokenizers`, pinned in package-lock.json) with `npm ci`. Needs node and npm (Debian: nodejs, npm).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${root}/tests/text/diff"

if ! command -v npm >/dev/null 2>&1; then
  echo "install-node-deps: npm not found; install Node.js (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi
if [ -f "${dir}/node_modules/tokenizers/package.json" ] &&
   node -e "const want = require('${dir}/package-lock.json').packages['node_modules/tokenizers'].version;
            process.exit(require('${dir}/node_modules/tokenizers/package.json').version === want ? 0 : 1)"; then
  echo "install-node-deps: tests/text/diff/node_modules up to date" >&2
  exit 0
fi
echo "install-node-deps: npm ci in tests/text/diff" >&2
(cd "${dir}" && npm ci --no-audit --no-fund)
# The package ships its native library for each platform; check that this one loads.
(cd "${dir}" && node -e "require('tokenizers').Tokenizer" >/dev/null)
echo "install-node-deps: done" >&2
