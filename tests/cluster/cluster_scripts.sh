#!/usr/bin/env bash
# scripts/cluster-up.sh and scripts/cluster-down.sh, for real: a cluster of two nodes under a
# prefix and a /24 of this run's own (mc<pid>, 10.214.<free>), so neither a developer's moat-cl
# cluster nor another run of this test at the same time is touched. Each node's moatd answers
# Health from the host, creates a session that runs a command, which the session's record in
# etcd says which node holds (that node's dockerd has its container, and the node runs it without
# a redirect), and is listed as a member in etcd, which takes a write on every member. A second
# cluster-up is a no-op. With "tls" the cluster is cluster-up --tls's: its members take https://
# with the cluster's client certificate only (not http://, not without a certificate, on the
# client port as on the peer port), and a moatd given the CA but no client certificate starts
# fenced, logging etcd_tls_failed, and is never listed; a plain cluster-up over it starts the
# cluster again plain, its keys gone. The faults: a node cut off from etcd fences itself (creates
# refused, its session still serving, its lease expired) and comes back; one etcd member killed
# leaves both nodes members and creating. cluster-down leaves no namespace, link, process, mount
# or directory behind, and a second one is a no-op; a cluster-up that fails half way (etcd
# cannot start; with --tls, its keys made) is removed as cleanly. Whatever happens, the trap removes the cluster. Skipped
# (77) without root, dockerd or etcd, except under CI=true, whose machine has them.
# usage: cluster_scripts.sh [plain|tls]   (env: MOAT_SOURCE_DIR, by default the checkout this
# script is in; MOAT_BUILD_DIR, by default its build/, as scripts/cluster-up.sh takes it)
set -euo pipefail

mode="${1:-plain}"
case "$mode" in
  plain) up_flags=() ;;
  tls) up_flags=(--tls) ;;
  *) echo "usage: $0 [plain|tls]" >&2; exit 2 ;;
esac

src="${MOAT_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
build="${MOAT_BUILD_DIR:-$src/build}"
[ -x "$build/src/server/moatd" ] ||
  { echo "cluster_scripts.sh: no moatd at $build/src/server/moatd: build it, or set MOAT_BUILD_DIR" >&2; exit 1; }
# Namespaces, links and routes are the host's: a name and a /24 no other run uses (an octet
# below 200 that nothing routes yet, starting from this run's pid).
prefix="mc$(( $$ % 1000000 ))"
net=""
for i in $(seq 0 199); do
  candidate="10.214.$(( ($$ + i) % 200 ))"
  if ! ip route | grep -q "^$candidate\."; then
    net="$candidate"
    break
  fi
done
[ -n "$net" ] || { echo "cluster_scripts: no free /24 under 10.214"; exit 1; }
export MOAT_CLUSTER_PREFIX="$prefix" MOAT_CLUSTER_NET="$net" MOAT_BUILD_DIR="$build"
export MOAT_CLUSTER_DIR="/tmp/moat-$prefix"
up="$src/scripts/cluster-up.sh"
down="$src/scripts/cluster-down.sh"
moat="$build/src/client/moat"

skip() {
  if [ "${CI:-}" = true ]; then
    echo "cluster_scripts: CI can run this test, but: $1"
    exit 1
  fi
  echo "SKIP: $1"
  exit 77
}
[ "$(id -u)" -eq 0 ] || skip "needs root (network namespaces)"
command -v dockerd >/dev/null || skip "dockerd is not installed"
[ -x /usr/bin/etcd ] || skip "etcd is not installed (apt-get install etcd-server)"
docker version >/dev/null 2>&1 || skip "no Docker engine answers (scripts/start-dockerd.sh)"

fail() {
  echo "cluster_scripts: FAIL: $*" >&2
  exit 1
}

