// moat-execd's PTY API (OpenSandbox's, ../../../../shared/reference §1.9) driven over a real
// WebSocket by npm's `ws`, a client that shares nothing with ours: OpenSandbox's pinned SDK
// has no PTY calls. Binary frames 0x00 stdin / 0x01 stdout / 0x03 replay, JSON resize, signal
// and exit, 409 for a second client, takeover=1 closing the first with 4001, since= replay, and
// malformed frames closed with RFC 6455's codes while the session survives for the next attach.
// usage: node pty_ws.mjs <path to moat-execd>
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

import WebSocket from "ws";

const execdBin = process.argv[2];
assert.ok(execdBin, "usage: node pty_ws.mjs <moat-execd>");
const WAIT_MS = 15000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

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

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moat-pty-ws-"));
const port = await freePort();
const token = "pty-ws-token";
const headers = { "X-EXECD-ACCESS-TOKEN": token };
const execd = spawn(
  execdBin,
  ["--listen", `127.0.0.1:${port}`, "--access-token", token, "--state-dir", path.join(tmp, "state"),
   "--log-level", "warn"],
  { stdio: ["ignore", "inherit", "inherit"] },
);
const base = `http://127.0.0.1:${port}`;

async function http(method, urlPath, body) {
  const res = await fetch(base + urlPath, {
    method,
    headers: { ...headers, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : null };
}

// One attached client: everything it received, and waits on it.
class Client {
  constructor(id, query = "") {
    this.out = Buffer.alloc(0);
    this.replays = [];
    this.texts = [];
    this.closed = null;
    this.ws = new WebSocket(`ws://127.0.0.1:${port}/pty/${id}/ws${query}`, { headers });
    this.opened = new Promise((resolve, reject) => {
      this.ws.on("open", resolve);
      this.ws.on("unexpected-response", (_req, res) => reject(Object.assign(
        new Error(`HTTP ${res.statusCode}`), { statusCode: res.statusCode })));
      this.ws.on("error", reject);
    });
    this.ws.on("message", (data, isBinary) => {
      if (!isBinary) {
        this.texts.push(JSON.parse(data.toString("utf8")));
        return;
      }
      if (data[0] === 0x01 || data[0] === 0x02) {
        this.out = Buffer.concat([this.out, data.subarray(1)]);
      } else if (data[0] === 0x03) {
        this.replays.push({ offset: data.readBigInt64BE(1), bytes: data.subarray(9) });
      }
    });
    this.ws.on("close", (code, reason) => { this.closed = { code, reason: reason.toString() }; });
  }

  async until(pred, what) {
    for (let waited = 0; waited < WAIT_MS; waited += 20) {
      if (pred()) return;
      await sleep(20);
    }
    assert.fail(`waited for ${what}; output so far: ${JSON.stringify(this.out.toString())}`);
  }

  output(text) {
    return this.until(() => this.out.toString().includes(text), JSON.stringify(text));
  }

  text(type) {
    return this.until(() => this.texts.some((t) => t.type === type), `a ${type} frame`);
  }

  closedWith() {
    return this.until(() => this.closed !== null, "the close").then(() => this.closed);
  }

  type(line) {
    this.ws.send(Buffer.concat([Buffer.from([0x00]), Buffer.from(line)]));
  }

  json(obj) {
    this.ws.send(JSON.stringify(obj));
  }
}

let step = "start";
try {
  step = "ping";
  let up = false;
  for (let i = 0; i < 100 && !up; i++) {
    up = await fetch(`${base}/ping`, { headers }).then((r) => r.ok, () => false);
    if (!up) await sleep(50);
  }
  assert.ok(up, "moat-execd did not answer /ping");

  step = "create";
  const created = await http("POST", "/pty", { cwd: "/tmp" });
  assert.equal(created.status, 201);
  const id = created.json.session_id;
  assert.match(id, /^[0-9a-f-]{36}$/);

  step = "stdin and output";
  const first = new Client(id);
  await first.opened;
  await first.text("connected");
  first.type("echo $((6*7))\n");
  await first.output("42");

  step = "resize";
  first.json({ type: "resize", cols: 100, rows: 30 });
  first.type("stty size\n");
  await first.output("30 100");

  step = "signal";
  first.type("sleep 100\n");
  await sleep(300);
  first.json({ type: "signal", signal: "SIGINT" });
  first.type("echo after-$((1+1))\n");
  await first.output("after-2");
  first.json({ type: "ping" });
  await first.text("pong");

  step = "409 for a second client";
  const second = new Client(id);
  await assert.rejects(second.opened, (err) => err.statusCode === 409);

  step = "takeover";
  const third = new Client(id, "?takeover=1");
  await third.opened;
  const taken = await first.closedWith();
  assert.equal(taken.code, 4001);
  third.type("echo third-$((3*3))\n");
  await third.output("third-9");
  third.ws.close(1000);
  await third.closedWith();

  step = "since= replay";
  const replayed = new Client(id, "?since=0");
  await replayed.opened;
  await replayed.until(() => replayed.replays.length > 0, "a replay frame");
  assert.equal(replayed.replays[0].offset, 0n);
  assert.ok(replayed.replays[0].bytes.toString().includes("42"));
  assert.ok(replayed.replays[0].bytes.toString().includes("third-9"));

  step = "malformed frame: reserved bits";
  // A masked text frame with RSV1 set, which no extension was negotiated for.
  replayed.ws._socket.write(Buffer.from([0xc1, 0x81, 1, 2, 3, 4, "x".charCodeAt(0) ^ 1]));
  assert.equal((await replayed.closedWith()).code, 1002);

  step = "malformed frame: invalid UTF-8 text";
  const utf = new Client(id);
  await utf.opened;
  utf.ws._socket.write(Buffer.from([0x81, 0x82, 0, 0, 0, 0, 0xc3, 0x28]));
  assert.equal((await utf.closedWith()).code, 1007);

  step = "the session survived";
  const last = new Client(id);
  await last.opened;
  last.type("echo alive-$((4+4))\n");
  await last.output("alive-8");
  const info = await http("GET", `/pty/${id}`);
  assert.equal(info.status, 200);
  assert.equal(info.json.running, true);
  assert.ok(info.json.output_offset > 0);

  step = "exit";
  last.type("exit 3\n");
  await last.until(() => last.texts.some((t) => t.type === "exit"), "the exit frame");
  assert.equal(last.texts.find((t) => t.type === "exit").exit_code, 3);
  assert.equal((await last.closedWith()).code, 1000);

  step = "delete";
  assert.equal((await http("DELETE", `/pty/${id}`)).status, 200);
  assert.equal((await http("GET", `/pty/${id}`)).status, 404);
  console.log("pty_ws: OpenSandbox's PTY API over npm's ws: all steps passed");
} catch (err) {
  console.error(`pty_ws: step "${step}" failed:`, err);
  process.exitCode = 1;
} finally {
  execd.kill("SIGTERM");
  fs.rmSync(tmp, { recursive: true, force: true });
}
