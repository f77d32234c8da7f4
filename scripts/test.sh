#!/usr/bin/env bash
# Runs every test moat has, the way CI does: installs what is missing, builds the
# release and the sanitizer (ASan + UBSan, clang) trees and an -O3 one (built only),
# starts dockerd, builds the sandbox image, then runs unit, integration, Docker,
# valgrind and fuzz tests.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

./scripts/install-deps.sh
./scripts/build.sh release
./scripts/build.sh asan
# Built only, so that a user's -O3 build cannot fail on a warning CI never saw.
./scripts/build.sh o3

export MOAT_STATE_DIR="${MOAT_STATE_DIR:-/var/lib/moat}"
./scripts/start-dockerd.sh
if [ -x scripts/build-sandbox-image.sh ]; then
  ./scripts/build-sandbox-image.sh "$root/build"
fi

failed=0
run_ctest() {
  local dir="$1"; shift
  echo "== ctest in $dir $*"
  (cd "$dir" && ctest --output-on-failure --no-tests=error "$@") || failed=1
}

# Release tree: everything except the fuzzers and valgrind runs.
run_ctest build -LE 'fuzz|valgrind'
# Sanitizer tree: everything except Docker-heavy suites, which the release tree covered.
run_ctest build-asan -LE 'docker|valgrind|fuzz'
# Bounded fuzzing with the vectors as seed corpus (built in the sanitizer tree).
run_ctest build-asan -L fuzz --no-tests=ignore
# valgrind over the integration binaries.
run_ctest build -L valgrind --no-tests=ignore

if [ "$failed" -ne 0 ]; then
  echo "test.sh: some tests failed" >&2
  exit 1
fi
echo "test.sh: all suites passed"
