#!/usr/bin/env bash
# A private Docker engine with gVisor's runsc registered as the OCI runtime "runsc" (runc stays
# the default), for tests and benchmarks that must leave the host's own engine alone. Everything
# it makes lives in one directory DIR:
#   DIR/docker.sock    the engine's API (DOCKER_HOST=unix://DIR/docker.sock)
#   DIR/daemon.json    its own --config-file with the runtimes; /etc/docker/daemon.json is not read
#   DIR/data, DIR/exec its --data-root and --exec-root
#   DIR/containerd/    its own containerd: config, root, state, socket, pid file
#   DIR/*.log          dockerd's and containerd's logs
#
# usage: scripts/dockerd-runsc.sh start DIR   DIR absent or empty; waits until the engine answers
#        scripts/dockerd-runsc.sh stop DIR    stops every process start made, unmounts what is
#                                             still mounted under DIR and removes DIR; safe to run
#                                             on a half-started DIR, and twice
# env: MOAT_RUNSC (default /usr/bin/runsc), DOCKER (default /usr/bin/docker)
#
# The engine gets a containerd of its own, passed with --containerd: left to itself, dockerd 20.10
# adopts /run/containerd/containerd.sock whenever that socket exists, and would then share one
# containerd (and its namespace "moby") with every other engine on the host.
set -euo pipefail

usage() {
  echo "usage: $0 start|stop DIR" >&2
  exit 2
}
[ $# -eq 2 ] || usage
action="$1"
dir="$2"
case "$dir" in
  /?*) dir="${dir%/}" ;;
  *) echo "dockerd-runsc: DIR must be an absolute path, got '$dir'" >&2; exit 2 ;;
esac
# Written by start; stop removes only directories that carry it.
marker="$dir/.moat-dockerd-runsc"
runsc="${MOAT_RUNSC:-/usr/bin/runsc}"
DOCKER="${DOCKER:-/usr/bin/docker}"
[ -x "$DOCKER" ] || DOCKER=docker
sock="$dir/docker.sock"
ctd="$dir/containerd"

answers() { "$DOCKER" -H "unix://$sock" version >/dev/null 2>&1; }

# The pid in file $1, when that process still runs and its command line names DIR (so a pid
# reused by another process is never signalled).
our_pid() {
  local pid
  [ -f "$1" ] || return 1
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir" || return 1
  echo "$pid"
}

# SIGTERM, then SIGKILL after $2 seconds.
stop_pid_file() {
  local pid
  pid="$(our_pid "$1")" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 $(($2 * 10))); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "dockerd-runsc: pid $pid ignored SIGTERM for $2 s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

# Processes whose command line names DIR: containerd's shims, runsc's sandboxes and gofers left
# behind when dockerd or containerd did not stop cleanly.
stray_pids() {
  local f pid
  for f in /proc/[0-9]*/cmdline; do
    pid="${f#/proc/}"
    pid="${pid%/cmdline}"
    [ "$pid" != $$ ] || continue
    # A process may end while the loop runs: its cmdline is then gone, and that is fine.
    { tr '\0' ' ' <"$f"; } 2>/dev/null | grep -qF -- "$dir/" && echo "$pid"
  done
  return 0
}

# Mount points under DIR, deepest first.
mounts_under() {
  awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

stop_engine() {
  [ -f "$marker" ] || {
    [ -e "$dir" ] && echo "dockerd-runsc: $dir was not made by '$0 start'; left alone" >&2
    return 0
  }
  # dockerd stops its containers on SIGTERM; containerd then has nothing left to run.
  stop_pid_file "$dir/dockerd.pid" 60
  stop_pid_file "$ctd/containerd.pid" 20
  local pids
  mapfile -t pids < <(stray_pids)
  if [ ${#pids[@]} -gt 0 ]; then
    echo "dockerd-runsc: killing leftover processes of $dir: ${pids[*]}" >&2
    kill -KILL "${pids[@]}" 2>/dev/null || true
    sleep 0.5
  fi
  local m
  for m in $(mounts_under); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  if [ -n "$(mounts_under)" ]; then
    echo "dockerd-runsc: still mounted under $dir, not removed: $(mounts_under | tr '\n' ' ')" >&2
    return 1
  fi
  # --one-file-system: never follow a mount that survived into another file system.
  rm -rf --one-file-system "$dir"
}

start_engine() {
  [ -x "$runsc" ] || { echo "dockerd-runsc: $runsc missing: apt-get install runsc" >&2; return 1; }
  command -v dockerd >/dev/null || { echo "dockerd-runsc: dockerd missing: apt-get install docker.io" >&2; return 1; }
  command -v containerd >/dev/null || { echo "dockerd-runsc: containerd missing: apt-get install containerd" >&2; return 1; }
  mkdir -p "$dir"
  if [ -n "$(ls -A "$dir")" ]; then
    echo "dockerd-runsc: $dir is not empty" >&2
    return 1
  fi
  # Unix socket paths are limited to 107 bytes; containerd's longest is this one.
  if [ ${#ctd} -gt 80 ]; then
    echo "dockerd-runsc: $dir is too long a path for the engine's sockets" >&2
    return 1
  fi
  touch "$marker"
  mkdir -p "$ctd/root" "$ctd/state" "$ctd/opt" "$dir/data" "$dir/exec"
  cat >"$ctd/config.toml" <<EOF
version = 2
root = "$ctd/root"
state = "$ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$ctd/containerd.sock"
[ttrpc]
  address = "$ctd/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$ctd/opt"
EOF
  # --network=none: runsc refuses a network in the root network namespace, and sandboxes have
  # none anyway. --host-uds=create: execd's Unix socket, made inside on a bind mount, must
  # appear on the host. --platform=ptrace: works without KVM.
  cat >"$dir/daemon.json" <<EOF
{"runtimes": {"runsc": {"path": "$runsc", "runtimeArgs": ["--network=none", "--platform=ptrace", "--host-uds=create"]}}}
EOF

  containerd --config "$ctd/config.toml" >>"$dir/containerd.log" 2>&1 &
  echo $! >"$ctd/containerd.pid"
  for _ in $(seq 1 100); do
    [ -S "$ctd/containerd.sock" ] && break
    kill -0 "$(cat "$ctd/containerd.pid")" 2>/dev/null || break
    sleep 0.1
  done
  if [ ! -S "$ctd/containerd.sock" ]; then
    echo "dockerd-runsc: containerd did not start; last log lines:" >&2
    tail -n 20 "$dir/containerd.log" >&2
    return 1
  fi

  local driver pid
  for driver in overlay2 vfs; do
    echo "dockerd-runsc: starting dockerd on $sock with storage driver $driver"
    dockerd --config-file "$dir/daemon.json" --data-root "$dir/data" --exec-root "$dir/exec" \
      --pidfile "$dir/dockerd.pid" -H "unix://$sock" --containerd "$ctd/containerd.sock" \
      --iptables=false --ip6tables=false --bridge=none --storage-driver="$driver" \
      >>"$dir/dockerd.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 60); do
      if answers; then
        echo "dockerd-runsc: engine up (pid $pid, driver $driver, runtimes runc and runsc)"
        return 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf --one-file-system "$dir/data"
    mkdir -p "$dir/data"
  done
  echo "dockerd-runsc: dockerd would not start; last log lines:" >&2
  tail -n 20 "$dir/dockerd.log" >&2
  return 1
}

case "$action" in
  start)
    if ! start_engine; then
      stop_engine || true
      exit 1
    fi
    ;;
  stop) stop_engine ;;
  *) usage ;;
esac
