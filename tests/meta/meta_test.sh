#!/usr/bin/env bash
# The suite's own test: each kind of failure, injected on purpose, must turn ctest red, and the
# same test without it must stay green (so red comes from the injection, not from the test).
# Kinds (tests/support/moat_test.h): a failed test body, group setup and group teardown; a
# daemon that does not exit 0 (MOAT_TEST_INJECT=daemon_exit); a leak in a program under
# valgrind (libmoat_test_leak.so preloaded). Daemon checks run only each binary's last test
# (MOAT_TEST_FILTER), which stops the daemon and checks its exit status.
# usage: meta_test.sh <build-dir> plain|docker|valgrind
set -euo pipefail
build="${1:?usage: $0 <build-dir> plain|docker|valgrind}"
mode="${2:?usage: $0 <build-dir> plain|docker|valgrind}"

# ctest in a directory of its own, so that its Testing/ log is not the outer run's.
scratch="$(mktemp -d /tmp/moat-meta-XXXXXX)"
trap 'rm -rf "$scratch"' EXIT
echo "subdirs(\"$build\")" >"$scratch/CTestTestfile.cmake"

failures=0
# expect green|<what red must show> <ctest test name> [VAR=value…]: runs that one test with the
# variables set; red must come with that text in its output, so that it is the injection's.
expect() {
  local want="$1" name="$2"; shift 2
  local got=green
  if ! (cd "$scratch" && env "$@" ctest -R "^${name}\$" --no-tests=error --output-on-failure \
        >"$scratch/last.log" 2>&1); then
    got=red
  fi
  if [ "$want" = green ] && [ "$got" = green ]; then
    echo "ok: $name with ${*:-nothing injected} is green"
  elif [ "$want" != green ] && [ "$got" = red ] && grep -q -- "$want" "$scratch/last.log"; then
    echo "ok: $name with $* is red, showing \"$want\""
  else
    echo "FAILED: $name with ${*:-nothing injected} is $got, expected: $want; its output:"
    cat "$scratch/last.log"
    failures=$((failures + 1))
  fi
}

# expect_daemon_check <ctest test name> <its last test> <what red must show> <injection…>
expect_daemon_check() {
  local name="$1" last="$2" shows="$3"; shift 3
  expect green "$name" "MOAT_TEST_FILTER=$last"
  expect "$shows" "$name" "MOAT_TEST_FILTER=$last" "$@"
}

case "$mode" in
plain)
  expect green test_common
  expect "MOAT_TEST_INJECT=body: this test fails" test_common MOAT_TEST_INJECT=body
  expect "GROUP SETUP" test_common MOAT_TEST_INJECT=setup
  expect "GROUP TEARDOWN" test_common MOAT_TEST_INJECT=teardown
  # The binary's own exit status, outside ctest, counts a failed group teardown too.
  if MOAT_TEST_INJECT=teardown "$build/tests/common/test_common" >"$scratch/last.log" 2>&1; then
    echo "FAILED: test_common exits 0 after a failed group teardown"
    failures=$((failures + 1))
  else
    echo "ok: test_common exits non-zero after a failed group teardown"
  fi
  # Each moatd integration program ends its shared group with the same check of its moatd.
  for t in test_moatd_hello test_moatd_frames test_moatd_ops; do
    expect_daemon_check "$t" test_moatd_exits_0_on_sigterm "0x89 != 0" \
      MOAT_TEST_INJECT=daemon_exit
  done
  # Each execd integration program ends with the same check of the execd its group started.
  for t in test_execd_command test_execd_files test_execd_session test_execd_lifecycle; do
    expect_daemon_check "$t" test_execd_exits_0_on_sigterm \
      "FAILED  ] test_execd_exits_0_on_sigterm" MOAT_TEST_INJECT=daemon_exit
  done
  ;;
docker)
  # The cluster tests run by themselves too (no ctest: no MOAT_BUILD_DIR, from /), on the build's
  # moatd; with no moatd where it is looked for, a group setup fails saying so and cleans up,
  # and the group teardown cmocka runs after it finds nothing left (it once closed an etcd
  # client twice and crashed). Both ways of setting up a cluster: rc_node_start and
  # rc_members_setup.
  if [ -x /usr/bin/etcd ]; then
    direct() { (cd / && env -u MOAT_BUILD_DIR -u MOAT_SOURCE_DIR "$@" >"$scratch/last.log" 2>&1); }
    if direct MOAT_TEST_FILTER=test_moved "$build/tests/cluster/test_cluster_route"; then
      echo "ok: test_cluster_route runs by itself"
    else
      echo "FAILED: test_cluster_route run by itself; its output:"
      cat "$scratch/last.log"
      failures=$((failures + 1))
    fi
    for t in test_cluster_route test_cluster_place; do
      rc=0
      direct MOAT_BUILD_DIR=/nonexistent "$build/tests/cluster/$t" || rc=$?
      if [ "$rc" -eq 1 ] && grep -q "no moatd at /nonexistent/" "$scratch/last.log" &&
        ! grep -q "exception" "$scratch/last.log"; then
        echo "ok: $t without moatd fails its setup cleanly"
      else
        echo "FAILED: $t without moatd exits $rc (expected 1, saying so, no crash); its output:"
        cat "$scratch/last.log"
        failures=$((failures + 1))
      fi
    done
  else
    echo "SKIP: the cluster tests' direct runs: etcd is not installed"
  fi
  expect_daemon_check test_e2e_raw test_moatd_exits_0_on_sigterm "0x89 != 0" \
    MOAT_TEST_INJECT=daemon_exit
  expect_daemon_check test_e2e_cli test_moatd_exits_0_on_sigterm "0x89 != 0" \
    MOAT_TEST_INJECT=daemon_exit
  expect_daemon_check test_execd_docker test_execd_as_pid1_exits_0_on_docker_stop \
    "exit code after docker kill: 137" MOAT_TEST_INJECT=daemon_exit
  ;;
valgrind)
  leak="LD_PRELOAD=$build/tests/support/libmoat_test_leak.so"
  lost="64 bytes in 1 blocks are definitely lost"
  expect green valgrind_test_rpc
  expect "$lost" valgrind_test_rpc "$leak"
  for t in valgrind_moatd_hello valgrind_moatd_frames valgrind_moatd_ops; do
    expect_daemon_check "$t" test_moatd_exits_0_on_sigterm "$lost" "$leak"
  done
  for t in valgrind_execd_command valgrind_execd_files valgrind_execd_session \
    valgrind_execd_lifecycle; do
    expect_daemon_check "$t" test_execd_exits_0_on_sigterm "$lost" "$leak"
  done
  expect_daemon_check valgrind_e2e_daemon test_moatd_exits_0_on_sigterm "$lost" "$leak"
  ;;
*)
  echo "meta_test.sh: unknown mode $mode" >&2
  exit 2
  ;;
esac

if [ "$failures" -ne 0 ]; then
  echo "meta_test.sh: $failures check(s) failed"
  exit 1
fi
echo "meta_test.sh: every injected failure turned ctest red"
