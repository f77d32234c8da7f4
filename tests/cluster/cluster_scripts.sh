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
# refused, its session still serving, its lease expired) and comes back as a new incarnation,
# which ends that session node_lost; one etcd member killed leaves both nodes members and
# creating. Then, plain only (the TLS run stays short): that member started again; a node's moatd
# SIGKILLed, after which, asked through the other node, its session is GONE to GetSession and
# ListSessions, a command for it ends node_lost and a create for its chat lands on the other node
# and runs there; the node started again on its state dir is a member again and stops the old
# container, its record ended node_lost; all three etcd members killed: a running session still
# runs commands on its node, creates end UNAVAILABLE (etcd_unavailable, node_fenced once fenced),
# and with etcd started again both nodes are members under their leases and create. The times
# from each fault are printed, never judged; a CLI call that outlives its deadline fails the
# test. cluster-down leaves no namespace, link, process, mount or directory behind (the
# processes started again included), and a second one is a no-op; a cluster-up that fails half
# way (etcd cannot start; with --tls, its keys made) is removed as cleanly. Whatever happens, the
# trap removes the cluster. Skipped (77) without root, dockerd or etcd, except under CI=true,
# whose machine has them.
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
# Field $2 of session $1's record in etcd (docs/CLUSTER.md, "Keys"), read through the first
# member that answers; empty without a record.
record_field() {
  local e answer
  for e in $net.2 $net.3 $net.4; do
    answer="$(etcd_call "$e" /v3/kv/range \
      "{\"key\":\"$(printf "/moat/v1/sessions/%s" "$1" | base64 -w0)\"}")" || continue
    python3 -c 'import base64, json, sys
kvs = json.loads(sys.argv[1]).get("kvs", [])
print(json.loads(base64.b64decode(kvs[0]["value"])).get(sys.argv[2], "") if kvs else "")' \
      "$answer" "$2"
    return 0
  done
  return 1
}
# The node a session's record names.
owner_of() { record_field "$1" node_id; }
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
# A CLI call to node address $1. Its unary calls have a deadline of 60 s, so one still going
# after 75 s is hung: timeout ends it, and it is written down for no_hangs (a call may run in a
# subshell, whose exit would not end the test).
on() {
  local rc=0
  timeout 75 env MOAT_ADDR="$1" MOAT_TOKEN="$token" "$moat" "${@:2}" || rc=$?
  [ "$rc" -ne 124 ] || echo "moat ${*:2} through $1" >>"$hung"
  return "$rc"
}
hung="$MOAT_CLUSTER_DIR/hung"
no_hangs() { [ ! -e "$hung" ] || fail "calls hung: $(cat "$hung")"; }
listed() { members "$1" | grep -q "^$2 "; }
create_reason() { on "$1" create --chat "$2" --json 2>&1 >/dev/null | sed -n 's/.*reason=\([a-z_]*\).*/\1/p'; }
# The session id, or the status, of the session --json printed.
sid_of() { python3 -c 'import json, sys; print(json.load(sys.stdin)["session_id"])'; }
status_of() { python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])'; }
# The framed address of node n<i>.
addr_of() { echo "$net.$((10 + ${1#n})):7070"; }

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

# A session on node $1 (n1, n2): "<session> <chat>", created through it for chats $2<i>.
# Placement chooses the node, preferring the one with fewer sessions, so a create through the
# node lands there within a try or two.
place_on() {
  local i s
  for i in 1 2 3 4 5 6 7 8; do
    s="$(on "$(addr_of "$1")" create --chat "$2$i" --json | sid_of)" || return 1
    if [ "$(owner_of "$s")" = "$1" ]; then
      echo "$s $2$i"
      return 0
    fi
  done
  return 1
}

# A session on node 1 for the fault below.
sid1=""
for s in $sids; do [ "$(owner_of "$s")" != n1 ] || sid1="$s"; done
if [ -z "$sid1" ]; then
  placed="$(place_on n1 6f1c2f7e-0000-4000-8000-00000000020)" ||
    fail "no create placed a session on node 1"
  sid1="${placed% *}"
fi

# Faults, on the cluster the scripts made (docs/CLUSTER.md, "Faults").
fenced_at() { [ "$(create_reason "$1" 6f1c2f7e-0000-4000-8000-000000000101)" = node_fenced ]; }
fenced() { fenced_at $net.11:7070; }
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
# Its lease had expired, so it came back as a new incarnation, which stops what the old one ran:
# the session it held while cut off is ended node_lost, its container stopped.
ended_lost() { [ "$(record_field "$1" end_reason)" = node_lost ]; }
no_container() { [ -z "$(containers_of "$1" "$2")" ]; }
wait_until "node 1 did not end its cut-off session node_lost" ended_lost "$sid1"
wait_until "node 1's cut-off session still runs" no_container 1 "$sid1"

