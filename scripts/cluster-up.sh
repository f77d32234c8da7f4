#!/usr/bin/env bash
# Brings up a local moat cluster on this machine (docs/CLUSTER.md, "A local cluster"):
#   - a bridge <prefix>-br0 in the host's network namespace, holding <net>.1/24;
#   - three etcd members, each in a network namespace <prefix>-e<k> at <net>.<1+k>
#     (client port 2379, peer port 2380);
#   - N nodes, each a network namespace <prefix>-n<i> at <net>.<10+i> with its own dockerd
#     (private socket, data-root and exec-root; --iptables=false --bridge=none, as
#     scripts/start-dockerd.sh) and its own moatd listening on <net>.<10+i>:7070, a member of
#     the cluster as node n<i> (its record in etcd under /moat/v1/nodes/n<i>);
#   each namespace joined to the bridge by a veth pair <prefix>-h<x> (host side) / eth0.
# Prints the client addresses, the token and the etcd endpoints.
#
# Usage: scripts/cluster-up.sh N      (1 <= N <= 32; as root)
# Environment (defaults):
#   MOAT_CLUSTER_PREFIX  moat-cl              names of namespaces and links (at most 8 characters)
#   MOAT_CLUSTER_NET     10.213.0             the /24 used, which must not be routed here yet
#   MOAT_CLUSTER_DIR     /tmp/<prefix>        state, logs, data, and the manifest
#   MOAT_BUILD_DIR       <repo>/build         where moatd (src/server/moatd) and execd-bundle are
#   MOAT_CLUSTER_IMAGE   moat-sandbox:latest  copied from the host's engine into each node's
#   MOAT_ETCD            /usr/bin/etcd
#
# Everything made is written to <dir>/manifest BEFORE it is made, so scripts/cluster-down.sh
# removes exactly that, even after a cluster-up that failed half way. Idempotent: with the same
# cluster already up and every process alive it only prints; otherwise it removes what a
# previous run left and starts again.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
n="${1:-}"
prefix="${MOAT_CLUSTER_PREFIX:-moat-cl}"
net="${MOAT_CLUSTER_NET:-10.213.0}"
dir="${MOAT_CLUSTER_DIR:-/tmp/$prefix}"
build="${MOAT_BUILD_DIR:-$repo/build}"
image="${MOAT_CLUSTER_IMAGE:-moat-sandbox:latest}"
etcd_bin="${MOAT_ETCD:-/usr/bin/etcd}"
moatd="$build/src/server/moatd"
manifest="$dir/manifest"

die() { echo "cluster-up: $*" >&2; exit 1; }

if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt 32 ]; then
  die "usage: $0 N (1..32 nodes)"
