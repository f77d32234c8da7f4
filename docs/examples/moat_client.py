#!/usr/bin/python3
"""A moat client in Python, written from docs/PROTOCOL.md alone: length-prefixed moat.v1.Frame
messages over TCP, the Hello, calls, flow control, keepalive and go-away. It needs Python's
protobuf (Debian: python3-protobuf) and protoc (protobuf-compiler), which turns proto/ into
Python modules at start-up, in a temporary directory.

    python3 moat_client.py [--addr HOST:PORT] [--token T] health
    python3 moat_client.py create CHAT_UUID
    python3 moat_client.py exec SESSION 'echo out; echo err >&2; exit 3'   # exits 3
    printf 'a\nb\n' | python3 moat_client.py exec --stdin SESSION 'wc -l'   # 2
    python3 moat_client.py stop SESSION

MOAT_ADDR and MOAT_TOKEN are read as the moat CLI reads them. One call runs at a time on a
connection here; the protocol allows many (odd stream ids, interleaved frames).

In a moat cluster (docs/CLUSTER.md, "Routing") a call for a session another node holds ends
FAILED_PRECONDITION session_moved with the owner's address; this client follows it as libmoat
does: the call goes again to the owner (same token), within its one deadline, before any answer
only; owners are cached per session (1024) with one connection per owner (16); a third move in a
row is UNAVAILABLE redirect_loop, an owner_address that is not host:port INTERNAL bad_redirect, and
a cached owner that refuses the connection is forgotten for the first address (--verbose prints
each redirect on stderr).
"""
import argparse
import collections
import importlib
import itertools
import os
import re
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time

# What Client._next returns for a WindowUpdate on the call's stream.
CREDIT = object()
PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")
PREHELLO_MAX_FRAME = 4096
# Routing: session_moved answers followed in a row, sessions whose owner is kept, connections to
# other nodes, and what an owner_address must look like (host:port; a host name, an IPv4 address
# or an IPv6 one in brackets; 261 bytes at most).
MOVES_FOLLOWED = 2
OWNERS_CACHED = 1024
CONNECTIONS_MAX = 16
ADDR_MAX = 261
ADDR_RE = re.compile(r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})")


def load_stubs(proto_dir=PROTO_DIR, protoc="protoc"):
    """Generates the moat.v1 modules with protoc and imports them."""
    names = ("frame", "sandbox", "exec", "files", "health")
    protos = [os.path.join(proto_dir, "moat", "v1", n + ".proto") for n in names]
    with tempfile.TemporaryDirectory(prefix="moat-py-stubs-") as out:
        subprocess.run([protoc, "-I" + proto_dir, "--python_out=" + out] + protos, check=True)
        sys.path.insert(0, out)
        try:
            return {n: importlib.import_module("moat.v1.%s_pb2" % n) for n in names}
        finally:
            sys.path.remove(out)


class MoatError(Exception):
    """A call's End (or the connection's GoAway) with a code other than OK; details holds the
    End's metadata (owner_address of a session_moved, chat_id, ...)."""

    def __init__(self, code, name, message, reason="", details=None):
        super().__init__("%s: %s%s" % (name, message, " (reason=%s)" % reason if reason else ""))
        self.code, self.name, self.message, self.reason = code, name, message, reason
        self.details = details or {}


def addr_ok(addr):
    """Whether addr is a host:port this client follows."""
    m = ADDR_RE.fullmatch(addr) if len(addr) <= ADDR_MAX else None
    return m is not None and 1 <= int(m.group(1)) <= 65535


