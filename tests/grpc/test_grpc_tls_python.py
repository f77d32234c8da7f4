#!/usr/bin/python3
"""grpcio's generated stubs over the gRPC listener's TLS (grpc_tls_cert, grpc_tls_key), against a
real moatd and real Docker: a certificate made here by openssl, grpc.secure_channel trusting it,
a session created and `echo hi` streamed with its exit code, 32 MiB with exact bytes; a cleartext
channel to the same port gets no answer, and the TLS one still works after it."""
import hashlib
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
sys.path.insert(0, HERE)
import test_python_client as helpers  # noqa: E402
import test_grpc_python as grpc_test  # noqa: E402

CHAT = "1f0e0d0c-0b0a-4908-8706-050403020102"


def make_certificate(directory):
    """A self-signed P-256 certificate for localhost and 127.0.0.1, and its key."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key,
                    "-out", cert], check=True, capture_output=True)
    return cert, key


def main():
    args, status = grpc_test.arguments("test_grpc_tls_python")
    if status is not None:
        return status
    import grpc

    state = tempfile.mkdtemp(prefix="moat-grpctls-state-")
    log = open(os.path.join(state, "moatd.log"), "wb")
    moatd = None
    step = "start"
    try:
        grpc_test.generate_stubs(args.proto_dir, os.path.join(state, "stubs"))
        from moat.v1 import exec_pb2_grpc, sandbox_pb2, sandbox_pb2_grpc
        cert, key = make_certificate(state)
        moatd, _, grpc_port = helpers.start_moatd(
            args, state, log, grpc=True,
            extra=["--grpc_tls_cert=" + cert, "--grpc_tls_key=" + key])
        with open(cert, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel("localhost:%d" % grpc_port, creds)

        step = "create over TLS"
        sandboxes = sandbox_pb2_grpc.SandboxesStub(channel)
        execs = exec_pb2_grpc.ExecStub(channel)
        s = sandboxes.CreateSession(sandbox_pb2.CreateSessionRequest(chat_id=CHAT, ttl_seconds=600),
                                    metadata=grpc_test.AUTH, timeout=120)
        assert s.status == sandbox_pb2.RUNNING, s

        step = "echo hi over TLS"
        got = grpc_test.run(execs, s.session_id, "echo hi; exit 5")
        assert got == (b"hi\n", b"", 5), got

        step = "32 MiB over TLS, exact bytes"
        size = 32 << 20
        out, errout, code = grpc_test.run(execs, s.session_id,
                                          "yes 0123456789abcdef | head -c %d" % size, timeout=300)
        want = (b"0123456789abcdef\n" * (size // 17 + 1))[:size]
        assert (len(out), errout, code) == (size, b"", 0), (len(out), errout, code)
        assert hashlib.sha256(out).digest() == hashlib.sha256(want).digest()

        step = "a cleartext channel to the TLS port"
        plain = grpc.insecure_channel("127.0.0.1:%d" % grpc_port)
        grpc_test.expect_status(
            grpc.StatusCode.UNAVAILABLE,
            lambda: grpc_test.run(exec_pb2_grpc.ExecStub(plain), s.session_id, "echo no",
                                  timeout=10))
        plain.close()
        assert grpc_test.run(execs, s.session_id, "echo again") == (b"again\n", b"", 0)

        step = "stop"
        sandboxes.StopSession(sandbox_pb2.StopSessionRequest(session_id=s.session_id),
                              metadata=grpc_test.AUTH, timeout=60)
        channel.close()
        print("test_grpc_tls_python: grpcio's stubs ran a command over TLS")
        return 0
    except Exception as err:
        helpers.report_failure("test_grpc_tls_python", step, err, state, log)
        return 1
    finally:
        helpers.clean_up(moatd, state)


if __name__ == "__main__":
    sys.exit(main())
