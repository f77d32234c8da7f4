#!/usr/bin/python3
"""Starts a moatd with its gRPC listener against Docker, runs a client program given as
`-- PROGRAM ARGS…` with the listener's host:port and the token appended, and cleans up: the
C++ stubs' test (tests/grpc/cpp) runs through it. Exits with the client's status."""
import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
import test_python_client as helpers  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moatd", required=True)
    ap.add_argument("client", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    client = args.client[1:] if args.client[:1] == ["--"] else args.client
    state = tempfile.mkdtemp(prefix="moat-grpc-client-state-")
    log = open(os.path.join(state, "moatd.log"), "wb")
    moatd = None
    try:
        moatd, _, grpc_port = helpers.start_moatd(args, state, log, grpc=True)
        rc = subprocess.run(client + ["127.0.0.1:%d" % grpc_port, helpers.TOKEN]).returncode
        if rc != 0:
            helpers.report_failure(os.path.basename(client[0]), "client", "exit %d" % rc, state,
                                   log)
        return rc
    finally:
        helpers.clean_up(moatd, state)


if __name__ == "__main__":
    sys.exit(main())