finish() {
  local status=$?
  if [ "$status" -ne 0 ] && [ -d "$MOAT_CLUSTER_DIR" ]; then
    for log in "$MOAT_CLUSTER_DIR"/*/*.log; do
      echo "---- last lines of $log" >&2
      tail -n 10 "$log" >&2
    done
  fi
  # The moatd this test started itself (tls), before the cluster it is in goes.
  local pid
  pid="$(cat "$MOAT_CLUSTER_DIR/nocert/moatd.pid" 2>/dev/null)" && kill -KILL "$pid" 2>/dev/null
  "$down" >/dev/null || status=1
  exit "$status"
}
trap finish EXIT

# Nothing of this cluster is left: namespaces, links, processes, mounts, directory.
assert_gone() {
  ! ip netns list | grep -q "^$prefix-" || fail "namespaces left: $(ip netns list)"
  ! ip -br link | grep -q "^$prefix-" || fail "links left"
  ! grep -qF "$MOAT_CLUSTER_DIR/" /proc/self/mountinfo || fail "mounts left"
  ! pgrep -f "$MOAT_CLUSTER_DIR/" >/dev/null || fail "processes left: $(pgrep -af "$MOAT_CLUSTER_DIR/")"
  [ ! -e "$MOAT_CLUSTER_DIR" ] || fail "$MOAT_CLUSTER_DIR left"
}

"$src/scripts/build-sandbox-image.sh" "$build" minimal >/dev/null

# A cluster this test did not make, under its name, is not ours to remove.
[ ! -e "$MOAT_CLUSTER_DIR" ] || fail "$MOAT_CLUSTER_DIR exists before the test"

# Arguments other than [--tls] N are refused before anything is made (an option after N is not
# silently dropped).
for args in "" "--tls" "2 --tls" "--bogus 2" "--tls --tls 2" "0" "33" "2x"; do
  said="$("$up" $args 2>&1)" && fail "cluster-up $args succeeded"
  grep -q "usage" <<<"$said" || fail "cluster-up $args: $said"
  [ ! -e "$MOAT_CLUSTER_DIR" ] || fail "cluster-up $args made $MOAT_CLUSTER_DIR"
done

out="$("$up" "${up_flags[@]}" 2)"
echo "$out"
token="$(sed -n 's/^MOAT_TOKEN=//p' <<<"$out")"
[ -n "$token" ] || fail "no token printed"
# etcd as the moatds speak to it: over TLS with the printed CA and client certificate.
scheme=http
etcd_tls=()
if [ "$mode" = tls ]; then
  scheme=https
  for s in ca cert key; do
    f="$(sed -n "s/^cluster_etcd_tls_$s=//p" <<<"$out")"
    [ -f "$f" ] || fail "no cluster_etcd_tls_$s printed"
    printf -v "tls_$s" %s "$f"
  done
  etcd_tls=(--cacert "$tls_ca" --cert "$tls_cert" --key "$tls_key")
fi
# A POST to etcd member $1's JSON gateway: $2 the path, $3 the body.
etcd_call() { curl -sf -m 5 "${etcd_tls[@]}" -X POST "$scheme://$1:2379$2" -d "$3"; }
# The node a session's record in etcd names (docs/CLUSTER.md, "Keys").
owner_of() {
  etcd_call "$net.2" /v3/kv/range "{\"key\":\"$(printf "/moat/v1/sessions/%s" "$1" | base64 -w0)\"}" |
    python3 -c 'import base64, json, sys
kvs = json.load(sys.stdin).get("kvs", [])
print(json.loads(base64.b64decode(kvs[0]["value"]))["node_id"] if kvs else "")'
}
# The containers of session $2 on node $1's dockerd.
containers_of() {
  docker -H "unix://$MOAT_CLUSTER_DIR/n$1/docker.sock" ps -q --filter "label=session_id=$2"
}
sids=""
for a in $net.11 $net.12; do
  grep -q "MOAT_ADDR=$a:7070" <<<"$out" || fail "node $a not printed"
  MOAT_ADDR="$a:7070" MOAT_TOKEN="$token" "$moat" health | grep -q '^SERVING' ||
    fail "moatd at $a does not serve"
  sid="$(MOAT_ADDR="$a:7070" MOAT_TOKEN="$token" "$moat" create \
    --chat 6f1c2f7e-0000-4000-8000-0000000000${a##*.} --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["session_id"])')"
  # The session may have been placed on the other node: the CLI follows its session_moved.
  got="$(MOAT_ADDR="$a:7070" MOAT_TOKEN="$token" "$moat" exec "$sid" -- 'echo ok')"
  [ "$got" = ok ] || fail "a command through node $a printed '$got'"
  # Found through its record on its owner: the owner runs it without a redirect (no --verbose
  # line about one) and holds its container; the other node does not.
  owner="$(owner_of "$sid")"
  [[ "$owner" =~ ^n[12]$ ]] || fail "session $sid has no record naming a node: '$owner'"
  got="$(MOAT_ADDR="$net.$((10 + ${owner#n})):7070" MOAT_TOKEN="$token" "$moat" --verbose \
    exec "$sid" -- 'echo ok' 2>&1)"
  [ "$got" = ok ] || fail "session $sid on its owner $owner printed '$got'"
  [ -n "$(containers_of "${owner#n}" "$sid")" ] || fail "$owner's dockerd has no container of $sid"
  [ -z "$(containers_of $((3 - ${owner#n})) "$sid")" ] || fail "the non-owner has a container of $sid"
  sids="$sids $sid"
done
for e in $net.2 $net.3 $net.4; do
  grep -q "$scheme://$e:2379" <<<"$out" || fail "etcd member $e not printed"
  etcd_call "$e" /v3/kv/put '{"key":"dA==","value":"MQ=="}' >/dev/null ||
    fail "etcd member $e takes no write"
done

# The member list read through etcd member $1: "id address" lines; fails when it does not answer
# (as during an election).
members() {
  etcd_call "$1" /v3/kv/range "{\"key\":\"$(printf /moat/v1/nodes/ | base64)\",\"range_end\":\"$(printf /moat/v1/nodes0 | base64)\"}" |
    python3 -c 'import base64, json, sys
for kv in json.load(sys.stdin).get("kvs", []):
    print(base64.b64decode(kv["key"]).decode()[len("/moat/v1/nodes/"):],
          json.loads(base64.b64decode(kv["value"]))["address"])'
}
# Each moatd is a member: etcd lists n1 and n2 with their addresses.
list="$(members $net.2)" || fail "etcd does not answer"
[ "$list" = "n1 $net.11:7070
n2 $net.12:7070" ] || fail "members listed: $list"

# Twice in a row: the same processes, untouched.
pids="$(cat "$MOAT_CLUSTER_DIR"/*/*.pid)"
"$up" "${up_flags[@]}" 2 >/dev/null
[ "$(cat "$MOAT_CLUSTER_DIR"/*/*.pid)" = "$pids" ] || fail "a second cluster-up restarted things"