class _Connection:
    """One connection: the Hello, frames, and calls one at a time."""

    def __init__(self, pb, addr, token, client_name, timeout=None):
        self.addr = addr
        self.frame_pb = pb["frame"]
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.max_frame = PREHELLO_MAX_FRAME
        self.next_id = 1
        hello = self.frame_pb.Frame(stream_id=0)
        hello.hello.protocol_version = 1
        hello.hello.client_name = client_name
        hello.hello.token = token
        self._send(hello)
        f = self._recv()
        if f.WhichOneof("kind") != "hello_ack":
            raise self._refusal(f)
        self.ack = f.hello_ack
        self.max_frame = self.ack.max_frame_size

    def close(self):
        self.sock.close()

    def idle_and_open(self):
        """Whether the connection, with no call on it, is still open: a server that closed it (or
        sent anything, which an idle connection is never sent but a GoAway) makes it readable."""
        return not select.select([self.sock], [], [], 0)[0]

    def _send(self, frame):
        body = frame.SerializeToString()
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def _read_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise MoatError(14, "UNAVAILABLE", "the connection ended")
            buf += chunk
        return bytes(buf)

    def _recv(self):
        (length,) = struct.unpack(">I", self._read_exact(4))
        # The declared length is checked before anything is read into memory.
        if length == 0 or length > self.max_frame:
            raise MoatError(3, "INVALID_ARGUMENT", "frame of %d bytes (limit %d)" % (length, self.max_frame))
        f = self.frame_pb.Frame()
        f.ParseFromString(self._read_exact(length))
        return f

    def _refusal(self, f):
        kind = f.WhichOneof("kind")
        if kind in ("go_away", "end"):
            st = getattr(f, kind)
            name = self.frame_pb.StatusCode.Name(st.code)
            reason = st.details.reason if kind == "end" else ""
            details = dict(st.details.metadata) if kind == "end" else {}
            return MoatError(st.code, name, st.message, reason, details)
        return MoatError(13, "INTERNAL", "unexpected %s frame" % kind)

    def _open(self, call, deadline_ms):
        """Sends the call's Call and the request Messages it has sent so far (one, or more when a
        redirect sends it here) on a new stream of this connection."""
        call.conn, call.sid, call.credit, call.consumed = self, self.next_id, self.ack.initial_window, 0
        self.next_id += 2
        start = self.frame_pb.Frame(stream_id=call.sid)
        start.call.method = call.method
        start.call.deadline_ms = deadline_ms
        self._send(start)
        for payload in call.sent:
            self._send_message(call, payload, record=False)

    def _send_message(self, call, payload, record=True):
        """A request Message; its payload counts against the credit the server granted. Until the
        call's first answer it is kept, to go again with the call if the session moved."""
        if len(payload) > call.credit:
            raise MoatError(3, "INVALID_ARGUMENT", "the request does not fit the window", "request_too_big")
        call.credit -= len(payload)
        if record and call.sent is not None:
            call.sent.append(payload)
        msg = self.frame_pb.Frame(stream_id=call.sid)
        msg.message.payload = payload
        self._send(msg)

    def _next(self, call):
        """Reads frames until the call's next response payload, None at its End, or CREDIT when a
        WindowUpdate added to its credit; raises MoatError for an End other than OK."""
        while True:
            f = self._recv()
            kind = f.WhichOneof("kind")
            if kind == "ping":
                pong = self.frame_pb.Frame(stream_id=0)
                pong.pong.payload = f.ping.payload
                self._send(pong)
            elif kind == "go_away":
                if f.go_away.last_stream_id < call.sid:
                    raise self._refusal(f)
            elif f.stream_id != call.sid:
                continue  # frames of other calls
            elif kind == "window_update":
                call.credit += f.window_update.increment
                return CREDIT
            elif kind == "message":
                call.consumed += len(f.message.payload)
                # Credit goes back once half the window has been consumed, as libmoat does.
                if call.consumed >= self.ack.initial_window // 2:
                    wu = self.frame_pb.Frame(stream_id=call.sid)
                    wu.window_update.increment = call.consumed
                    self._send(wu)
                    call.consumed = 0
                return f.message.payload
            elif kind == "end":
                if f.end.code != 0:
                    raise self._refusal(f)
                return None



