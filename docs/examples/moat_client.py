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
"""
import argparse
import importlib
import itertools
import os
import socket
import struct
import subprocess
import sys
import tempfile

# What Client._next returns for a WindowUpdate on the call's stream.
CREDIT = object()
PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")
PREHELLO_MAX_FRAME = 4096


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
    """A call's End (or the connection's GoAway) with a code other than OK."""

    def __init__(self, code, name, message, reason=""):
        super().__init__("%s: %s%s" % (name, message, " (reason=%s)" % reason if reason else ""))
        self.code, self.name, self.message, self.reason = code, name, message, reason


class Client:
    def __init__(self, pb, addr, token="", client_name="moat-python-example/1"):
        self.pb = pb
        self.frame_pb = pb["frame"]
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
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
            return MoatError(st.code, name, st.message, reason)
        return MoatError(13, "INTERNAL", "unexpected %s frame" % kind)

    def _open(self, method, request, deadline_ms=0):
        """Sends Call and the request's Message on a new stream; returns the call's state."""
        sid = self.next_id
        self.next_id += 2
        start = self.frame_pb.Frame(stream_id=sid)
        start.call.method = method
        start.call.deadline_ms = deadline_ms
        self._send(start)
        call = _Call(sid, self.ack.initial_window)
        self._send_message(call, request.SerializeToString())
        return call

    def _send_message(self, call, payload):
        """A request Message; its payload counts against the credit the server granted."""
        assert len(payload) <= call.credit
        call.credit -= len(payload)
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

    def call(self, method, request, response_cls, deadline_ms=0):
        """Opens a call and yields its response messages; raises MoatError unless it ends OK."""
        call = self._open(method, request, deadline_ms)
        while True:
            payload = self._next(call)
            if payload is None:
                return
            if payload is CREDIT:
                continue
            resp = response_cls()
            resp.ParseFromString(payload)
            yield resp

    def unary(self, method, request, response_cls):
        out = list(self.call(method, request, response_cls))
        if len(out) != 1:
            raise MoatError(13, "INTERNAL", "%s answered %d messages" % (method, len(out)))
        return out[0]

    def health(self):
        h = self.pb["health"]
        return self.unary("/moat.v1.Health/Check", h.HealthCheckRequest(), h.HealthCheckResponse)

    def create_session(self, chat_id, ttl_seconds=0, force_new=False):
        s = self.pb["sandbox"]
        req = s.CreateSessionRequest(chat_id=chat_id, ttl_seconds=ttl_seconds, force_new=force_new)
        return self.unary("/moat.v1.Sandboxes/CreateSession", req, s.SandboxSession)

    def stop_session(self, session_id):
        s = self.pb["sandbox"]
        return self.unary("/moat.v1.Sandboxes/StopSession", s.StopSessionRequest(session_id=session_id),
                          s.StopSessionResponse)

    def run(self, session_id, command, on_output=None, timeout_ms=0, cwd="", env=None):
        """Runs a command; on_output(stream, data) gets each chunk as it arrives. Returns
        (exit code or None, timed_out); the code is None when the exit status is unknown."""
        e = self.pb["exec"]
        req = e.RunCommandRequest(session_id=session_id, command=command, timeout_ms=timeout_ms, cwd=cwd)
        req.env.update(env or {})
        code, timed_out, expected = None, False, 1
        for ev in self.call("/moat.v1.Exec/RunCommand", req, e.ExecEvent):
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
        call = self._open("/moat.v1.Exec/Interactive", req)
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
    """One call: its stream id, the credit left for its request messages, and how much of its
    responses' window has been consumed since the last WindowUpdate."""

    def __init__(self, sid, credit):
        self.sid, self.credit, self.consumed = sid, credit, 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", default=os.environ.get("MOAT_ADDR", "127.0.0.1:7070"))
    ap.add_argument("--token", default=os.environ.get("MOAT_TOKEN", ""))
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
        c = Client(pb, args.addr, args.token)
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