# Waits are for conditions, bounded generously (a lease TTL is 5 s); none measures anything.
wait_until() {
  local what="$1"
  shift
  for _ in $(seq 1 240); do
    if "$@"; then return 0; fi
    sleep 0.25
  done
  fail "$what"
}
on() { MOAT_ADDR="$1" MOAT_TOKEN="$token" "$moat" "${@:2}"; }
listed() { members "$1" | grep -q "^$2 "; }
create_reason() { on "$1" create --chat "$2" --json 2>&1 >/dev/null | sed -n 's/.*reason=\([a-z_]*\).*/\1/p'; }

if [ "$mode" = tls ]; then
  # Only the cluster's client certificate over TLS is answered, on the client port as on the
  # peer port (etcd serves /version on both; HTTP/1.1, as peers speak): members authenticate one
  # another too.
  for e in $net.2 $net.3 $net.4; do
    for port in 2379 2380; do
      ! curl -sf --http1.1 -m 5 "http://$e:$port/version" >/dev/null || fail "$e:$port answers http://"
      ! curl -sf --http1.1 -m 5 --cacert "$tls_ca" "https://$e:$port/version" >/dev/null ||
        fail "$e:$port answers a client without a certificate"
      curl -sf --http1.1 -m 5 "${etcd_tls[@]}" "https://$e:$port/version" >/dev/null ||
        fail "$e:$port does not answer the cluster's client certificate"
    done
  done

  # A moatd trusting the CA but without a client certificate (beside node 1, in its namespace):
  # the members refuse it, so it starts fenced saying why, refuses creates and is never listed.
  nc="$MOAT_CLUSTER_DIR/nocert"
  mkdir -p "$nc/state"
  setsid nsenter --net="/var/run/netns/$prefix-n1" "$build/src/server/moatd" \
    --listen="$net.11:7071" --grpc_listen= --metrics_listen= --token="$token" \
    --docker_host="$MOAT_CLUSTER_DIR/n1/docker.sock" --state_dir="$nc/state" \
    --instance="$prefix-nocert" --container_name_prefix="$prefix-nocert-" --workspace_quota=false \
    --cluster_etcd_endpoints="$(sed -n 's/^etcd: //p' <<<"$out")" --cluster_node_id=nocert \
    --cluster_advertise="$net.11:7071" --cluster_etcd_tls_ca="$tls_ca" \
    >"$nc/moatd.log" 2>&1 </dev/null &
  echo $! >"$nc/moatd.pid"
  refused_tls() { grep -q 'event=cluster_fenced node=nocert reason=etcd_tls_failed' "$nc/moatd.log"; }
  wait_until "a moatd without a client certificate did not log etcd_tls_failed" refused_tls
  grep -q 'no client certificate given' "$nc/moatd.log" || fail "its log does not say what is missing"
  [ "$(create_reason "$net.11:7071" 6f1c2f7e-0000-4000-8000-000000000301)" = node_fenced ] ||
    fail "a moatd without a client certificate took a create"
  ! listed $net.2 nocert || fail "a moatd without a client certificate is listed"
  kill -TERM "$(cat "$nc/moatd.pid")"
  gone() { ! kill -0 "$(cat "$nc/moatd.pid")" 2>/dev/null; }
  wait_until "the moatd without a client certificate did not exit on SIGTERM" gone
