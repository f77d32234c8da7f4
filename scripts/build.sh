#!/usr/bin/env bash
# Configures and builds moat. usage: scripts/build.sh [release|asan|o3]
#   release: build/       (gcc, RelWithDebInfo)
#   asan:    build-asan/  (clang, ASan + UBSan, libFuzzer targets)
#   o3:      build-o3/    (gcc, Release: -O3 inlines more and warns where -O2 does not)
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
  o3)
    cmake -S . -B build-o3 -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build build-o3 -j "$jobs"
    ;;
  *) echo "usage: $0 [release|asan|o3]" >&2; exit 2 ;;
esac