# A process of the cluster killed and started again as cluster-up started it: save_cmd keeps
# the command line of the process in pid file $1 beside it; start_again starts it again in
# namespace $1 (pid file $2, log $3) as cluster-up's start_in does, into the pid file the
# manifest names, so cluster-down stops it.
save_cmd() { cat "/proc/$(cat "$1")/cmdline" >"$1.cmdline"; }
start_again() {
  local cmd
  mapfile -d '' cmd <"$2.cmdline"
  setsid nsenter --net="/var/run/netns/$1" "${cmd[@]}" >>"$3" 2>&1 </dev/null &
  echo $! >"$2"
}

# One etcd member of three killed: both nodes stay members and accept creates.
save_cmd "$MOAT_CLUSTER_DIR/e1/etcd.pid"
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
no_hangs

# The faults below run on the plain cluster only (the TLS one is checked as far as above).
if [ "$mode" = plain ]; then
  # Times from a fault to what it should bring, printed, never judged.
  now() { date +%s.%N; }
  since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
  # The process of pid file $1 has exited (a child of this shell's may wait to be reaped).
  dead() {
    local st
    st="$(ps -o stat= -p "$(cat "$1")")" || return 0
    [[ "$st" == Z* ]]
  }
  # "CODE reason" of a create through $1 for chat $2 that failed, or OK.
  create_outcome() {
    local said
    if said="$(on "$1" create --chat "$2" --json 2>&1)"; then
      echo OK
      return 0
    fi
    sed -n 's/^moat: \([A-Z_]*\): .*reason=\([a-z_]*\).*/\1 \2/p' <<<"$said"
  }
  creates() { [ "$(create_outcome "$1" "$2")" = OK ]; }
  # The status ListSessions through $1 gives session $2.
  listed_as() {
    on "$1" ls --json | python3 -c 'import json, sys
for line in sys.stdin:
    s = json.loads(line)
    if s["session_id"] == sys.argv[1]:
        print(s["status"])' "$2"
  }
  got_as() { [ "$(on "$1" get "$2" --json 2>/dev/null | status_of 2>/dev/null)" = "$3" ]; }
  # The lease node $1's key is under.
  lease_of() {
    etcd_call $net.2 /v3/kv/range "{\"key\":\"$(printf /moat/v1/nodes/%s "$1" | base64 -w0)\"}" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["kvs"][0]["lease"])'
  }
  takes_write() { etcd_call "$1" /v3/kv/put '{"key":"dA==","value":"Mg=="}' >/dev/null; }

  # The member killed above, started again: it takes writes, and all three are up for what
  # follows.
  start_again "$prefix-e1" "$MOAT_CLUSTER_DIR/e1/etcd.pid" "$MOAT_CLUSTER_DIR/e1/etcd.log"
  wait_until "etcd member e1 did not come back" takes_write $net.2

  # Node 1 killed (its moatd SIGKILLed; its dockerd, and so its session's container, left
  # running). Asked through node 2, within its lease TTL its session is GONE to GetSession and
  # ListSessions, a command for it ends node_lost, and a create for its chat places a new session
  # on node 2 that runs commands; node 1's address refuses at once. Nothing hangs (on's timeout).
  placed="$(place_on n1 6f1c2f7e-0000-4000-8000-00000000040)" ||
    fail "no create placed a session on node 1"
  sid_k="${placed% *}"
  chat_k="${placed#* }"
  n1pid="$MOAT_CLUSTER_DIR/n1/moatd.pid"
  save_cmd "$n1pid"
  killed_at="$(now)"
  kill -KILL "$(cat "$n1pid")"
  gone_after="" placed_after="" sid_k2="" refusals=""
  for _ in $(seq 1 240); do
    if [ -z "$gone_after" ] && got_as $net.12:7070 "$sid_k" GONE; then
      gone_after="$(since "$killed_at")"
    fi
    if [ -z "$placed_after" ]; then
      if said="$(on $net.12:7070 create --chat "$chat_k" --json 2>"$MOAT_CLUSTER_DIR/said")"; then
        placed_after="$(since "$killed_at")"
        sid_k2="$(sid_of <<<"$said")"
      else
        refusals+=" $(sed -n 's/.*reason=\([a-z_]*\).*/\1/p' "$MOAT_CLUSTER_DIR/said")"
      fi
    fi
    [ -z "$gone_after" ] || [ -z "$placed_after" ] || break
    sleep 0.25
  done
  [ -n "$gone_after" ] || fail "killed node 1's session $sid_k never GONE through node 2"
  [ -n "$placed_after" ] || fail "no create of killed node 1's chat through node 2:$refusals"
  echo "node 1 killed: its session GONE through node 2 after $gone_after s, its chat placed" \
    "on node 2 after $placed_after s (lease TTL 5 s); creates refused meanwhile:" \
    "$(tr ' ' '\n' <<<"$refusals" | sed '/^$/d' | sort | uniq -c | xargs)"
  [ "$sid_k2" != "$sid_k" ] || fail "the create answered with killed node 1's session"
  [ "$(owner_of "$sid_k2")" = n2 ] || fail "the chat's new session is on '$(owner_of "$sid_k2")'"
  [ "$(on $net.12:7070 exec "$sid_k2" -- 'echo hi')" = hi ] ||
    fail "the chat's new session runs nothing"
  got="$(listed_as $net.12:7070 "$sid_k")"
  [ "$got" = GONE ] || fail "ListSessions through node 2 lists killed node 1's session as '$got'"
  said="$(on $net.12:7070 exec "$sid_k" -- 'echo hi' 2>&1)" &&
    fail "killed node 1's session ran a command"
  grep -q '^moat: FAILED_PRECONDITION: .*reason=node_lost' <<<"$said" ||
    fail "a command for killed node 1's session: $said"
  ! on $net.11:7070 health >/dev/null 2>&1 || fail "killed node 1 still answers"
  [ -n "$(containers_of 1 "$sid_k")" ] ||
    fail "killed node 1's dockerd lost the session's container"
  no_hangs

  # Node 1 started again on its state dir, its lease long gone: a member again as a new
  # incarnation, which stops the old session's container and ends its record node_lost.
  restarted_at="$(now)"
  start_again "$prefix-n1" "$n1pid" "$MOAT_CLUSTER_DIR/n1/moatd.log"
  wait_until "restarted node 1 is not a member" listed $net.2 n1
  member_after="$(since "$restarted_at")"
  wait_until "restarted node 1 did not end its old session node_lost" ended_lost "$sid_k"
  wait_until "restarted node 1 left its old session's container running" no_container 1 "$sid_k"
  got_as $net.12:7070 "$sid_k" GONE || fail "node 1's old session is not GONE once it is back"
  echo "node 1 restarted: a member again after $member_after s"
  no_hangs

  # All of etcd down (its three members killed) with node 2's session running: the session runs
  # commands through its node before and after both nodes fence themselves; creates through
  # either node end UNAVAILABLE, etcd_unavailable or (fenced) node_fenced; a GetSession node 1
  # must ask etcd about ends etcd_unavailable. Nothing hangs. The members started again, both
  # nodes are members under the same leases (node 2's session still runs) and creates succeed.
  leases="$(lease_of n1) $(lease_of n2)"
  for k in 1 2 3; do
    save_cmd "$MOAT_CLUSTER_DIR/e$k/etcd.pid"
    kill -KILL "$(cat "$MOAT_CLUSTER_DIR/e$k/etcd.pid")"
  done
  down_at="$(now)"
  for k in 1 2 3; do
    wait_until "etcd member e$k outlived SIGKILL" dead "$MOAT_CLUSTER_DIR/e$k/etcd.pid"
  done
  [ "$(on $net.12:7070 exec "$sid_k2" -- 'echo hi')" = hi ] ||
    fail "node 2's session stopped running commands with etcd down"
  for a in $net.11:7070 $net.12:7070; do
    got="$(create_outcome "$a" 6f1c2f7e-0000-4000-8000-000000000501)"
    [[ "$got" =~ ^UNAVAILABLE\ (etcd_unavailable|node_fenced)$ ]] ||
      fail "a create through $a with etcd down: '$got'"
    echo "etcd down: a create through $a: $got"
  done
  wait_until "node 1 did not fence itself with etcd down" fenced_at $net.11:7070
  wait_until "node 2 did not fence itself with etcd down" fenced_at $net.12:7070
  fenced_after="$(since "$down_at")"
  [ "$(on $net.12:7070 exec "$sid_k2" -- 'echo hi')" = hi ] ||
    fail "node 2's session stopped running commands once fenced"
  said="$(on $net.11:7070 get "$sid_k2" 2>&1)" &&
    fail "node 1 answered for node 2's session with etcd down"
  grep -q '^moat: UNAVAILABLE: .*reason=etcd_unavailable' <<<"$said" ||
    fail "GetSession through node 1 with etcd down: $said"
  back_at="$(now)"
  for k in 1 2 3; do
    start_again "$prefix-e$k" "$MOAT_CLUSTER_DIR/e$k/etcd.pid" "$MOAT_CLUSTER_DIR/e$k/etcd.log"
  done
  wait_until "no create succeeded once etcd was back" creates $net.11:7070 \
    6f1c2f7e-0000-4000-8000-000000000502
  create_after="$(since "$back_at")"
  wait_until "node 1 is not a member once etcd is back" listed $net.2 n1
  wait_until "node 2 is not a member once etcd is back" listed $net.2 n2
  members_after="$(since "$back_at")"
  [ "$(lease_of n1) $(lease_of n2)" = "$leases" ] ||
    fail "a node lost its lease while etcd was down"
  creates $net.12:7070 6f1c2f7e-0000-4000-8000-000000000503 ||
    fail "node 2 refused a create once etcd was back"
  [ "$(on $net.12:7070 exec "$sid_k2" -- 'echo hi')" = hi ] ||
    fail "node 2's session did not outlive etcd's absence"
  echo "etcd down: both nodes fenced after $fenced_after s; etcd back: first create OK after" \
    "$create_after s, both nodes members after $members_after s"
  no_hangs
fi

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
