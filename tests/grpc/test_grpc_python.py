#!/usr/bin/python3
"""Python's grpcio with stubs generated from proto/ at test time (grpc_tools' protoc), unchanged,
against a real moatd's gRPC listener and real Docker: a session, a command's stdout, stderr and
exit code, a deadline, a cancel, NOT_FOUND with moat's reason in grpc-status-details-bin, 64 MiB
with exact bytes, and the token."""
import argparse
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
import test_python_client as helpers  # noqa: E402

CHAT = "1f0e0d0c-0b0a-4908-8706-050403020101"
MISSING = "00000000-0000-4000-8000-000000000000"
AUTH = [("authorization", "Bearer " + helpers.TOKEN)]
STDOUT, STDERR = 1, 2


def generate_stubs(proto_dir, out):
    """The stubs any user would generate: grpc_tools' protoc with the grpc plugin. gRPC's own
    services go where grpcio-health-checking and grpcio-reflection put theirs (grpc_health,
    grpc_reflection), since grpcio owns the Python package `grpc`."""
    from grpc_tools import protoc
    standard = os.path.join(out, "proto")
    for src, dst in (("grpc/health/v1/health.proto", "grpc_health/v1/health.proto"),
                     ("grpc/reflection/v1alpha/reflection.proto",
                      "grpc_reflection/v1alpha/reflection.proto")):
        os.makedirs(os.path.dirname(os.path.join(standard, dst)), exist_ok=True)
        shutil.copy(os.path.join(proto_dir, src), os.path.join(standard, dst))
    files = [os.path.join(root, f) for root, _, names in os.walk(proto_dir) for f in names
             if f.endswith(".proto") and f != "any.proto" and "/grpc/" not in root + "/"]
    for include, protos in ((proto_dir, files),
                            (standard, [os.path.join(standard, "grpc_health/v1/health.proto"),
                                        os.path.join(standard,
                                                     "grpc_reflection/v1alpha/reflection.proto")])):
        rc = protoc.main(["protoc", "-I" + include, "--python_out=" + out,
                          "--grpc_python_out=" + out] + protos)
        if rc != 0:
            raise RuntimeError("grpc_tools.protoc failed: %d" % rc)
    sys.path.insert(0, out)


def run(exec_stub, session_id, command, timeout=60, **kw):
    """RunCommand to its end: (stdout, stderr, exit code)."""
    from moat.v1 import exec_pb2
    out = {STDOUT: bytearray(), STDERR: bytearray()}
    code = None
    for ev in exec_stub.RunCommand(exec_pb2.RunCommandRequest(session_id=session_id, command=command,
                                                              **kw),
                                   metadata=AUTH, timeout=timeout):
        kind = ev.WhichOneof("kind")
        if kind == "output":
            out[ev.output.stream] += ev.output.data
        elif kind == "exit":
            code = ev.exit.exit_code.code
    return bytes(out[STDOUT]), bytes(out[STDERR]), code


def moatd_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for moatd (pid %d)" % pid)


def expect_status(code, fn):
    import grpc
    try:
        fn()
    except grpc.RpcError as err:
        assert err.code() == code, "expected %s, got %s: %s" % (code, err.code(), err.details())
        return err
    raise AssertionError("expected %s, the call succeeded" % code)


def error_info(err):
    """google.rpc.Status from grpc-status-details-bin, and the ErrorInfo it carries."""
    from google.rpc import error_details_pb2, status_pb2
    raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, "no grpc-status-details-bin in %r" % (err.trailing_metadata(),)
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    assert status.details and status.details[0].Unpack(info), status
    return status, info