class Client:
    """A moat client: a connection to addr (the seed), and in a cluster one to each session owner
    it has been sent to."""

    def __init__(self, pb, addr, token="", client_name="moat-python-example/1", on_redirect=None):
        self.pb = pb
        self.seed = addr
        self.token, self.client_name, self.on_redirect = token, client_name, on_redirect
        self.conns = collections.OrderedDict()  # addr -> _Connection, least recently used first
        self.owners = collections.OrderedDict()  # session id -> owner address, the same
        self.conns[addr] = _Connection(pb, addr, token, client_name)

    @property
    def ack(self):
        return self.conns[self.seed].ack

    @property
    def sock(self):
        return self.conns[self.seed].sock

    def close(self):
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()

    def _connection(self, addr, timeout=None):
        """The connection to addr, opened if there is none (the least recently used one of another
        node closed when CONNECTIONS_MAX are open)."""
        if addr in self.conns and (addr == self.seed or self.conns[addr].idle_and_open()):
            self.conns.move_to_end(addr)
            return self.conns[addr]
        if addr in self.conns:
            self.conns.pop(addr).close()
        conn = _Connection(self.pb, addr, self.token, self.client_name, timeout)
        others = [a for a in self.conns if a != self.seed]
        if len(others) >= CONNECTIONS_MAX:
            self.conns.pop(others[0]).close()
        self.conns[addr] = conn
        return conn

    def learn(self, session_id, addr):
        """Remembers that session_id lives at addr (an answer's owner_address)."""
        if not session_id or not addr_ok(addr) or addr == self.seed:
            self.owners.pop(session_id, None)
            return
        self.owners[session_id] = addr
        self.owners.move_to_end(session_id)
        if len(self.owners) > OWNERS_CACHED:
            self.owners.popitem(last=False)

    def _route(self, session_id):
        """The connection a call for session_id goes to first: its cached owner's; one that
        refuses the connection is forgotten, and the seed is asked again."""
        addr = self.owners.get(session_id)
        if addr is None:
            return self.conns[self.seed]
        self.owners.move_to_end(session_id)
        try:
            return self._connection(addr)
        except OSError:
            del self.owners[session_id]
            return self.conns[self.seed]

    def _follow(self, call, err):
        """Sends a call that ended session_moved before any answer again, to the owner."""
        if call.hops >= MOVES_FOLLOWED:
            raise MoatError(14, "UNAVAILABLE", "the session moved three times in a row", "redirect_loop")
        addr = err.details.get("owner_address", "")
        if not addr_ok(addr):
            raise MoatError(13, "INTERNAL", "session_moved without an owner_address that is host:port",
                            "bad_redirect")
        call.hops += 1
        left_ms = 0
        if call.deadline is not None:
            left_ms = int((call.deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise MoatError(4, "DEADLINE_EXCEEDED", "the deadline passed while the call followed its session",
                                "deadline_exceeded")
        self.learn(call.session_id, addr)
        if self.on_redirect is not None:
            self.on_redirect(call.session_id, call.conn.addr, addr)
        try:
            conn = self._connection(addr, left_ms / 1000 if left_ms else None)
        except OSError as e:
            self.owners.pop(call.session_id, None)
            raise MoatError(14, "UNAVAILABLE", "%s: %s" % (addr, e), "connect_failed")
        conn._open(call, left_ms)

    def _start(self, method, payload, deadline_ms=0, session_id=""):
        """Opens a call for session_id (where its owner is) with its request's payload."""
        call = _Call(method, session_id, deadline_ms)
        conn = self._route(session_id) if session_id else self.conns[self.seed]
        call.sent.append(payload)
        conn._open(call, deadline_ms)
        return call

    def _next(self, call):
        """The call's next response payload, None at its End, or CREDIT; a session_moved End before
        any answer is followed."""
        while True:
            try:
                payload = call.conn._next(call)
            except MoatError as err:
                if err.reason != "session_moved" or call.sent is None or not call.session_id:
                    raise
                self._follow(call, err)
                continue
            if payload is not CREDIT:
                call.sent = None  # answered: never sent again
            return payload

    def _send_message(self, call, payload):
        call.conn._send_message(call, payload)

    def call(self, method, request, response_cls, deadline_ms=0, session_id=""):
        """Opens a call and yields its response messages; raises MoatError unless it ends OK. A
        call that names session_id goes to where that session is."""
        call = self._start(method, request.SerializeToString(), deadline_ms, session_id)
        while True:
            payload = self._next(call)
            if payload is None:
                return
            if payload is CREDIT:
                continue
            resp = response_cls()
            resp.ParseFromString(payload)
            yield resp

    def unary(self, method, request, response_cls, session_id=""):
        out = list(self.call(method, request, response_cls, session_id=session_id))
        if len(out) != 1:
            raise MoatError(13, "INTERNAL", "%s answered %d messages" % (method, len(out)))
        return out[0]

    def health(self):
        h = self.pb["health"]
        return self.unary("/moat.v1.Health/Check", h.HealthCheckRequest(), h.HealthCheckResponse)

    def create_session(self, chat_id, ttl_seconds=0, force_new=False):
        s = self.pb["sandbox"]
        req = s.CreateSessionRequest(chat_id=chat_id, ttl_seconds=ttl_seconds, force_new=force_new)
        session = self.unary("/moat.v1.Sandboxes/CreateSession", req, s.SandboxSession)
        if session.owner_address:
            self.learn(session.session_id, session.owner_address)
        return session

    def stop_session(self, session_id):
        s = self.pb["sandbox"]
        return self.unary("/moat.v1.Sandboxes/StopSession", s.StopSessionRequest(session_id=session_id),
                          s.StopSessionResponse, session_id=session_id)

    def run(self, session_id, command, on_output=None, timeout_ms=0, cwd="", env=None):
        """Runs a command; on_output(stream, data) gets each chunk as it arrives. Returns
        (exit code or None, timed_out); the code is None when the exit status is unknown."""
        e = self.pb["exec"]
        req = e.RunCommandRequest(session_id=session_id, command=command, timeout_ms=timeout_ms, cwd=cwd)
        req.env.update(env or {})
        code, timed_out, expected = None, False, 1
        for ev in self.call("/moat.v1.Exec/RunCommand", req, e.ExecEvent, session_id=session_id):
            if ev.sequence != expected:
                raise MoatError(15, "DATA_LOSS", "event %d after %d" % (ev.sequence, expected - 1))
            expected += 1
            kind = ev.WhichOneof("kind")
            if kind == "output" and on_output is not None:
                on_output(ev.output.stream, ev.output.data)
            elif kind == "exit":
                timed_out = ev.exit.timed_out
                if ev.exit.exit_code.WhichOneof("value") == "code":
                    code = ev.exit.exit_code.code
        return code, timed_out


    def interactive(self, session_id, command, stdin=b"", on_output=None, tty=False, rows=0, cols=0):
        """Exec/Interactive: runs command (empty: an interactive bash; tty: in a terminal of rows x
        cols) with stdin as its input, sent in Messages as fast as the stream's window lets them go,
        then close_stdin; on_output(stream, data) gets the output as it arrives. Returns the exit
        code, or None when it is unknown."""
        e = self.pb["exec"]
        req = e.InteractiveRequest()
        req.start.session_id = session_id
        req.start.command = command
        req.start.tty = tty
        if rows or cols:
            req.start.size.rows, req.start.size.cols = rows, cols
        call = self._start("/moat.v1.Exec/Interactive", req.SerializeToString(), session_id=session_id)
        outcome = {"code": None, "ended": False}

        def handle(payload):
            if payload is None:
                outcome["ended"] = True
            if payload is None or payload is CREDIT:
                return
            ev = e.ExecEvent()
            ev.ParseFromString(payload)
            kind = ev.WhichOneof("kind")
            if kind == "output" and on_output is not None:
                on_output(ev.output.stream, ev.output.data)
            elif kind == "exit" and ev.exit.exit_code.WhichOneof("value") == "code":
                outcome["code"] = ev.exit.exit_code.code

        # 64 KiB pieces, each wrapped in an InteractiveRequest: far below a frame and the window,
        # and what a terminal's reader takes at once.
        piece = 64 * 1024
        inputs = (e.InteractiveRequest(stdin=stdin[i:i + piece]) for i in range(0, len(stdin), piece))
        for r in itertools.chain(inputs, [e.InteractiveRequest(close_stdin=True)]):
            payload = r.SerializeToString()
            # The server grants credit back as it hands input to the process; until then, read.
            while call.credit < len(payload) and not outcome["ended"]:
                handle(self._next(call))
            if outcome["ended"]:
                break
            self._send_message(call, payload)
        while not outcome["ended"]:
            handle(self._next(call))
        return outcome["code"]


class _Call:
    """One call: its connection and stream id there, the credit left for its request messages, how
    much of its responses' window has been consumed since the last WindowUpdate, and, until its
    first answer, what a redirect needs to send it again (the request messages sent, the hops so
    far, when its deadline passes)."""

    def __init__(self, method, session_id, deadline_ms):
        self.method, self.session_id, self.hops, self.sent = method, session_id, 0, []
        self.deadline = time.monotonic() + deadline_ms / 1000 if deadline_ms else None
        self.conn, self.sid, self.credit, self.consumed = None, 0, 0, 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", default=os.environ.get("MOAT_ADDR", "127.0.0.1:7070"))
    ap.add_argument("--token", default=os.environ.get("MOAT_TOKEN", ""))
    ap.add_argument("--verbose", "-v", action="store_true", help="print each redirect followed on stderr")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("health")
    sub.add_parser("create").add_argument("chat")
    ex = sub.add_parser("exec")
    ex.add_argument("session")
    ex.add_argument("command")
    ex.add_argument("--stdin", action="store_true", help="send this program's stdin to the command")
    sub.add_parser("stop").add_argument("session")
    args = ap.parse_args()

    pb = load_stubs()
    try:
        def redirected(session_id, src, dst):
            print("moat_client: session %s is at %s (redirected by %s)" % (session_id, dst, src), file=sys.stderr)

        c = Client(pb, args.addr, args.token, on_redirect=redirected if args.verbose else None)
        if args.cmd == "health":
            h = c.health()
            print(h.server_version, "docker_reachable=%s" % h.docker_reachable, "live_sessions=%d" % h.live_sessions)
        elif args.cmd == "create":
            print(c.create_session(args.chat).session_id)
        elif args.cmd == "stop":
            c.stop_session(args.session)
        else:
            out = {1: sys.stdout.buffer, 2: sys.stderr.buffer}

            def write(stream, data):
                out[stream].write(data)
                out[stream].flush()

            if args.stdin:
                code, timed_out = c.interactive(args.session, args.command, sys.stdin.buffer.read(), write), False
            else:
                code, timed_out = c.run(args.session, args.command, write)
            return 124 if timed_out else (code if code is not None and code >= 0 else 1)
        return 0
    except MoatError as err:
        print("moat_client: %s" % err, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
