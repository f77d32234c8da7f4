#!/usr/bin/env bash
# Runs every test moat has, the way CI does: installs what is missing, builds the
# release and the sanitizer (ASan + UBSan, clang) trees and an -O3 one (built only),
# starts dockerd, builds both sandbox images (test_e2e_images uses the Debian one; its root file
# system is cached), then runs unit, integration, Docker, valgrind and fuzz tests.
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
skips=""
run_ctest() {
  local dir="$1"; shift
  echo "== ctest in $dir $*"
  (cd "$dir" && ctest --output-on-failure --no-tests=error "$@") 2>&1 | tee "$dir/ctest.out" ||
    failed=1
  collect_skips "$dir"
}

# Every skip of the last ctest run in $1, as "<dir> <test>: <reason>": the tests ctest skipped
# (exit 77) with the "SKIP: " lines they printed, and the "SKIP: " lines of tests that passed
# with a part skipped (tests/support/moat_test.h). A skip without a reason is an error in CI.
collect_skips() {
  local dir="$1" found
  found="$(awk -v dir="$dir" '
    FNR == 1 { file++ }
    file == 1 && match($0, /^[ \t]+[0-9]+ - .* \(Skipped\)$/) {
      name = $0; sub(/^[ \t]+[0-9]+ - /, "", name); sub(/ \(Skipped\)$/, "", name); skipped[name] = 1
    }
    file == 2 && /^[0-9]+\/[0-9]+ Test: / { name = $3 }
    file == 2 && /^SKIP: / { print dir " " name ": " substr($0, 7); said[name] = 1 }
    END { for (name in skipped) if (!(name in said)) print dir " " name ": no reason given" }
  ' "$dir/ctest.out" "$dir/Testing/Temporary/LastTest.log")"
  if [ -n "$found" ]; then
    skips+="$found"$'\n'
  fi
  if [ "${CI:-}" = true ] && grep -q ': no reason given$' <<<"$found"; then
    echo "test.sh: CI: a test skipped without saying why" >&2
    failed=1
  fi
}

# Release tree: everything except the fuzzers and valgrind runs.
run_ctest build -LE 'fuzz|valgrind'
# Sanitizer tree: everything except Docker-heavy suites, which the release tree covered.
run_ctest build-asan -LE 'docker|valgrind|fuzz'
# Bounded fuzzing with the vectors as seed corpus (built in the sanitizer tree).
run_ctest build-asan -L fuzz --no-tests=ignore
# valgrind over the integration binaries.
run_ctest build -L valgrind --no-tests=ignore

if [ -n "$skips" ]; then
  echo "== skipped (under CI=true a test skips only for what CI's machine cannot run):"
  printf '%s' "$skips" | sed 's/^/SKIP: /'
fi
if [ "$failed" -ne 0 ]; then
  echo "test.sh: some tests failed" >&2
  exit 1
fi
echo "test.sh: all suites passed"
