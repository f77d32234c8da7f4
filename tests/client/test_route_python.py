#!/usr/bin/python3
"""The Python example client (docs/examples/moat_client.py) following session_moved, against fake
cluster nodes written here: loopback listeners on ephemeral ports, each connection served by a
thread, frames made with the same generated protobuf modules."""
import argparse
import os
import socket
import struct
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "docs", "examples"))
import moat_client  # noqa: E402

SESSION = "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"


class Node:
    """A fake moatd: answers every call itself, or ends those naming a session session_moved to
    moved_to. Counts connections and calls; remembers the last call's deadline and stdin."""

    def __init__(self, pb):
        self.pb, self.f = pb, pb["frame"]
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.addr = "127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.moved_to, self.create_owner = "", ""
        self.connections = self.calls = 0
        self.last_deadline, self.last_stdin = None, b""
        self.lock = threading.Lock()
        self.socks = []
        threading.Thread(target=self.accept, daemon=True).start()

    def down(self):
        """Closes the listener and every connection: connects are refused from now on."""
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way (Linux)
        except OSError:
            pass
        self.lsock.close()
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def accept(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.socks.append(s)
            threading.Thread(target=self.serve, args=(s,), daemon=True).start()

    def send(self, s, frame):
        body = frame.SerializeToString()
        s.sendall(struct.pack(">I", len(body)) + body)

    def recv(self, s):
        head = b""
        while len(head) < 4:
            chunk = s.recv(4 - len(head))
            if not chunk:
                return None
            head += chunk
        (n,) = struct.unpack(">I", head)
        body = b""
        while len(body) < n:
            chunk = s.recv(n - len(body))
            if not chunk:
                return None
            body += chunk
        fr = self.f.Frame()
        fr.ParseFromString(body)
        return fr

    def message(self, s, sid, msg):
        fr = self.f.Frame(stream_id=sid)
        fr.message.payload = msg.SerializeToString()
        self.send(s, fr)

    def end(self, s, sid, code=0, reason="", details=None):
        fr = self.f.Frame(stream_id=sid)
        fr.end.code = code
        fr.end.message = "fake says no" if code else ""
        fr.end.details.reason = reason
        fr.end.details.metadata.update(details or {})
        self.send(s, fr)

    def run(self, s, sid, output):
        e = self.pb["exec"]
        self.message(s, sid, e.ExecEvent(sequence=1, init=e.ExecEvent.Init(execution_id="x")))
        ev = e.ExecEvent(sequence=2)
        ev.output.stream = 1
        ev.output.data = output
        self.message(s, sid, ev)
        ev = e.ExecEvent(sequence=3)
        ev.exit.exit_code.code = 0
        self.message(s, sid, ev)
        self.end(s, sid)

    def serve(self, s):
        try:
            hello = self.recv(s)
            assert hello.WhichOneof("kind") == "hello" and hello.hello.token == "tok"
            ack = self.f.Frame()
            ack.hello_ack.protocol_version = 1
            ack.hello_ack.max_frame_size = 1 << 16
            ack.hello_ack.initial_window = 1 << 16
            ack.hello_ack.max_concurrent_streams = 8
            self.send(s, ack)
            method, nth, answered = "", 0, False
            while True:
                fr = self.recv(s)
                if fr is None:
                    return
                kind = fr.WhichOneof("kind")
                if kind == "call":
                    method, nth, answered = fr.call.method, 0, False
                    with self.lock:
                        self.calls += 1
                        self.last_deadline = fr.call.deadline_ms
                elif kind == "message" and not answered:
                    nth += 1
                    answered = self.answer(s, fr.stream_id, method, fr.message.payload, nth)
        except OSError:
            return

    def answer(self, s, sid, method, payload, nth):
        """Whether the call has had its End."""
        with self.lock:
            moved_to, create_owner = self.moved_to, self.create_owner
        if method == "/moat.v1.Exec/Interactive" and nth == 2:
            req = self.pb["exec"].InteractiveRequest()
            req.ParseFromString(payload)
            with self.lock:
                self.last_stdin = req.stdin
            self.run(s, sid, req.stdin)
            return True
        if moved_to and method != "/moat.v1.Sandboxes/CreateSession":
            self.end(s, sid, 9, "session_moved", {"owner_address": moved_to, "owner_node": "n-other"})
            return True
        if method == "/moat.v1.Exec/Interactive":
            return False  # its output is its stdin, which comes next
        if method == "/moat.v1.Sandboxes/CreateSession":
            self.message(s, sid, self.pb["sandbox"].SandboxSession(session_id=SESSION, status=1,
                                                                   owner_address=create_owner))
        elif method == "/moat.v1.Files/Stat":
            self.message(s, sid, self.pb["files"].FileInfo(path=self.addr, size=42))
        elif method == "/moat.v1.Exec/RunCommand":
            self.run(s, sid, self.addr.encode())
            return True
        else:
            self.end(s, sid, 12, "unknown_method")
            return True
        self.end(s, sid)
        return True


def stat(c, pb):
    f = pb["files"]
    return c.unary("/moat.v1.Files/Stat", f.StatRequest(session_id=SESSION, path="/f"), f.FileInfo,
                   session_id=SESSION).path


def expect(reason, fn, *args):
    try:
        fn(*args)
    except moat_client.MoatError as err:
        assert err.reason == reason, (reason, err)
        return err
    raise AssertionError("expected %s" % reason)


def case(pb, name, body):
    nodes = [Node(pb) for _ in range(4)]
    redirects = []
    c = moat_client.Client(pb, nodes[0].addr, "tok", on_redirect=lambda *a: redirects.append(a))
    try:
        body(pb, nodes, c, redirects)
        print("ok: %s" % name)
    finally:
        c.close()
        for n in nodes:
            n.down()


def one_redirect(pb, n, c, redirects):
    n[0].moved_to = n[1].addr
    assert stat(c, pb) == n[1].addr and len(redirects) == 1
    assert stat(c, pb) == n[1].addr and len(redirects) == 1
    assert (n[0].calls, n[1].calls, n[0].connections, n[1].connections) == (1, 2, 1, 1)


def two_redirects(pb, n, c, redirects):
    n[0].moved_to, n[1].moved_to = n[1].addr, n[2].addr
    assert stat(c, pb) == n[2].addr and len(redirects) == 2
    assert stat(c, pb) == n[2].addr
    assert (n[0].calls, n[1].calls, n[2].calls) == (1, 1, 2)


def redirect_loop(pb, n, c, redirects):
    n[0].moved_to, n[1].moved_to = n[1].addr, n[0].addr
    err = expect("redirect_loop", stat, c, pb)
    assert err.name == "UNAVAILABLE" and (n[0].calls, n[1].calls) == (2, 1)


def refused_owner(pb, n, c, redirects):
    n[0].moved_to = n[1].addr
    assert stat(c, pb) == n[1].addr
    n[1].down()
    n[0].moved_to = ""
    assert stat(c, pb) == n[0].addr
    assert stat(c, pb) == n[0].addr and n[0].calls == 3 and n[0].connections == 1
    n[0].moved_to = n[1].addr
    expect("connect_failed", stat, c, pb)


def garbage(pb, n, c, redirects):
    for bad in ["no-port", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", ":7070", "a b:1",
                "unix:/tmp/s", "[::1:7070", "x" * 300 + ":7070"]:
        n[0].moved_to = bad
        err = expect("bad_redirect", stat, c, pb)
        assert err.name == "INTERNAL"
    n[0].moved_to = ""
    assert stat(c, pb) == n[0].addr and not redirects


def exec_stream(pb, n, c, redirects):
    n[0].moved_to = n[1].addr
    got = []
    code, _ = c.run(SESSION, "hostname", lambda stream, data: got.append(data))
    assert code == 0 and got == [n[1].addr.encode()], got


def interactive(pb, n, c, redirects):
    n[0].moved_to = n[1].addr
    got = []
    code = c.interactive(SESSION, "cat", b"typed early", lambda stream, data: got.append(data))
    assert code == 0 and got == [b"typed early"] and n[1].last_stdin == b"typed early", got


def create_learns(pb, n, c, redirects):
    n[0].create_owner = n[2].addr
    assert c.create_session("123e4567-e89b-12d3-a456-426614174000").owner_address == n[2].addr
    assert stat(c, pb) == n[2].addr and (n[0].calls, n[2].calls) == (1, 1) and not redirects


def deadline(pb, n, c, redirects):
    n[0].moved_to = n[1].addr
    f = pb["files"]
    list(c.call("/moat.v1.Files/Stat", f.StatRequest(session_id=SESSION, path="/f"), f.FileInfo,
                 deadline_ms=30000, session_id=SESSION))
    assert n[0].last_deadline == 30000 and 0 < n[1].last_deadline <= 30000, n[1].last_deadline


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto-dir", default=moat_client.PROTO_DIR)
    ap.add_argument("--protoc", default="protoc")
    args = ap.parse_args()
    pb = moat_client.load_stubs(args.proto_dir, args.protoc)
    for name, body in [("one redirect followed and cached", one_redirect),
                       ("two redirects followed", two_redirects),
                       ("a third is redirect_loop", redirect_loop),
                       ("a refusing owner is dropped for the seed", refused_owner),
                       ("garbage owner_address is bad_redirect", garbage),
                       ("an Exec stream redirected before output", exec_stream),
                       ("interactive input sent before the redirect goes along", interactive),
                       ("CreateSession's owner_address is cached", create_learns),
                       ("the deadline covers the hops", deadline)]:
        case(pb, name, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
