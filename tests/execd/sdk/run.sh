#!/usr/bin/env bash
# Runs sdk_compat.mjs (OpenSandbox's TypeScript SDK) and pty_ws.mjs (its PTY API over npm's ws,
# since the SDK has no PTY calls), installed from npm at the versions package-lock.json pins,
# against the moat-execd given. Exits 77 (ctest: skipped, with the
# reason printed) only when the npm registry does not answer, or, outside CI (CI=true), without
# Node.js 20 or newer. Any other failure of npm ci (a bad lock file, say) fails the test.
# usage: run.sh <moat-execd> <work-dir>
set -euo pipefail
execd="${1:?usage: $0 <moat-execd> <work-dir>}"
work="${2:?usage: $0 <moat-execd> <work-dir>}"
here="$(cd "$(dirname "$0")" && pwd)"

# A skip for what CI's machine has is a failure there.
skip_unless_ci() {
  if [ "${CI:-}" = true ]; then
    echo "sdk_compat: CI can run this test, but: $1"
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
  skip_unless_ci "the SDK needs Node.js 20 or newer; this is $(node --version)"
fi
if ! npm ping --fetch-timeout=30000 --fetch-retries=1 >/dev/null 2>&1; then
  echo "SKIP: the npm registry ($(npm config get registry)) does not answer"
  exit 77
fi
mkdir -p "$work"
# The script is copied next to node_modules: ES modules resolve packages from their own path.
cp "$here/package.json" "$here/package-lock.json" "$here/sdk_compat.mjs" "$here/pty_ws.mjs" "$work/"
cd "$work"
if ! npm ci --no-audit --no-fund --fetch-timeout=30000 --fetch-retries=1 >npm.log 2>&1; then
  cat npm.log
  echo "sdk_compat: npm ci failed with the registry answering (above)"
  exit 1
fi
node sdk_compat.mjs "$execd"
exec node pty_ws.mjs "$execd"
