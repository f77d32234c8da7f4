#!/usr/bin/env bash
# Runs sdk_compat.mjs: OpenSandbox's TypeScript SDK, installed from npm at the versions
# package-lock.json pins, against the moat-execd given. Exits 77 (ctest: skipped, with the
# reason printed) when this machine cannot run it: no Node.js 20 or newer, or no npm registry.
# usage: run.sh <moat-execd> <work-dir>
set -euo pipefail
execd="${1:?usage: $0 <moat-execd> <work-dir>}"
work="${2:?usage: $0 <moat-execd> <work-dir>}"
here="$(cd "$(dirname "$0")" && pwd)"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "SKIP: Node.js and npm are not installed"
  exit 77
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
  echo "SKIP: the SDK needs Node.js 20 or newer; this is $(node --version)"
  exit 77
fi
mkdir -p "$work"
# The script is copied next to node_modules: ES modules resolve packages from their own path.
cp "$here/package.json" "$here/package-lock.json" "$here/sdk_compat.mjs" "$work/"
cd "$work"
if ! npm ci --no-audit --no-fund --fetch-timeout=30000 --fetch-retries=1 >npm.log 2>&1; then
  cat npm.log
  echo "SKIP: npm could not install the pinned SDK (above)"
  exit 77
fi
exec node sdk_compat.mjs "$execd"