def arguments(test):
    """The command line, and the exit status when grpcio is not there (77: skip; 1 under CI,
    whose machine has it), else None."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--moatd", required=True)
    ap.add_argument("--protoc", required=True)
    ap.add_argument("--proto-dir", required=True)
    args = ap.parse_args()
    missing = [m for m in ("grpc", "grpc_tools") if importlib.util.find_spec(m) is None]
    if missing and os.environ.get("CI") == "true":
        print("%s: CI has python3-grpcio and python3-grpc-tools, but not %s" % (test, missing),
              file=sys.stderr)
        return args, 1
    if missing:
        print("SKIP: %s: python3-grpcio and python3-grpc-tools are not installed" % test)
        return args, 77
    return args, None


def main():
    args, status = arguments("test_grpc_python")
    if status is not None:
        return status
    import grpc

    state = tempfile.mkdtemp(prefix="moat-grpcpy-state-")
    log = open(os.path.join(state, "moatd.log"), "wb")
    moatd = None
    step = "start"
    try:
        generate_stubs(args.proto_dir, os.path.join(state, "stubs"))
        from moat.v1 import exec_pb2_grpc, health_pb2, health_pb2_grpc, sandbox_pb2, sandbox_pb2_grpc
        moatd, _, grpc_port = helpers.start_moatd(args, state, log, grpc=True)
        channel = grpc.insecure_channel("127.0.0.1:%d" % grpc_port)
        sandboxes = sandbox_pb2_grpc.SandboxesStub(channel)
        execs = exec_pb2_grpc.ExecStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        step = "token"
        err = expect_status(grpc.StatusCode.UNAUTHENTICATED,
                            lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10))
        assert error_info(err)[1].reason == "missing_token", err
        err = expect_status(grpc.StatusCode.UNAUTHENTICATED,
                            lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10,
                                                 metadata=[("authorization", "Bearer wrong")]))
        assert error_info(err)[1].reason == "invalid_token", err
        h = health.Check(health_pb2.HealthCheckRequest(), metadata=AUTH, timeout=10)
        assert h.status == health_pb2.HealthCheckResponse.SERVING and h.docker_reachable, h

        step = "grpc.health.v1, without a token as probes call it"
        from grpc_health.v1 import health_pb2 as std_health, health_pb2_grpc as std_health_grpc
        probe = std_health_grpc.HealthStub(channel)
        assert probe.Check(std_health.HealthCheckRequest(), timeout=10).status == \
            std_health.HealthCheckResponse.SERVING
        assert probe.Check(std_health.HealthCheckRequest(service="moat.v1.Exec"), timeout=10).status \
            == std_health.HealthCheckResponse.SERVING
        expect_status(grpc.StatusCode.NOT_FOUND,
                      lambda: probe.Check(std_health.HealthCheckRequest(service="nope"), timeout=10))
        watch = probe.Watch(std_health.HealthCheckRequest(), timeout=30)
        assert next(watch).status == std_health.HealthCheckResponse.SERVING
        watch.cancel()

        step = "server reflection"
        from google.protobuf import descriptor_pb2
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
        asks = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="moat.v1.Exec"),
                reflection_pb2.ServerReflectionRequest(file_by_filename="no/such.proto")]
        answers = list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter(asks), metadata=AUTH, timeout=10))
        assert {s.name for s in answers[0].list_services_response.service} >= \
            {"moat.v1.Sandboxes", "moat.v1.Exec", "moat.v1.Files", "grpc.health.v1.Health"}, answers[0]
        exec_file = descriptor_pb2.FileDescriptorProto.FromString(
            answers[1].file_descriptor_response.file_descriptor_proto[0])
        run_command = [m for s in exec_file.service if s.name == "Exec" for m in s.method
                       if m.name == "RunCommand"]
        assert run_command and run_command[0].server_streaming, exec_file.service
        assert answers[2].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0], answers[2]

        step = "unknown method"
        nope = channel.unary_unary("/moat.v1.Nope/Nothing")
        err = expect_status(grpc.StatusCode.UNIMPLEMENTED, lambda: nope(b"", metadata=AUTH, timeout=10))
        assert error_info(err)[1].reason == "unknown_method", err

        step = "create"
        s = sandboxes.CreateSession(sandbox_pb2.CreateSessionRequest(chat_id=CHAT, ttl_seconds=600),
                                    metadata=AUTH, timeout=120)
        assert s.status == sandbox_pb2.RUNNING, s

        step = "stdout, stderr and exit code"
        out, errout, code = run(execs, s.session_id,
                                "for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 3")
        assert (out, errout, code) == (b"out1\nout2\nout3\n", b"err1\nerr2\nerr3\n", 3), \
            (out, errout, code)

        step = "NOT_FOUND with its reason"
        err = expect_status(grpc.StatusCode.NOT_FOUND, lambda: run(execs, MISSING, "true"))
        status, info = error_info(err)
        assert status.code == grpc.StatusCode.NOT_FOUND.value[0], status
        assert (info.reason, info.domain) == ("session_not_found", "moat"), info
        assert info.metadata["session_id"] == MISSING, info

        step = "Interactive: stdin, close_stdin, a terminal"
        from moat.v1 import exec_pb2 as xpb

        def interactive(requests):
            out, code = bytearray(), None
            for ev in execs.Interactive(iter(requests), metadata=AUTH, timeout=120):
                kind = ev.WhichOneof("kind")
                if kind == "output":
                    out += ev.output.data
                elif kind == "exit":
                    code = ev.exit.exit_code.code
            return bytes(out), code

        def start(**kw):
            return xpb.InteractiveRequest(start=xpb.InteractiveStart(session_id=s.session_id, **kw))

        out, code = interactive([start(command="wc -l; exit 4"),
                                 xpb.InteractiveRequest(stdin=b"a\n"),
                                 xpb.InteractiveRequest(stdin=b"b\n"),
                                 xpb.InteractiveRequest(close_stdin=True)])
        assert (out, code) == (b"2\n", 4), (out, code)
        out, code = interactive([start(command="stty size", tty=True,
                                       size=xpb.TerminalSize(rows=33, cols=111))])
        assert (out, code) == (b"33 111\r\n", 0), (out, code)

        step = "Interactive: 32 MiB of stdin paced by HTTP/2's windows, moatd's memory flat"
        piece, pieces = b"z" * 65536, 512
        rss_before = moatd_rss_kb(moatd.pid)
        peak = [rss_before]

        def flood():
            yield start(command="sleep 2; wc -c")
            for i in range(pieces):
                if i % 64 == 0:
                    peak[0] = max(peak[0], moatd_rss_kb(moatd.pid))
                yield xpb.InteractiveRequest(stdin=piece)
            yield xpb.InteractiveRequest(close_stdin=True)

        out, code = interactive(flood())
        assert (out, code) == (b"%d\n" % (len(piece) * pieces), 0), (out, code)
        # The process read nothing for 2 s while the client had 32 MiB to send: what moatd held
        # of it was one stream window and the sockets' buffers, not the 32 MiB.
        assert peak[0] - rss_before < 24 * 1024, (rss_before, peak[0])

        step = "deadline"
        t0 = time.monotonic()
        expect_status(grpc.StatusCode.DEADLINE_EXCEEDED,
                      lambda: run(execs, s.session_id, "sleep 20; echo late", timeout=1.5))
        assert time.monotonic() - t0 < 15

        step = "cancel"
        from moat.v1 import exec_pb2
        call = execs.RunCommand(exec_pb2.RunCommandRequest(session_id=s.session_id,
                                                           command="echo started; sleep 30"),
                                metadata=AUTH, timeout=60)
        for ev in call:
            if ev.WhichOneof("kind") == "output":
                break
        call.cancel()
        assert call.code() == grpc.StatusCode.CANCELLED, call.code()
        # moatd interrupted it: the session takes the next command at once.
        assert run(execs, s.session_id, "echo after")[0] == b"after\n"

        step = "64 MiB, exact bytes"
        size = 64 << 20
        line = b"0123456789abcdef\n"
        want = hashlib.sha256((line * (size // len(line) + 1))[:size]).hexdigest()
        got = hashlib.sha256()
        n = 0
        for ev in execs.RunCommand(
                exec_pb2.RunCommandRequest(session_id=s.session_id,
                                           command="yes 0123456789abcdef | head -c %d" % size),
                metadata=AUTH, timeout=300):
            if ev.WhichOneof("kind") == "output":
                assert ev.output.stream == STDOUT
                got.update(ev.output.data)
                n += len(ev.output.data)
            elif ev.WhichOneof("kind") == "exit":
                assert ev.exit.exit_code.code == 0, ev
        assert (n, got.hexdigest()) == (size, want), (n, size)

        step = "streams at once on one connection"
        results = [None] * 8

        def one(i):
            results[i] = run(execs, s.session_id, "echo %d; echo e%d >&2" % (i, i))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(results))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results == [(b"%d\n" % i, b"e%d\n" % i, 0) for i in range(len(results))], results

        step = "stop"
        sandboxes.StopSession(sandbox_pb2.StopSessionRequest(session_id=s.session_id),
                              metadata=AUTH, timeout=60)
        channel.close()
        print("test_grpc_python: grpcio's generated stubs drove moatd through every step")
        return 0
    except Exception as err:
        helpers.report_failure("test_grpc_python", step, err, state, log)
        return 1
    finally:
        helpers.clean_up(moatd, state)

if __name__ == "__main__":
    sys.exit(main())
