// OpenSandbox's own TypeScript SDK (pinned in package.json), unchanged, driving a real
// moat-execd over TCP with an access token: every execd call the SDK makes outside the
// code interpreter and the isolated sessions.
// usage: node sdk_compat.mjs <path to moat-execd>
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

import {
  CommandsAdapter,
  FilesystemAdapter,
  HealthAdapter,
  MetricsAdapter,
  createExecdClient,
} from "@alibaba-group/opensandbox/internal";

const execdBin = process.argv[2];
assert.ok(execdBin, "usage: node sdk_compat.mjs <moat-execd>");

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

function stack(baseUrl, token) {
  const headers = token ? { "X-EXECD-ACCESS-TOKEN": token } : {};
  const client = createExecdClient({ baseUrl, headers });
  return {
    health: new HealthAdapter(client),
    metrics: new MetricsAdapter(client),
    commands: new CommandsAdapter(client, { baseUrl, headers }),
    files: new FilesystemAdapter(client, { baseUrl, headers }),
  };
}

async function rejectsWithStatus(promise, status) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.statusCode, status, `expected HTTP ${status}, got ${err.statusCode}: ${err}`);
    return true;
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moat-sdk-compat-"));
const work = path.join(tmp, "work");
fs.mkdirSync(work);
const port = await freePort();
const token = "sdk-compat-token";
const execd = spawn(
  execdBin,
  ["--listen", `127.0.0.1:${port}`, "--access-token", token, "--state-dir", path.join(tmp, "state"),
   "--log-level", "warn"],
  { stdio: ["ignore", "inherit", "inherit"] },
);
const baseUrl = `http://127.0.0.1:${port}`;
const { health, metrics, commands, files } = stack(baseUrl, token);

