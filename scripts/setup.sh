#!/usr/bin/env bash
# Quick start, step 1: install dependencies (apt-get), build, and run the embedded demo
# (makes a tiny model in a temporary directory and evaluates it; no download).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
OMP_WAIT_POLICY=PASSIVE build/resq demo
