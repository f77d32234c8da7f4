#!/usr/bin/env bash
# Removes exactly what scripts/cluster-up.sh made, as its manifest records it (also after a
# cluster-up that failed half way), newest first: its processes (SIGTERM, SIGKILL after 20 s,
# and a dockerd's containerd), the mounts under its directory, its links and namespaces, then
# the directory (with the token, the logs, the data, and the keys and certificates of --tls).
# Anything the manifest does not name is left alone. Idempotent.
#
# Usage: scripts/cluster-down.sh   (as root; MOAT_CLUSTER_PREFIX / MOAT_CLUSTER_DIR as for up)
set -euo pipefail

prefix="${MOAT_CLUSTER_PREFIX:-moat-cl}"
dir="${MOAT_CLUSTER_DIR:-/tmp/$prefix}"
manifest="$dir/manifest"

if [ ! -f "$manifest" ]; then
  echo "cluster-down: no cluster in $dir"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "cluster-down: needs root" >&2; exit 1; }

# A pid that is alive and whose command line names this cluster's directory, or nothing.
ours() {
  local pid="$1"
  [ -n "$pid" ] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$dir/" &&
    echo "$pid"
}

stop_pid() {
  local pid="$1"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# The containerd a dockerd started, from its pid file under the node's exec-root.
stop_containerd() {
  local node_dir pid
  node_dir="$(dirname "$1")"
  pid="$(ours "$(cat "$node_dir/x/containerd/containerd.pid" 2>/dev/null)")" || return 0
  stop_pid "$pid"
}

unmount_under() {
  # Deepest first; only mount points under this cluster's directory.
  awk -v d="$1/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

tac "$manifest" | while read -r kind name extra; do
  case "$kind" in
    proc)
      pid="$(ours "$(cat "$extra" 2>/dev/null)")" && stop_pid "$pid"
      [ "$name" = dockerd ] && stop_containerd "$extra"
      ;;
    mounts) unmount_under "$name" ;;
    link) ip link del "$name" 2>/dev/null || true ;;
    netns) ip netns del "$name" 2>/dev/null || true ;;
    complete) ;;
  esac
done
unmount_under "$dir"
rm -rf "$dir"
echo "cluster-down: removed the cluster in $dir"
