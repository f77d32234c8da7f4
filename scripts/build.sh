#!/usr/bin/env bash
# Configures and builds moat. usage: scripts/build.sh [release|asan]
#   release: build/       (gcc, RelWithDebInfo)
#   asan:    build-asan/  (clang, ASan + UBSan, libFuzzer targets)
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-release}"
jobs="$(nproc)"
case "$kind" in
  release)
    cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build build -j "$jobs"
    ;;
  asan)
    CC=clang cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DMOAT_SANITIZE=ON -DMOAT_FUZZ=ON >/dev/null
    cmake --build build-asan -j "$jobs"
    ;;
  *) echo "usage: $0 [release|asan]" >&2; exit 2 ;;
esac