fi

# A session on node 1 for the fault below. Placement chooses the node, preferring the one with
# fewer sessions, so creating through node 1 lands there within a try or two.
sid1=""
for s in $sids; do [ "$(owner_of "$s")" != n1 ] || sid1="$s"; done
for i in 1 2 3 4 5 6 7 8; do
  [ -z "$sid1" ] || break
  s="$(MOAT_ADDR="$net.11:7070" MOAT_TOKEN="$token" "$moat" create \
    --chat "6f1c2f7e-0000-4000-8000-00000000020$i" --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["session_id"])')"
  [ "$(owner_of "$s")" != n1 ] || sid1="$s"
done
[ -n "$sid1" ] || fail "no create placed a session on node 1"

# Faults, on the cluster the scripts made (docs/CLUSTER.md, "Faults").
fenced() { [ "$(create_reason $net.11:7070 6f1c2f7e-0000-4000-8000-000000000101)" = node_fenced ]; }
not_fenced() { ! fenced; }
not_listed() {
  local list
  list="$(members "$1")" && ! grep -q "^$2 " <<<"$list"
}

# Node 1 cut off from etcd (its routes to the members prohibited; clients still reach it): it
# fences itself and refuses creates, its running session still runs commands, the cluster sees
# its lease expire, and node 2 goes on creating.
for e in 2 3 4; do ip -n "$prefix-n1" route add prohibit "$net.$e/32"; done
wait_until "node 1 never fenced itself" fenced
[ "$(on $net.11:7070 exec "$sid1" -- 'echo still')" = still ] || fail "node 1's session stopped"
wait_until "node 1 stayed listed" not_listed $net.2 n1
on $net.12:7070 create --chat 6f1c2f7e-0000-4000-8000-000000000102 --json >/dev/null ||
  fail "node 2 could not create while node 1 was cut off"
# Back: node 1 registers again and accepts creates.
for e in 2 3 4; do ip -n "$prefix-n1" route del prohibit "$net.$e/32"; done
wait_until "node 1 did not rejoin" listed $net.2 n1
wait_until "node 1 stayed fenced" not_fenced

# One etcd member of three killed: both nodes stay members and accept creates.
kill -KILL "$(cat "$MOAT_CLUSTER_DIR/e1/etcd.pid")"
on $net.12:7070 create --chat 6f1c2f7e-0000-4000-8000-000000000103 --json >/dev/null ||
  fail "node 2 could not create with one etcd member down"
# Ten answers from a surviving member, at least a second apart (two lease TTLs): every one lists
# both nodes. A read during the election that follows the kill gets no answer, and is not counted.
answers=0
for _ in $(seq 1 120); do
  if list="$(members $net.3)"; then
    [ "$(cut -d' ' -f1 <<<"$list" | tr '\n' ' ')" = "n1 n2 " ] ||
      fail "a node dropped out with one etcd member down: $list"
    answers=$((answers + 1))
    [ "$answers" -lt 10 ] || break
  fi
  sleep 1
done
[ "$answers" -ge 10 ] || fail "the surviving etcd members did not answer"

if [ "$mode" = tls ]; then
  # The same cluster asked for plain is not up: it starts again (one node, to be quick) plain,
  # its keys gone with the members that used them.
  out="$("$up" 1)"
  grep -qx "etcd: http://$net.2:2379,http://$net.3:2379,http://$net.4:2379" <<<"$out" ||
    fail "a plain cluster-up over a TLS one printed: $out"
  [ ! -e "$MOAT_CLUSTER_DIR/tls" ] || fail "the keys outlived the TLS cluster"
  scheme=http
  etcd_tls=()
  [ "$(members $net.2)" = "n1 $net.11:7070" ] || fail "the plain cluster lists: $(members $net.2)"
fi

"$down"
assert_gone
"$down" | grep -q "no cluster" || fail "a second cluster-down did something"

# Half way: etcd cannot start, so cluster-up fails after making namespaces and links.
if MOAT_ETCD=/bin/false "$up" "${up_flags[@]}" 1 >/dev/null 2>&1; then
  fail "cluster-up succeeded without etcd"
fi
[ -f "$MOAT_CLUSTER_DIR/manifest" ] || fail "the failed cluster-up left no manifest"
[ "$mode" = plain ] || [ -f "$MOAT_CLUSTER_DIR/tls/client.key" ] || fail "no keys made before etcd"
"$down" >/dev/null
assert_gone
echo "cluster_scripts: ok"
