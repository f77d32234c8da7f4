#!/usr/bin/python3
"""The Python client of docs/examples, written from docs/PROTOCOL.md alone, against a real moatd
with real Docker: a second implementation of the protocol, so the spec and the server agree with
something that shares no code with libmoat."""
import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "docs", "examples"))
import moat_client  # noqa: E402

# This run's own, so that runs at the same time on one engine never remove each other's sandboxes.
PREFIX = "moat-pytest%d-" % os.getpid()
CHAT = "0f0e0d0c-0b0a-4908-8706-050403020100"
TOKEN = "python-client-token"
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listens_on(pid, port):
    """Whether pid itself holds the socket listening on port (someone else may have taken the
    port between free_port() and moatd's bind, and would answer a connect)."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        for fields in (line.split() for line in f.readlines()[1:]):
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    fds = "/proc/%d/fd" % pid
    try:
        held = {os.readlink(os.path.join(fds, fd)) for fd in os.listdir(fds)}
    except OSError:
        return False
    return any("socket:[%s]" % inode in held for inode in inodes)


def start_moatd(args, state, log, grpc=False, extra=()):
    """moatd on a free port (with extra "--key=value" flags), started again on another (a few
    times) when the port was taken. Returns it, its framed port and its gRPC port (None unless
    grpc)."""
    for _ in range(5):
        port = free_port()
        grpc_port = free_port() if grpc else None
        log.seek(0)
        log.truncate()
        moatd = subprocess.Popen(
            [args.moatd, "--listen=127.0.0.1:%d" % port,
             "--metrics_listen=127.0.0.1:%d" % free_port(),
             "--grpc_listen=" + ("127.0.0.1:%d" % grpc_port if grpc else ""),
             "--state_dir=" + state, "--token=" + TOKEN, "--container_name_prefix=" + PREFIX,
             "--image=moat-sandbox:latest", "--log_level=warn"] + list(extra),
            stdout=log, stderr=log)
        for _ in range(200):
            if listens_on(moatd.pid, port) and (not grpc or listens_on(moatd.pid, grpc_port)):
                return moatd, port, grpc_port
            if moatd.poll() is not None:
                break
            time.sleep(0.05)
        if moatd.poll() is None:
            moatd.kill()
            moatd.wait()
        with open(log.name, "rb") as f:
            if b"address already in use" not in f.read():
                break
    raise RuntimeError("moatd did not start; its log is %s" % log.name)


def expect_error(name, fn, *args):
    try:
        fn(*args)
    except moat_client.MoatError as err:
        assert err.name == name, "expected %s, got %s" % (name, err)
        return err
    raise AssertionError("expected %s, the call succeeded" % name)


def unmount_under(path):
    """Unmounts what moatd mounted under path (chat workspaces, execd dirs), newest first."""
    path = os.path.realpath(path)
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in reversed(points):
        if point == path or point.startswith(path + "/"):
            libc.umount2(point.encode(), 0)


def report_failure(test, step, err, state, log):
    """What failed, and the end of moatd's log."""
    print("%s: failed at %r: %r" % (test, step, err), file=sys.stderr)
    log.flush()
    with open(os.path.join(state, "moatd.log"), "rb") as f:
        sys.stderr.write(f.read().decode(errors="replace")[-4000:])


