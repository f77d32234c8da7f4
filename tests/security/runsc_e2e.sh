#!/usr/bin/env bash
# The Docker end-to-end suite (tests/e2e/test_e2e_raw.c) with every sandbox under gVisor: a private
# dockerd with runsc registered (scripts/dockerd-runsc.sh, removed again on any exit), the sandbox
# minimal image imported into it, and moatd given MOAT_DOCKER_HOST and MOAT_RUNTIME=runsc. The suite checks
# each sandbox's HostConfig.Runtime and that the kernel it sees is gVisor's.
# Exits 77 (skipped), with the reason on stdout, only where runsc cannot run here: not installed
# (a failure under CI=true: scripts/install-deps.sh installs it), or failing to run a container on
# an engine that otherwise works.
# usage: runsc_e2e.sh <test_e2e_raw binary>   (env: MOAT_BUILD_DIR, MOAT_SOURCE_DIR, MOAT_RUNSC)
set -euo pipefail

suite="${1:?usage: $0 <test_e2e_raw binary>}"
src="${MOAT_SOURCE_DIR:?set MOAT_SOURCE_DIR}"
build="${MOAT_BUILD_DIR:?set MOAT_BUILD_DIR}"
runsc="${MOAT_RUNSC:-/usr/bin/runsc}"

if [ ! -x "$runsc" ]; then
  if [ "${CI:-}" = true ]; then
    echo "runsc_e2e: $runsc is not installed, and CI installs it (scripts/install-deps.sh)"
    exit 1
  fi
  echo "SKIP: $runsc is not installed (apt-get install runsc, or scripts/install-deps.sh)"
  exit 77
fi

dir="$(mktemp -d /tmp/moat-runsc-e2e-XXXXXX)"
finish() {
  local status=$?
  if [ "$status" -ne 0 ] && [ "$status" -ne 77 ] && [ -f "$dir/dockerd.log" ]; then
    echo "---- last lines of the private dockerd's log" >&2
    tail -n 30 "$dir/dockerd.log" >&2
  fi
  "$src/scripts/dockerd-runsc.sh" stop "$dir" || status=1
  exit "$status"
}
trap finish EXIT

"$src/scripts/dockerd-runsc.sh" start "$dir"
export DOCKER_HOST="unix://$dir/docker.sock"
"$src/scripts/build-sandbox-image.sh" "$build" minimal >/dev/null

# runsc itself, on an engine that just ran the image under runc (build-sandbox-image.sh's check).
if ! probe="$(docker run --rm --runtime=runsc --network none moat-sandbox:latest \
  cat /proc/version 2>&1)"; then
  echo "SKIP: runsc cannot run a container on this host: $probe"
  exit 77
fi
echo "runsc_e2e: a container under runsc sees: $probe"

MOAT_DOCKER_HOST="$DOCKER_HOST" MOAT_RUNTIME=runsc "$suite"
