#!/usr/bin/env bash
# Runs a Node.js test script with the npm packages its directory's package-lock.json pins,
# installed with npm ci into a work directory. Exits 77 (ctest: skipped, with the reason
# printed) only when the npm registry does not answer, or, outside CI (CI=true), without
# Node.js 20 or newer. Any other failure of npm ci (a bad lock file, say) fails the test.
# usage: npm_test.sh <package dir> <work dir> <script.mjs> [script arguments…]
set -euo pipefail
pkg="${1:?usage: $0 <package dir> <work dir> <script.mjs> [args…]}"
work="${2:?usage: $0 <package dir> <work dir> <script.mjs> [args…]}"
script="${3:?usage: $0 <package dir> <work dir> <script.mjs> [args…]}"
shift 3
name="$(basename "$script" .mjs)"

# A skip for what CI's machine has is a failure there.
skip_unless_ci() {
  if [ "${CI:-}" = true ]; then
    echo "$name: CI can run this test, but: $1"
    exit 1
  fi
  echo "SKIP: $1"
  exit 77
}

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  skip_unless_ci "Node.js and npm are not installed"
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
  skip_unless_ci "$name needs Node.js 20 or newer; this is $(node --version)"
fi
if ! npm ping --fetch-timeout=30000 --fetch-retries=1 >/dev/null 2>&1; then
  echo "SKIP: the npm registry ($(npm config get registry)) does not answer"
  exit 77
fi
mkdir -p "$work"
# The script is copied next to node_modules: ES modules resolve packages from their own path.
cp "$pkg/package.json" "$pkg/package-lock.json" "$pkg/$script" "$work/"
cd "$work"
if ! npm ci --no-audit --no-fund --fetch-timeout=30000 --fetch-retries=1 >npm.log 2>&1; then
  cat npm.log
  echo "$name: npm ci failed with the registry answering (above)"
  exit 1
fi
exec node "$script" "$@"