let step = "start";
try {
  step = "ping";
  let up = false;
  for (let i = 0; i < 100 && !up; i++) {
    up = await health.ping().catch(() => false);
    if (!up) await sleep(50);
  }
  assert.ok(up, "moat-execd did not answer /ping");

  step = "token";
  await rejectsWithStatus(stack(baseUrl, null).files.getFileInfo([work]), 401);
  await rejectsWithStatus(stack(baseUrl, "wrong").files.getFileInfo([work]), 401);

  step = "run: exit code and stderr apart";
  let ex = await commands.run("echo out; echo err >&2; exit 3");
  assert.deepEqual(ex.logs.stdout.map((m) => m.text), ["out"]);
  assert.deepEqual(ex.logs.stderr.map((m) => m.text), ["err"]);
  assert.equal(ex.exitCode, 3);
  assert.equal(ex.error.value, "3");
  assert.match(ex.id, /^[0-9a-f]{32}$/);

  step = "run: cwd, env, handlers, last line without newline";
  const seen = [];
  ex = await commands.run(
    "pwd; echo $FOO; printf 'to stderr\\n' >&2; printf 'no newline'",
    { workingDirectory: work, envs: { FOO: "bar baz" } },
    { onStdout: (m) => seen.push(`out:${m.text}`), onStderr: (m) => seen.push(`err:${m.text}`) },
  );
  assert.equal(ex.exitCode, 0);
  assert.ok(ex.complete, "no execution_complete event");
  assert.deepEqual(ex.logs.stdout.map((m) => m.text), [work, "bar baz", "no newline"]);
  assert.deepEqual(seen, [`out:${work}`, "out:bar baz", "err:to stderr", "out:no newline"]);
  await rejectsWithStatus(commands.run("true", { workingDirectory: path.join(work, "nope") }), 400);

  step = "run: timeout kills the command";
  const t0 = Date.now();
  ex = await commands.run("sleep 20", { timeoutSeconds: 0.5 });
  assert.ok(Date.now() - t0 < 10000, "the timeout did not end the command");
  assert.ok(ex.error, "a timed-out command must end with an error event");
  assert.notEqual(ex.exitCode, 0);

  step = "background: status and logs with the cursor";
  ex = await commands.run("for i in 1 2 3; do echo bg$i; sleep 0.1; done", { background: true });
  assert.ok(ex.id);
  let st = await commands.getCommandStatus(ex.id);
  assert.equal(st.id, ex.id);
  for (let i = 0; i < 100 && st.running; i++) {
    await sleep(50);
    st = await commands.getCommandStatus(ex.id);
  }
  assert.equal(st.running, false);
  assert.equal(st.exitCode, 0);
  assert.ok(st.startedAt instanceof Date && st.finishedAt instanceof Date);
  let logs = await commands.getBackgroundCommandLogs(ex.id);
  assert.equal(logs.content, "bg1\nbg2\nbg3\n");
  assert.equal(logs.cursor, 12);
  logs = await commands.getBackgroundCommandLogs(ex.id, 8);
  assert.equal(logs.content, "bg3\n");
  await rejectsWithStatus(commands.getCommandStatus("0123456789abcdef0123456789abcdef"), 404);

  step = "interrupt";
  ex = await commands.run("sleep 30", { background: true });
  await commands.interrupt(ex.id);
  st = await commands.getCommandStatus(ex.id);
  for (let i = 0; i < 100 && st.running; i++) {
    await sleep(50);
    st = await commands.getCommandStatus(ex.id);
  }
  assert.equal(st.running, false);
  assert.notEqual(st.exitCode, 0);

  step = "bash session keeps exports and cwd";
  const sid = await commands.createSession({ workingDirectory: work });
  ex = await commands.runInSession(sid, "export A=kept; mkdir -p sub; cd sub");
  assert.equal(ex.exitCode, 0);
  ex = await commands.runInSession(sid, "echo $A; pwd");
  assert.deepEqual(ex.logs.stdout.map((m) => m.text), ["kept", path.join(work, "sub")]);
  ex = await commands.runInSession(sid, "false");
  assert.equal(ex.exitCode, 1);
  await commands.deleteSession(sid);
  await assert.rejects(commands.runInSession(sid, "true"));

  step = "files: directories, upload, info, list";
  const d = path.join(work, "files");
  await files.createDirectories([{ path: path.join(d, "x", "y"), mode: 750 }]);
  assert.equal(fs.statSync(path.join(d, "x", "y")).mode & 0o777, 0o750);
  await files.writeFiles([
    { path: path.join(d, "a.txt"), data: "hello world\n", mode: 644 },
    { path: path.join(d, "x", "y", "b.bin"), data: new Uint8Array([0, 1, 2, 255, 10, 13]) },
  ]);
  assert.equal(fs.readFileSync(path.join(d, "a.txt"), "utf8"), "hello world\n");
  const info = await files.getFileInfo([path.join(d, "a.txt")]);
  const ai = info[path.join(d, "a.txt")];
  assert.equal(ai.type, "file");
  assert.equal(ai.size, 12);
  assert.equal(ai.mode, 644);
  assert.ok(ai.modifiedAt instanceof Date);
  assert.deepEqual(
    (await files.listDirectory({ path: d })).map((f) => f.path).sort(),
    [path.join(d, "a.txt"), path.join(d, "x")],
  );
  assert.deepEqual(
    (await files.listDirectory({ path: d, depth: 3 })).map((f) => f.path).sort(),
    [path.join(d, "a.txt"), path.join(d, "x"), path.join(d, "x", "y"),
     path.join(d, "x", "y", "b.bin")],
  );

  step = "files: download whole, by range, by lines, streamed";
  assert.equal(await files.readFile(path.join(d, "a.txt")), "hello world\n");
  assert.deepEqual(Array.from(await files.readBytes(path.join(d, "x", "y", "b.bin"))),
                   [0, 1, 2, 255, 10, 13]);
  assert.equal(await files.readFile(path.join(d, "a.txt"), { range: "bytes=6-10" }), "world");
  fs.writeFileSync(path.join(d, "lines.txt"), "l1\nl2\nl3\nl4");
  assert.equal(await files.readFile(path.join(d, "lines.txt"), { offset: 2, limit: 2 }), "l2\nl3\n");
  assert.equal(await files.readFile(path.join(d, "lines.txt"), { offset: 4, limit: 9 }), "l4");
  async function* chunks() {
    for (let i = 0; i < 64; i++) yield new Uint8Array(65536).fill(i);
  }
  await files.writeFiles([{ path: path.join(d, "big.bin"), data: chunks() }]);
  assert.equal(fs.statSync(path.join(d, "big.bin")).size, 64 * 65536);
  let total = 0;
  let wrong = 0;
  for await (const chunk of files.readBytesStream(path.join(d, "big.bin"))) {
    for (const b of chunk) {
      if (b !== total >> 16) wrong++;
      total++;
    }
  }
  assert.equal(total, 64 * 65536);
  assert.equal(wrong, 0, "streamed download bytes differ from what was uploaded");
  await rejectsWithStatus(files.readFile(path.join(d, "missing")), 404);

  step = "files: search, replace, move, permissions, delete";
  const found = await files.search({ path: d, pattern: "*.bin" });
  assert.deepEqual(found.map((f) => f.path).sort(),
                   [path.join(d, "big.bin"), path.join(d, "x", "y", "b.bin")]);
  await files.replaceContents([{ path: path.join(d, "a.txt"), oldContent: "world", newContent: "moat" }]);
  assert.equal(fs.readFileSync(path.join(d, "a.txt"), "utf8"), "hello moat\n");
  const counts = await files.replaceContentsDetailed([
    { path: path.join(d, "a.txt"), oldContent: "o", newContent: "0" },
  ]);
  assert.deepEqual(counts, [{ path: path.join(d, "a.txt"), replacedCount: 2 }]);
  await files.moveFiles([{ src: path.join(d, "a.txt"), dest: path.join(d, "x", "c.txt") }]);
  assert.ok(!fs.existsSync(path.join(d, "a.txt")));
  assert.equal(fs.readFileSync(path.join(d, "x", "c.txt"), "utf8"), "hell0 m0at\n");
  await files.setPermissions([{ path: path.join(d, "x", "c.txt"), mode: 600 }]);
  assert.equal(fs.statSync(path.join(d, "x", "c.txt")).mode & 0o777, 0o600);
  await files.deleteFiles([path.join(d, "big.bin"), path.join(d, "lines.txt")]);
  assert.ok(!fs.existsSync(path.join(d, "big.bin")) && !fs.existsSync(path.join(d, "lines.txt")));
  await files.deleteDirectories([path.join(d, "x")]);
  assert.ok(!fs.existsSync(path.join(d, "x")));

  step = "metrics";
  const m = await metrics.getMetrics();
  assert.ok(m.cpuCount >= 1, `cpuCount ${m.cpuCount}`);
  assert.ok(m.memoryTotalMiB > 0 && m.memoryUsedMiB > 0);
  assert.ok(m.timestamp > 0);

  console.log("sdk_compat: OpenSandbox TypeScript SDK 0.1.11 drove moat-execd through every step");
} catch (err) {
  console.error(`sdk_compat: failed at "${step}":`, err);
  process.exitCode = 1;
} finally {
  const exited = new Promise((r) => execd.once("exit", (code, signal) => r({ code, signal })));
  execd.kill("SIGTERM");
  const { code, signal } = await exited;
  if (code !== 0) {
    console.error(`sdk_compat: moat-execd ended with code ${code}, signal ${signal}`);
    process.exitCode = 1;
  }
  fs.rmSync(tmp, { recursive: true, force: true });
}
