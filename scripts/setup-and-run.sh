#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: installs what is missing, builds,
# starts dockerd if it is not running, builds the sandbox images (the Debian one, moatd's
# default, and the minimal one), starts moatd, creates a demo session, runs commands in it
# and shows the output.
# moatd keeps running afterwards (its pid and log are printed).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

./scripts/install-deps.sh
./scripts/build.sh release

export MOAT_STATE_DIR="${MOAT_STATE_DIR:-/var/lib/moat}"
mkdir -p "$MOAT_STATE_DIR"
./scripts/start-dockerd.sh
./scripts/build-sandbox-image.sh "$root/build"

moat="$root/build/src/client/moat"
moatd="$root/build/src/server/moatd"
export MOAT_ADDR="${MOAT_ADDR:-127.0.0.1:7070}"

if "$moat" health >/dev/null 2>&1; then
  echo "setup-and-run: moatd already answering on $MOAT_ADDR"
else
  echo "setup-and-run: starting moatd (log: $MOAT_STATE_DIR/moatd.log)"
  # Two warm sandboxes for new chats (deploy/moatd.conf.sample does the same).
  nohup "$moatd" --state_dir="$MOAT_STATE_DIR" --execd_bundle="$root/build/execd-bundle" \
    --pool_size=2 >>"$MOAT_STATE_DIR/moatd.log" 2>&1 &
  echo $! >"$MOAT_STATE_DIR/moatd.pid"
  for _ in $(seq 1 100); do
    "$moat" health >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$moat" health
fi

chat="$(cat /proc/sys/kernel/random/uuid)"
echo "setup-and-run: creating a demo session for chat $chat"
session="$("$moat" create --chat "$chat" --ttl 600 --json | sed -n 's/.*"session_id": *"\([^"]*\)".*/\1/p')"
echo "setup-and-run: session $session"
"$moat" get "$session"
echo "setup-and-run: running a command in it"
set +e
"$moat" exec "$session" -- 'echo "hello from moat in $(hostname)"; echo "to stderr" >&2; ls -la /workspace; exit 3'
status=$?
set -e
echo "setup-and-run: the command exited with $status (expected 3)"
echo "setup-and-run: python3 in the sandbox:"
"$moat" exec "$session" -- "python3 -c 'print(6*7)'"
echo "setup-and-run: moatd is running (pid $(cat "$MOAT_STATE_DIR/moatd.pid" 2>/dev/null || echo '?'));"
echo "  try: $moat exec $session -- uname -a"
echo "  stop it: kill \$(cat $MOAT_STATE_DIR/moatd.pid)"
