#!/usr/bin/env bash
# Starts a Docker engine for moat's tests and demo if none answers yet:
# `dockerd --iptables=false --bridge=none`, storage driver overlay2, falling back
# to vfs where overlay2 cannot mount. Idempotent. Logs to $MOAT_STATE_DIR/dockerd.log.
set -euo pipefail

state_dir="${MOAT_STATE_DIR:-/var/lib/moat}"
sock="${MOAT_DOCKER_SOCKET:-/var/run/docker.sock}"
mkdir -p "$state_dir"
DOCKER="${DOCKER:-/usr/bin/docker}"
[ -x "$DOCKER" ] || DOCKER=docker

answers() { "$DOCKER" -H "unix://$sock" version >/dev/null 2>&1; }

if answers; then
  echo "start-dockerd: engine already answering on $sock"
  exit 0
fi
command -v dockerd >/dev/null || { echo "start-dockerd: dockerd missing: apt-get install docker.io" >&2; exit 1; }

try_start() {
  local driver="$1"
  echo "start-dockerd: starting dockerd with storage driver $driver"
  # A stale pid file from a killed engine blocks a new start.
  rm -f /var/run/docker.pid
  # A session of its own: the engine outlives whoever started it (a terminal, a CI step, a
  # tool whose process group is killed when it ends) and serves the runs that come after.
  setsid nohup dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver="$driver" \
    -H "unix://$sock" >>"$state_dir/dockerd.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 60); do
    if answers; then
      echo "start-dockerd: engine up (pid $pid, driver $driver)"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return 1
}

try_start overlay2 || try_start vfs || {
  echo "start-dockerd: dockerd would not start; last log lines:" >&2
  tail -n 20 "$state_dir/dockerd.log" >&2
  exit 1
}
