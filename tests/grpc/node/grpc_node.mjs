// Node's @grpc/grpc-js with stubs loaded from proto/ by @grpc/proto-loader (versions pinned in
// package-lock.json), unchanged, against a real moatd's gRPC listener and real Docker: a
// session, a command's stdout, stderr and exit code, a deadline, a cancel, NOT_FOUND with moat's
// reason in grpc-status-details-bin, and 64 MiB with exact bytes.
// usage: node grpc_node.mjs <moatd> <proto dir>
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const [moatdBin, protoDir] = process.argv.slice(2);
assert.ok(moatdBin && protoDir, "usage: node grpc_node.mjs <moatd> <proto dir>");

const TOKEN = "grpc-node-token";
const PREFIX = `moat-grpcnode${process.pid}-`;
const CHAT = "3f0e0d0c-0b0a-4908-8706-050403020103";
const MISSING = "00000000-0000-4000-8000-000000000000";

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function listening(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.on("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.on("error", () => resolve(false));
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moat-grpc-node-"));
const port = await freePort();
const moatd = spawn(
  moatdBin,
  [
    `--listen=127.0.0.1:${await freePort()}`,
    `--grpc_listen=127.0.0.1:${port}`,
    "--metrics_listen=",
    `--state_dir=${path.join(tmp, "state")}`,
    `--token=${TOKEN}`,
    `--container_name_prefix=${PREFIX}`,
    "--image=moat-sandbox:latest",
    "--log_level=warn",
  ],
  { stdio: ["ignore", "inherit", "inherit"] },
);

// Stops moatd, removes this run's sandboxes, then what moatd mounted under its state and the
// state itself.
async function cleanUp() {
  const exited = new Promise((resolve) => moatd.once("exit", resolve));
  if (moatd.exitCode === null) {
    moatd.kill("SIGTERM");
    await exited;
  }
  const ids = spawnSync("docker", ["ps", "-aq", "--filter", `name=${PREFIX}`], { encoding: "utf8" })
    .stdout.split(/\s+/)
    .filter(Boolean);
  if (ids.length > 0) spawnSync("docker", ["rm", "-f", ...ids]);
  const mounts = fs
    .readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[4])
    .filter((p) => p && (p === tmp || p.startsWith(tmp + "/")));
  for (const p of mounts.reverse()) spawnSync("umount", [p]);
  spawnSync("rm", ["-rf", "--one-file-system", tmp]);
}

let step = "start";
try {
  for (let i = 0; i < 200 && !(await listening(port)); i++) await sleep(50);

  // The stubs, loaded from the .proto files as any grpc-js user loads them.
  const files = ["moat/v1/sandbox.proto", "moat/v1/exec.proto", "moat/v1/health.proto"];
  const def = protoLoader.loadSync(files, {
    includeDirs: [protoDir],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const moat = grpc.loadPackageDefinition(def).moat.v1;
  const addr = `127.0.0.1:${port}`;
  const creds = grpc.credentials.createInsecure();
  const sandboxes = new moat.Sandboxes(addr, creds);
  const exec = new moat.Exec(addr, creds);
  const auth = new grpc.Metadata();
  auth.set("authorization", `Bearer ${TOKEN}`);
  const root = protobuf.loadSync([
    path.join(protoDir, "google/rpc/status.proto"),
    path.join(protoDir, "google/rpc/error_details.proto"),
  ]);
  const Status = root.lookupType("google.rpc.Status");
  const ErrorInfo = root.lookupType("google.rpc.ErrorInfo");

  const unary = (client, method, req, md = auth, deadlineMs = 120000) =>
    new Promise((resolve, reject) =>
      client[method](req, md, { deadline: Date.now() + deadlineMs }, (err, res) =>
        err ? reject(err) : resolve(res),
      ),
    );

  // RunCommand to its end: stdout, stderr, exit code (and a hash of stdout for big outputs).
  const run = (sessionId, command, deadlineMs = 120000) =>
    new Promise((resolve, reject) => {
      const call = exec.RunCommand({ session_id: sessionId, command }, auth, {
        deadline: Date.now() + deadlineMs,
      });
      const out = [];
      const err = [];
      const hash = crypto.createHash("sha256");
      let bytes = 0;
      let code = null;
      call.on("data", (ev) => {
        if (ev.output) {
          const data = Buffer.from(ev.output.data);
          if (ev.output.stream === "STDOUT") {
            hash.update(data);
            bytes += data.length;
            if (bytes <= 1 << 20) out.push(data);
          } else err.push(data);
        } else if (ev.exit) code = ev.exit.exit_code.code;
      });
      call.on("error", reject);
      call.on("end", () =>
        resolve({
          out: Buffer.concat(out).toString(),
          err: Buffer.concat(err).toString(),
          code,
          bytes,
          sha256: hash.digest("hex"),
        }),
      );
    });

  step = "token";
  await assert.rejects(unary(sandboxes, "ListSessions", {}, new grpc.Metadata()), (e) => {
    assert.equal(e.code, grpc.status.UNAUTHENTICATED);
    return true;
  });

  step = "create";
  const s = await unary(sandboxes, "CreateSession", { chat_id: CHAT, ttl_seconds: 600 });
  assert.equal(s.status, "RUNNING");

  step = "stdout, stderr and exit code";
  const r = await run(s.session_id, "for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 3");
  assert.deepEqual([r.out, r.err, r.code], ["out1\nout2\nout3\n", "err1\nerr2\nerr3\n", 3]);

  step = "NOT_FOUND with its reason";
  await assert.rejects(run(MISSING, "true"), (e) => {
    assert.equal(e.code, grpc.status.NOT_FOUND);
    const status = Status.decode(e.metadata.get("grpc-status-details-bin")[0]);
    assert.equal(status.code, grpc.status.NOT_FOUND);
    assert.equal(status.details[0].type_url, "type.googleapis.com/google.rpc.ErrorInfo");
    const info = ErrorInfo.decode(status.details[0].value);
    assert.equal(info.reason, "session_not_found");
    assert.equal(info.domain, "moat");
    assert.equal(info.metadata.session_id, MISSING);
    return true;
  });

  step = "deadline";
  await assert.rejects(run(s.session_id, "sleep 20; echo late", 1500), (e) => {
    assert.equal(e.code, grpc.status.DEADLINE_EXCEEDED);
    return true;
  });

  step = "cancel";
  await new Promise((resolve, reject) => {
    const call = exec.RunCommand({ session_id: s.session_id, command: "echo started; sleep 30" }, auth);
    call.on("data", (ev) => {
      if (ev.output) call.cancel();
    });
    call.on("error", (e) => (e.code === grpc.status.CANCELLED ? resolve() : reject(e)));
    call.on("end", () => reject(new Error("the call ended without being cancelled")));
  });
  assert.equal((await run(s.session_id, "echo after")).out, "after\n");

  step = "64 MiB, exact bytes";
  const size = 64 << 20;
  const line = Buffer.from("0123456789abcdef\n");
  const want = crypto.createHash("sha256");
  for (let left = size; left > 0; left -= line.length) want.update(left >= line.length ? line : line.subarray(0, left));
  const big = await run(s.session_id, `yes 0123456789abcdef | head -c ${size}`, 300000);
  assert.equal(big.code, 0);
  assert.equal(big.bytes, size);
  assert.equal(big.sha256, want.digest("hex"));

  step = "stop";
  await unary(sandboxes, "StopSession", { session_id: s.session_id });
  sandboxes.close();
  exec.close();
  console.log("grpc_node: grpc-js with proto-loader's stubs drove moatd through every step");
} catch (err) {
  console.error(`grpc_node: failed at ${JSON.stringify(step)}:`, err);
  process.exitCode = 1;
} finally {
  await cleanUp();
}