def clean_up(moatd, state):
    """Stops moatd (may be None), removes this run's sandboxes, its mounts and its state."""
    if moatd is not None:
        moatd.send_signal(signal.SIGTERM)
        try:
            moatd.wait(timeout=30)
        except subprocess.TimeoutExpired:
            moatd.kill()
    ids = subprocess.run([DOCKER, "ps", "-aq", "--filter", "name=" + PREFIX],
                         capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run([DOCKER, "rm", "-f"] + ids, capture_output=True)
    unmount_under(state)
    subprocess.run(["rm", "-rf", "--one-file-system", state])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moatd", required=True)
    ap.add_argument("--protoc", required=True)
    ap.add_argument("--proto-dir", required=True)
    args = ap.parse_args()
    pb = moat_client.load_stubs(args.proto_dir, args.protoc)

    state = tempfile.mkdtemp(prefix="moat-pytest-state-")
    log = open(os.path.join(state, "moatd.log"), "wb")
    moatd = None
    step = "start"
    try:
        moatd, port, _ = start_moatd(args, state, log)
        addr = "127.0.0.1:%d" % port

        step = "tokens"
        expect_error("UNAUTHENTICATED", moat_client.Client, pb, addr, "wrong")
        expect_error("UNAUTHENTICATED", moat_client.Client, pb, addr, "")
        c = moat_client.Client(pb, addr, TOKEN)
        # Whatever a client sees of a connection, frames stay under the limit it was given.
        assert c.ack.max_frame_size >= 4096 and c.ack.initial_window > 0

        step = "health"
        h = c.health()
        assert h.status == pb["health"].HealthCheckResponse.SERVING and h.docker_reachable, h

        step = "create, idempotent per chat"
        s = c.create_session(CHAT, ttl_seconds=600)
        assert s.status == pb["sandbox"].RUNNING, s
        again = c.create_session(CHAT)
        assert again.session_id == s.session_id, (again.session_id, s.session_id)

        step = "run: streams apart, in order, exit code"
        got = {1: b"", 2: b""}

        def collect(stream, data):
            got[stream] += data

        code, timed_out = c.run(s.session_id, "for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 3",
                                collect)
        assert (code, timed_out) == (3, False), (code, timed_out)
        assert got == {1: b"out1\nout2\nout3\n", 2: b"err1\nerr2\nerr3\n"}, got

        step = "run: 8 MiB, eight windows' worth, through flow control"
        got = {1: b"", 2: b""}
        c.sock.settimeout(60)  # a client that forgot its WindowUpdates would stall here, not hang
        code, _ = c.run(s.session_id, "head -c 8388608 /dev/zero | tr '\\0' x", collect)
        assert code == 0 and len(got[1]) == 8 << 20 and got[1].count(b"x") == 8 << 20, len(got[1])

        step = "run: cwd, env, timeout"
        got = {1: b"", 2: b""}
        code, _ = c.run(s.session_id, 'pwd; echo "$GREETING"', collect, cwd="/tmp", env={"GREETING": "hi there"})
        assert code == 0 and got[1] == b"/tmp\nhi there\n", got
        t0 = time.monotonic()
        code, timed_out = c.run(s.session_id, "sleep 20", timeout_ms=300)
        assert timed_out and time.monotonic() - t0 < 15, (code, timed_out)

        step = "interactive: stdin, then close_stdin"
        got = {1: b"", 2: b""}
        try:
            code = c.interactive(s.session_id, "wc -l", b"a\nb\n", collect)
            served = True
        except moat_client.MoatError as err:
            if err.name != "UNIMPLEMENTED":
                raise
            print("SKIP: test_python_client: interactive steps: moatd does not serve Exec/Interactive yet")
            served = False
        if served:
            assert code == 0 and got[1].strip() == b"2", (code, got)

            step = "interactive: 4 MiB of stdin, four windows' worth, through flow control"
            got = {1: b"", 2: b""}
            code = c.interactive(s.session_id, "wc -c; echo err >&2; exit 4", b"y" * (4 << 20), collect)
            assert code == 4 and got == {1: b"4194304\n", 2: b"err\n"}, (code, got)

            step = "interactive: a terminal"
            got = {1: b"", 2: b""}
            code = c.interactive(s.session_id, "", b"echo $((6*7))\nexit 3\n", collect, tty=True, rows=24,
                                 cols=80)
            assert code == 3 and b"42\r\n" in got[1] and got[2] == b"", (code, got)

        step = "errors are statuses, and the connection carries on"
        expect_error("UNIMPLEMENTED", c.unary, "/moat.v1.Nope/Nothing", pb["health"].HealthCheckRequest(),
                     pb["health"].HealthCheckResponse)
        err = expect_error("NOT_FOUND", c.run, "00000000-0000-4000-8000-000000000000", "true")
        assert err.reason, err
        expect_error("INVALID_ARGUMENT", c.create_session, "not-a-uuid")
        assert c.health().status == pb["health"].HealthCheckResponse.SERVING

        step = "stop"
        c.stop_session(s.session_id)
        err = expect_error("FAILED_PRECONDITION", c.run, s.session_id, "true")
        assert err.reason == "session_not_running", err
        c.close()
        print("test_python_client: the Python client drove moatd through every step")
        return 0
    except Exception as err:
        report_failure("test_python_client", step, err, state, log)
        return 1
    finally:
        clean_up(moatd, state)


if __name__ == "__main__":
    sys.exit(main())
