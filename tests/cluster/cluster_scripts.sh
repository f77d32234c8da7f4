#!/usr/bin/env bash
# scripts/cluster-up.sh and scripts/cluster-down.sh, for real: a cluster of two nodes under a
# prefix and a /24 of this test's own (moat-clt, 10.214.0), so a developer's moat-cl cluster is
# never touched. Each node's moatd answers Health from the host, runs a command in a sandbox on
# its own dockerd and is listed as a member in etcd, which takes a write on every member; a second cluster-up is a no-op;
# cluster-down leaves no namespace, link, process, mount or directory behind, and a second one
# is a no-op; a cluster-up that fails half way (etcd cannot start) is removed as cleanly.
# Whatever happens, the trap removes the cluster. Skipped (77) without root, dockerd or etcd,
# except under CI=true, whose machine has them.
# usage: cluster_scripts.sh   (env: MOAT_BUILD_DIR, MOAT_SOURCE_DIR)
set -euo pipefail

src="${MOAT_SOURCE_DIR:?set MOAT_SOURCE_DIR}"
build="${MOAT_BUILD_DIR:?set MOAT_BUILD_DIR}"
export MOAT_CLUSTER_PREFIX=moat-clt MOAT_CLUSTER_NET=10.214.0 MOAT_BUILD_DIR="$build"
export MOAT_CLUSTER_DIR="/tmp/moat-clt"
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
  "$down" >/dev/null || status=1
  exit "$status"
}
trap finish EXIT

# Nothing of this cluster is left: namespaces, links, processes, mounts, directory.
assert_gone() {
  ! ip netns list | grep -q "^moat-clt-" || fail "namespaces left: $(ip netns list)"
  ! ip -br link | grep -q "^moat-clt-" || fail "links left"
  ! grep -qF "$MOAT_CLUSTER_DIR/" /proc/self/mountinfo || fail "mounts left"
  ! pgrep -f "$MOAT_CLUSTER_DIR/" >/dev/null || fail "processes left: $(pgrep -af "$MOAT_CLUSTER_DIR/")"
  [ ! -e "$MOAT_CLUSTER_DIR" ] || fail "$MOAT_CLUSTER_DIR left"
}

"$src/scripts/build-sandbox-image.sh" "$build" minimal >/dev/null

# A cluster this test did not make, under its name, is not ours to remove.
[ ! -e "$MOAT_CLUSTER_DIR" ] || fail "$MOAT_CLUSTER_DIR exists before the test"

out="$("$up" 2)"
echo "$out"
token="$(sed -n 's/^MOAT_TOKEN=//p' <<<"$out")"
[ -n "$token" ] || fail "no token printed"
for a in 10.214.0.11 10.214.0.12; do
  grep -q "MOAT_ADDR=$a:7070" <<<"$out" || fail "node $a not printed"
  MOAT_ADDR="$a:7070" MOAT_TOKEN="$token" "$moat" health | grep -q '^SERVING' ||
    fail "moatd at $a does not serve"
  sid="$(MOAT_ADDR="$a:7070" MOAT_TOKEN="$token" "$moat" create \
    --chat 6f1c2f7e-0000-4000-8000-0000000000${a##*.} --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["session_id"])')"
  got="$(MOAT_ADDR="$a:7070" MOAT_TOKEN="$token" "$moat" exec "$sid" -- 'echo ok')"
  [ "$got" = ok ] || fail "a command on node $a printed '$got'"
done
for e in 10.214.0.2 10.214.0.3 10.214.0.4; do
  grep -q "http://$e:2379" <<<"$out" || fail "etcd member $e not printed"
  curl -sf -m 5 -X POST "http://$e:2379/v3/kv/put" -d '{"key":"dA==","value":"MQ=="}' >/dev/null ||
    fail "etcd member $e takes no write"
done

# Each moatd is a member: etcd lists n1 and n2 with their addresses.
members="$(curl -sf -m 5 -X POST http://10.214.0.2:2379/v3/kv/range \
  -d "{\"key\":\"$(printf /moat/v1/nodes/ | base64)\",\"range_end\":\"$(printf /moat/v1/nodes0 | base64)\"}" |
  python3 -c 'import base64, json, sys
for kv in json.load(sys.stdin).get("kvs", []):
    print(base64.b64decode(kv["key"]).decode(), json.loads(base64.b64decode(kv["value"]))["address"])')"
[ "$members" = "/moat/v1/nodes/n1 10.214.0.11:7070
/moat/v1/nodes/n2 10.214.0.12:7070" ] || fail "members listed: $members"

# Twice in a row: the same processes, untouched.
pids="$(cat "$MOAT_CLUSTER_DIR"/*/*.pid)"
"$up" 2 >/dev/null
[ "$(cat "$MOAT_CLUSTER_DIR"/*/*.pid)" = "$pids" ] || fail "a second cluster-up restarted things"

"$down"
assert_gone
"$down" | grep -q "no cluster" || fail "a second cluster-down did something"

# Half way: etcd cannot start, so cluster-up fails after making namespaces and links.
if MOAT_ETCD=/bin/false "$up" 1 >/dev/null 2>&1; then
  fail "cluster-up succeeded without etcd"
fi
[ -f "$MOAT_CLUSTER_DIR/manifest" ] || fail "the failed cluster-up left no manifest"
"$down" >/dev/null
assert_gone
echo "cluster_scripts: ok"
