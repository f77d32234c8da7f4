#!/usr/bin/python3
"""Writes the golden vectors (tests/vectors/*.hex) from the field values below.

Run by hand only when a vector is added: /usr/bin/python3 make_vectors.py OUTDIR
(uses Debian's python3-protobuf and stubs that protoc generates into a temp dir).
Each file is the full bytes of one frame on the wire (4-byte big-endian length,
then the encoded moat.v1.Frame), as hex text; '#' starts a comment, whitespace
is ignored. check_vectors.py and test_vectors.c decode them back."""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "..", "..", "proto")
CHAT = "123e4567-e89b-12d3-a456-426614174000"
SESSION = "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"


def stubs():
    out = tempfile.mkdtemp(prefix="moat-vec-")
    atexit.register(shutil.rmtree, out, True)
    files = [os.path.join(PROTO, "moat/v1", n + ".proto") for n in ("frame", "sandbox", "exec")]
    subprocess.run(["protoc", "-I" + PROTO, "--python_out=" + out] + files, check=True)
    sys.path.insert(0, out)


def frame_bytes(frame):
    body = frame.SerializeToString(deterministic=True)
    return len(body).to_bytes(4, "big") + body


def main():
    stubs()
    from moat.v1 import exec_pb2, frame_pb2, sandbox_pb2

    F = frame_pb2.Frame
    vectors = {}
    vectors["hello"] = ("Hello from a client, stream 0",
                        F(hello=frame_pb2.Hello(protocol_version=1, client_name="moat-cli/0.1.0",
                                                token="s3cret-token")))
    vectors["hello_ack"] = ("HelloAck: 1 MiB frames and window, 100 streams, 300 s idle",
                            F(hello_ack=frame_pb2.HelloAck(protocol_version=1, server_version="moatd/0.1.0",
                                                           max_frame_size=1048576, initial_window=1048576,
                                                           max_concurrent_streams=100,
                                                           idle_timeout_seconds=300)))
    call = F(stream_id=1, call=frame_pb2.Call(method="/moat.v1.Sandboxes/CreateSession", deadline_ms=30000))
    call.call.metadata["request_id"] = "req-0001"
    vectors["create_session_call"] = ("Call CreateSession on stream 1, 30 s deadline", call)
    req = sandbox_pb2.CreateSessionRequest(chat_id=CHAT, ttl_seconds=3600)
    vectors["create_session_request"] = ("Message on stream 1 carrying a CreateSessionRequest",
                                         F(stream_id=1, message=frame_pb2.Message(
                                             payload=req.SerializeToString(deterministic=True))))
    call = F(stream_id=3, call=frame_pb2.Call(method="/moat.v1.Exec/RunCommand"))
    call.call.metadata["request_id"] = "req-0002"
    call.call.metadata["trace_id"] = "4bf92f35"
    vectors["run_command_call"] = ("Call RunCommand on stream 3, no deadline, two metadata entries", call)
    req = exec_pb2.RunCommandRequest(session_id=SESSION, command="echo hi; printf '\\377' >&2",
                                     cwd="/workspace", timeout_ms=5000)
    req.env["LANG"] = "C.UTF-8"
    vectors["run_command_request"] = ("Message on stream 3 carrying a RunCommandRequest",
                                      F(stream_id=3, message=frame_pb2.Message(
                                          payload=req.SerializeToString(deterministic=True))))
    ev = exec_pb2.ExecEvent(sequence=1, timestamp_ms=1718000000100,
                            init=exec_pb2.ExecEvent.Init(execution_id="exec-7f3a"))
    vectors["exec_init"] = ("ExecEvent init on stream 3",
                            F(stream_id=3, message=frame_pb2.Message(payload=ev.SerializeToString())))
    ev = exec_pb2.ExecEvent(sequence=2, timestamp_ms=1718000000105,
                            output=exec_pb2.ExecEvent.Output(stream=exec_pb2.STDOUT,
                                                             data=b"hi\n\xff\xfe\x00bin"))
    vectors["exec_output"] = ("ExecEvent stdout output with non-UTF-8 bytes on stream 3",
                              F(stream_id=3, message=frame_pb2.Message(payload=ev.SerializeToString())))
    ev = exec_pb2.ExecEvent(sequence=3, timestamp_ms=1718000000110,
                            exit=exec_pb2.ExecEvent.Exit(exit_code=exec_pb2.ExitCode(code=3)))
    vectors["exec_exit"] = ("ExecEvent exit with code 3 on stream 3",
                            F(stream_id=3, message=frame_pb2.Message(payload=ev.SerializeToString())))
    start = exec_pb2.InteractiveRequest(start=exec_pb2.InteractiveStart(
        session_id=SESSION, cwd="/workspace", tty=True, size=exec_pb2.TerminalSize(rows=24, cols=80),
        term="xterm-256color"))
    vectors["interactive_start"] = ("Message on stream 5 opening an Interactive terminal (bash, 24x80)",
                                    F(stream_id=5, message=frame_pb2.Message(
                                        payload=start.SerializeToString(deterministic=True))))
    vectors["interactive_stdin"] = ("Message on stream 5: stdin 'ls\\r' for the terminal",
                                    F(stream_id=5, message=frame_pb2.Message(payload=exec_pb2.InteractiveRequest(
                                        stdin=b"ls\r").SerializeToString())))
    vectors["interactive_resize"] = ("Message on stream 5: resize to 50 rows, 132 columns",
                                     F(stream_id=5, message=frame_pb2.Message(payload=exec_pb2.InteractiveRequest(
                                         resize=exec_pb2.TerminalSize(rows=50, cols=132)).SerializeToString())))
    end = F(stream_id=1, end=frame_pb2.End(code=frame_pb2.UNAVAILABLE,
                                           message="sandbox container did not start",
                                           details=frame_pb2.ErrorDetails(reason="sandbox_start_failed")))
    end.end.details.metadata["chat_id"] = CHAT
    vectors["end_error"] = ("End of stream 1: UNAVAILABLE, sandbox_start_failed with the chat id", end)
    vectors["window_update"] = ("WindowUpdate: 65536 more bytes on stream 3",
                                F(stream_id=3, window_update=frame_pb2.WindowUpdate(increment=65536)))
    vectors["ping"] = ("Ping with payload 42, stream 0", F(ping=frame_pb2.Ping(payload=42)))

    outdir = sys.argv[1] if len(sys.argv) > 1 else HERE
    for name, (what, frame) in vectors.items():
        data = frame_bytes(frame)
        with open(os.path.join(outdir, name + ".hex"), "w") as f:
            f.write("# %s\n# %d bytes: 4-byte length prefix + moat.v1.Frame\n" % (what, len(data)))
            for i in range(0, len(data), 16):
                f.write(" ".join("%02x" % b for b in data[i:i + 16]) + "\n")


if __name__ == "__main__":
    main()
