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
# Usage: scripts/cluster-up.sh [--tls] N      (1 <= N <= 32; as root)
#   --tls  etcd speaks only TLS, to clients and between members, and takes only clients with a
#          certificate (--client-cert-auth, --peer-client-cert-auth). A throwaway CA (its key
#          deleted once it has signed), a certificate per member for its address (server and
#          client use: etcd's JSON gateway and its peers present it as a client) and one client
#          certificate for the moatds are made with openssl under <dir>/tls; each moatd gets
#          cluster_etcd_tls_ca, _cert and _key. The paths are printed in moatd's setting names.
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
tls=0
if [ "${1:-}" = --tls ]; then
  tls=1
  shift
fi
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

if [ "$#" -ne 1 ] || ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt 32 ]; then
  die "usage: $0 [--tls] N (1..32 nodes)"
fi
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, dockerd)"
[[ "$prefix" =~ ^[a-z][a-z0-9-]{0,7}$ ]] || die "MOAT_CLUSTER_PREFIX: 1-8 of [a-z0-9-]"
[[ "$net" =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "MOAT_CLUSTER_NET: three octets"
[ -x "$moatd" ] || die "no moatd at $moatd: build first (scripts/build.sh) or set MOAT_BUILD_DIR"
command -v ip >/dev/null || die "ip missing: apt-get install iproute2"
command -v dockerd >/dev/null || die "dockerd missing: apt-get install docker.io"
[ "$tls" -eq 0 ] || command -v openssl >/dev/null || die "openssl missing: apt-get install openssl"

br="$prefix-br0"
node_addr() { echo "$net.$((10 + $1))"; }
etcd_addr() { echo "$net.$((1 + $1))"; }
token_file="$dir/token"
pki="$dir/tls"
# What the cluster is: a cluster up in the other mode is not this one.
mode="$([ "$tls" -eq 1 ] && echo tls || echo plain)"
scheme="$([ "$tls" -eq 1 ] && echo https || echo http)"
# curl's options for this cluster's etcd (the moatds' client certificate).
etcd_curl=(curl -sf -m 2)
if [ "$tls" -eq 1 ]; then
  etcd_curl+=(--cacert "$pki/ca.pem" --cert "$pki/client.pem" --key "$pki/client.key")
fi

# The pid in a pid file, when that process is alive and is one this cluster started.
ours() {
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/"
}

already_up() {
  [ -f "$manifest" ] && grep -qx "complete $n $mode" "$manifest" || return 1
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
  for k in 1 2 3; do eps+=("$scheme://$(etcd_addr "$k"):2379"); done
  echo "etcd: $(IFS=,; echo "${eps[*]}")"
  if [ "$tls" -eq 1 ]; then
    echo "cluster_etcd_tls_ca=$pki/ca.pem"
    echo "cluster_etcd_tls_cert=$pki/client.pem"
    echo "cluster_etcd_tls_key=$pki/client.key"
  fi
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

# The throwaway PKI (--tls): P-256 keys, a day of validity, and only its own openssl settings (the
# host's openssl.cnf cannot add extensions).
new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
# A certificate signed by the CA: $1 its name, $2 its extended key usage, $3 its subjectAltName
# (or nothing).
sign() {
  new_key "$pki/$1.key"
  openssl req -config "$pki/req.cnf" -new -key "$pki/$1.key" -subj "/CN=$prefix $1" \
    -out "$pki/$1.csr"
  {
    echo "basicConstraints = critical, CA:FALSE"
    echo "keyUsage = critical, digitalSignature"
    echo "extendedKeyUsage = $2"
    echo "subjectKeyIdentifier = hash"
    echo "authorityKeyIdentifier = keyid"
    [ -z "$3" ] || echo "subjectAltName = $3"
  } >"$pki/$1.ext"
  openssl x509 -req -days 1 -in "$pki/$1.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
    -set_serial "0x$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" -extfile "$pki/$1.ext" \
    -out "$pki/$1.pem" 2>/dev/null
  rm -f "$pki/$1.csr" "$pki/$1.ext"
}
make_pki() {
  mkdir -m 0700 "$pki"
  printf '%s\n' "[req]" "distinguished_name = dn" "prompt = no" "[dn]" "CN = $prefix" "[ca]" \
    "basicConstraints = critical, CA:TRUE" "keyUsage = critical, keyCertSign" \
    "subjectKeyIdentifier = hash" >"$pki/req.cnf"
  new_key "$pki/ca.key"
  openssl req -config "$pki/req.cnf" -new -x509 -days 1 -key "$pki/ca.key" \
    -subj "/CN=$prefix throwaway etcd CA" -extensions ca -out "$pki/ca.pem"
  # A member's certificate names its address and is a client's too: its peers and its own JSON
  # gateway present it to --client-cert-auth.
  for k in 1 2 3; do sign "e$k" "serverAuth, clientAuth" "IP:$(etcd_addr "$k")"; done
  sign client clientAuth ""
  # Nothing more is signed: a CA key left lying about could only certify strangers.
  rm -f "$pki/ca.key" "$pki/req.cnf"
}
[ "$tls" -eq 0 ] || make_pki

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
# Alive is enough here, not ours: until the child start_in forked has exec'd (which a loaded
# host can delay past the first check), its command line is still this script's.
wait_for() {
  local what="$1" pidfile="$2"
  shift 2
  for _ in $(seq 1 120); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    kill -0 "$(cat "$pidfile")" 2>/dev/null || die "$what exited; see its log in $dir"
    sleep 0.5
  done
  die "$what did not come up; see its log in $dir"
}

# etcd, three members.
initial=""
for k in 1 2 3; do
  initial+="${initial:+,}e$k=$scheme://$(etcd_addr "$k"):2380"
done
for k in 1 2 3; do
  ns="$prefix-e$k"
  a="$(etcd_addr "$k")"
  make_ns "$ns" "$prefix-he$k" "$a"
  mkdir -p "$dir/e$k"
  member_tls=()
  if [ "$tls" -eq 1 ]; then
    member_tls=(--cert-file "$pki/e$k.pem" --key-file "$pki/e$k.key" --trusted-ca-file "$pki/ca.pem"
      --client-cert-auth --peer-cert-file "$pki/e$k.pem" --peer-key-file "$pki/e$k.key"
      --peer-trusted-ca-file "$pki/ca.pem" --peer-client-cert-auth)
  fi
  start_in "$ns" "$dir/e$k/etcd.pid" "$dir/e$k/etcd.log" "$etcd_bin" --name "e$k" \
    --data-dir "$dir/e$k/data" --listen-client-urls "$scheme://$a:2379" \
    --advertise-client-urls "$scheme://$a:2379" --listen-peer-urls "$scheme://$a:2380" \
    --initial-advertise-peer-urls "$scheme://$a:2380" --initial-cluster "$initial" \
    --initial-cluster-token "$dir" --initial-cluster-state new "${member_tls[@]}"
done
etcd_put() {
  "${etcd_curl[@]}" -X POST "$scheme://$1:2379/v3/kv/put" -d '{"key":"bW9hdA==","value":"MQ=="}'
}
for k in 1 2 3; do
  wait_for "etcd member e$k" "$dir/e$k/etcd.pid" etcd_put "$(etcd_addr "$k")"
done

# Nodes: a dockerd and a moatd each, the moatd a member of the cluster (docs/CLUSTER.md).
etcd_endpoints=""
for k in 1 2 3; do
  etcd_endpoints+="${etcd_endpoints:+,}$scheme://$(etcd_addr "$k"):2379"
done
moatd_tls=()
if [ "$tls" -eq 1 ]; then
  moatd_tls=(--cluster_etcd_tls_ca="$pki/ca.pem" --cluster_etcd_tls_cert="$pki/client.pem"
    --cluster_etcd_tls_key="$pki/client.key")
fi
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
    --cluster_advertise="$a:7070" "${moatd_tls[@]}"
  wait_for "moatd of node $i" "$d/moatd.pid" \
    env MOAT_ADDR="$a:7070" MOAT_TOKEN="$(cat "$token_file")" "$build/src/client/moat" health
done

record "complete $n $mode"
print_cluster