fi
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, dockerd)"
[[ "$prefix" =~ ^[a-z][a-z0-9-]{0,7}$ ]] || die "MOAT_CLUSTER_PREFIX: 1-8 of [a-z0-9-]"
[[ "$net" =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "MOAT_CLUSTER_NET: three octets"
[ -x "$moatd" ] || die "no moatd at $moatd: build first (scripts/build.sh) or set MOAT_BUILD_DIR"
command -v ip >/dev/null || die "ip missing: apt-get install iproute2"
command -v dockerd >/dev/null || die "dockerd missing: apt-get install docker.io"

br="$prefix-br0"
node_addr() { echo "$net.$((10 + $1))"; }
etcd_addr() { echo "$net.$((1 + $1))"; }
token_file="$dir/token"

# The pid in a pid file, when that process is alive and is one this cluster started.
ours() {
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/"
}

already_up() {
  [ -f "$manifest" ] && grep -qx "complete $n" "$manifest" || return 1
  local f
  while read -r f; do
    ours "$f" || return 1
  done < <(awk '$1 == "proc" {print $3}' "$manifest")
}

print_cluster() {
  echo "moat cluster of $n nodes ($prefix, $net.0/24, state in $dir)"
  for i in $(seq 1 "$n"); do
    echo "node $i: MOAT_ADDR=$(node_addr "$i"):7070"
  done
  echo "MOAT_TOKEN=$(cat "$token_file")"
  local eps=()
  for k in 1 2 3; do eps+=("http://$(etcd_addr "$k"):2379"); done
  echo "etcd: $(IFS=,; echo "${eps[*]}")"
}

if already_up; then
  print_cluster
  exit 0
fi
if [ -f "$manifest" ]; then
  echo "cluster-up: removing what a previous run left"
  MOAT_CLUSTER_DIR="$dir" "$repo/scripts/cluster-down.sh"
fi
if ip -4 route | grep -q "^$net\."; then
  die "$net.0/24 is already routed here; choose another MOAT_CLUSTER_NET"
fi
if ip link show "$br" >/dev/null 2>&1 || ip netns list | grep -q "^$prefix-"; then
  die "links or namespaces named $prefix-* exist that no manifest in $dir records; not touching them"
fi

mkdir -p "$dir"
chmod 0700 "$dir"
: >"$manifest"
record() { echo "$*" >>"$manifest"; }

head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$token_file"

record "link $br"
ip link add "$br" type bridge
ip addr add "$net.1/24" dev "$br"
ip link set "$br" up

# A namespace joined to the bridge: $1 its name, $2 its host-side link, $3 its address.
make_ns() {
  record "netns $1"
  ip netns add "$1"
  record "link $2"
  ip link add "$2" type veth peer name eth0 netns "$1"
  ip link set "$2" master "$br" up
  ip -n "$1" addr add "$3/24" dev eth0
  ip -n "$1" link set lo up
  ip -n "$1" link set eth0 up
}

# Starts a process in a namespace (nsenter, not `ip netns exec`, which remounts /sys and breaks
# dockerd): $1 namespace, $2 pid file, $3 log, then the command. It dies with nothing else.
start_in() {
  local ns="$1" pidfile="$2" log="$3"
  shift 3
  record "proc $(basename "$pidfile" .pid) $pidfile"
  setsid nsenter --net="/var/run/netns/$ns" "$@" >>"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

# Waits (bounded) for a condition; $1 what, $2 the pid file of the process that must stay up.
wait_for() {
  local what="$1" pidfile="$2"
  shift 2
  for _ in $(seq 1 120); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    ours "$pidfile" || die "$what exited; see its log in $dir"
    sleep 0.5
  done
  die "$what did not come up; see its log in $dir"
}

# etcd, three members.
initial=""
for k in 1 2 3; do
  initial+="${initial:+,}e$k=http://$(etcd_addr "$k"):2380"
done
for k in 1 2 3; do
  ns="$prefix-e$k"
  a="$(etcd_addr "$k")"
  make_ns "$ns" "$prefix-he$k" "$a"
  mkdir -p "$dir/e$k"
  start_in "$ns" "$dir/e$k/etcd.pid" "$dir/e$k/etcd.log" "$etcd_bin" --name "e$k" \
    --data-dir "$dir/e$k/data" --listen-client-urls "http://$a:2379" \
    --advertise-client-urls "http://$a:2379" --listen-peer-urls "http://$a:2380" \
    --initial-advertise-peer-urls "http://$a:2380" --initial-cluster "$initial" \
    --initial-cluster-token "$dir" --initial-cluster-state new
done
etcd_put() { curl -sf -m 2 -X POST "http://$1:2379/v3/kv/put" -d '{"key":"bW9hdA==","value":"MQ=="}'; }
for k in 1 2 3; do
  wait_for "etcd member e$k" "$dir/e$k/etcd.pid" etcd_put "$(etcd_addr "$k")"
done

# Nodes: a dockerd and a moatd each, the moatd a member of the cluster (docs/CLUSTER.md).
etcd_endpoints=""
for k in 1 2 3; do
  etcd_endpoints+="${etcd_endpoints:+,}http://$(etcd_addr "$k"):2379"
done
for i in $(seq 1 "$n"); do
  ns="$prefix-n$i"
  a="$(node_addr "$i")"
  d="$dir/n$i"
  make_ns "$ns" "$prefix-h$i" "$a"
  mkdir -p "$d/state"
  record "mounts $d"
  start_in "$ns" "$d/dockerd.pid" "$d/dockerd.log" dockerd --data-root "$d/docker" \
    --exec-root "$d/x" --pidfile "$d/docker.pid" -H "unix://$d/docker.sock" \
    --iptables=false --ip6tables=false --bridge=none
  wait_for "dockerd of node $i" "$d/dockerd.pid" docker -H "unix://$d/docker.sock" version
  if docker image inspect "$image" >/dev/null 2>&1; then
    docker save "$image" | docker -H "unix://$d/docker.sock" load >/dev/null
  else
    echo "cluster-up: $image is not in this host's engine (scripts/build-sandbox-image.sh);" \
      "node $i will have no sandbox image" >&2
  fi
  start_in "$ns" "$d/moatd.pid" "$d/moatd.log" "$moatd" --listen="$a:7070" \
    --token="$(cat "$token_file")" --docker_host="$d/docker.sock" --state_dir="$d/state" \
    --image="$image" --allowed_images="$image" --instance="$prefix-n$i" \
    --container_name_prefix="$prefix-n$i-" --workspace_quota=false \
    --cluster_etcd_endpoints="$etcd_endpoints" --cluster_node_id="n$i" \
    --cluster_advertise="$a:7070"
  wait_for "moatd of node $i" "$d/moatd.pid" \
    env MOAT_ADDR="$a:7070" MOAT_TOKEN="$(cat "$token_file")" "$build/src/client/moat" health
done

record "complete $n"
print_cluster
