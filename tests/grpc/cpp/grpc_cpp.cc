// C++ gRPC (Debian's libgrpc++) with stubs protoc's grpc_cpp_plugin generated from proto/ at
// build time, unchanged, against a real moatd and Docker: a session, a command's stdout, stderr
// and exit code, a deadline, a cancel, NOT_FOUND with moat's reason in
// grpc-status-details-bin, and 64 MiB with exact bytes.
// usage: grpc_cpp <host:port> <token>   (tests/grpc/run_client.py starts moatd for it)
#include <chrono>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>

#include <grpcpp/grpcpp.h>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "moat/v1/exec.grpc.pb.h"
#include "moat/v1/sandbox.grpc.pb.h"

namespace
{

const char kChat[] = "4f0e0d0c-0b0a-4908-8706-050403020104";
const char kMissing[] = "00000000-0000-4000-8000-000000000000";

std::string token;

void check(bool ok, const std::string &what)
{
    if (!ok)
        throw std::runtime_error(what);
}

std::unique_ptr<grpc::ClientContext> context(int seconds)
{
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->AddMetadata("authorization", "Bearer " + token);
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
    return ctx;
}

struct Run {
    std::string out, err;
    long long out_bytes = 0;
    bool pattern_ok = true; // stdout is "0123456789abcdef\n" repeated
    int code = -1;
    grpc::Status status;
};

Run run(moat::v1::Exec::Stub &exec, const std::string &session, const std::string &command,
        std::unique_ptr<grpc::ClientContext> ctx, bool cancel_on_output = false)
{
    static const char line[] = "0123456789abcdef\n";
    moat::v1::RunCommandRequest req;
    req.set_session_id(session);
    req.set_command(command);
    Run r;
    auto reader = exec.RunCommand(ctx.get(), req);
    moat::v1::ExecEvent ev;
    while (reader->Read(&ev)) {
        if (ev.has_output()) {
            const std::string &d = ev.output().data();
            if (ev.output().stream() == moat::v1::STDOUT) {
                for (size_t i = 0; i < d.size(); i++)
                    r.pattern_ok = r.pattern_ok && d[i] == line[(r.out_bytes + i) % 17];
                r.out_bytes += static_cast<long long>(d.size());
                if (r.out.size() < 4096)
                    r.out += d;
            } else {
                r.err += d;
            }
            if (cancel_on_output)
                ctx->TryCancel();
        } else if (ev.has_exit()) {
            r.code = ev.exit().exit_code().code();
        }
    }
    r.status = reader->Finish();
    return r;
}

} // namespace

int main(int argc, char **argv)
{
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s <host:port> <token>\n", argv[0]);
        return 2;
    }
    token = argv[2];
    auto channel = grpc::CreateChannel(argv[1], grpc::InsecureChannelCredentials());
    auto sandboxes = moat::v1::Sandboxes::NewStub(channel);
    auto exec = moat::v1::Exec::NewStub(channel);
    std::string step = "create";
    try {
        moat::v1::CreateSessionRequest create;
        create.set_chat_id(kChat);
        create.set_ttl_seconds(600);
        moat::v1::SandboxSession session;
        grpc::Status st = sandboxes->CreateSession(context(120).get(), create, &session);
        check(st.ok(), "CreateSession: " + st.error_message());
        check(session.status() == moat::v1::RUNNING, "session not running");

        step = "stdout, stderr and exit code";
        Run r = run(*exec, session.session_id(),
                    "for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 3", context(120));
        check(r.status.ok(), r.status.error_message());
        check(r.out == "out1\nout2\nout3\n" && r.err == "err1\nerr2\nerr3\n" && r.code == 3,
              "got \"" + r.out + "\" \"" + r.err + "\" " + std::to_string(r.code));

        step = "NOT_FOUND with its reason";
        r = run(*exec, kMissing, "true", context(60));
        check(r.status.error_code() == grpc::StatusCode::NOT_FOUND, r.status.error_message());
        google::rpc::Status details;
        check(details.ParseFromString(r.status.error_details()), "no grpc-status-details-bin");
        google::rpc::ErrorInfo info;
        check(details.details_size() == 1 && details.details(0).UnpackTo(&info), "no ErrorInfo");
        check(info.reason() == "session_not_found" && info.domain() == "moat" &&
                  info.metadata().at("session_id") == kMissing,
              "reason " + info.reason());

        step = "deadline";
        auto short_ctx = std::make_unique<grpc::ClientContext>();
        short_ctx->AddMetadata("authorization", "Bearer " + token);
        short_ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(1500));
        r = run(*exec, session.session_id(), "sleep 20; echo late", std::move(short_ctx));
        check(r.status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED,
              r.status.error_message());

        step = "cancel";
        r = run(*exec, session.session_id(), "echo started; sleep 30", context(60), true);
        check(r.status.error_code() == grpc::StatusCode::CANCELLED, r.status.error_message());
        r = run(*exec, session.session_id(), "echo after", context(60));
        check(r.status.ok() && r.out == "after\n", "after a cancel: " + r.out);

        step = "64 MiB, exact bytes";
        const long long size = 64ll << 20;
        r = run(*exec, session.session_id(),
                "yes 0123456789abcdef | head -c " + std::to_string(size), context(300));
        check(r.status.ok() && r.code == 0, r.status.error_message());
        check(r.out_bytes == size && r.pattern_ok, "got " + std::to_string(r.out_bytes));

        step = "stop";
        moat::v1::StopSessionRequest stop;
        stop.set_session_id(session.session_id());
        moat::v1::StopSessionResponse stopped;
        st = sandboxes->StopSession(context(60).get(), stop, &stopped);
        check(st.ok(), st.error_message());
    } catch (const std::exception &e) {
        std::fprintf(stderr, "grpc_cpp: failed at \"%s\": %s\n", step.c_str(), e.what());
        return 1;
    }
    std::printf("grpc_cpp: libgrpc++'s generated stubs drove moatd through every step\n");
    return 0;
}
