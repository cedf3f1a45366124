// The call page in a real headless Chromium (Debian's, driven by playwright-core) against
// the real callbox binary, on loopback, with fake camera and microphone.
//
// Run from scripts/test.sh inside a namespace that has only loopback. Needs
// /usr/bin/chromium and `npm ci` in tests/browser. CALLBOX_BIN overrides the binary.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import net from "node:net";
import { chromium } from "playwright-core";
import { CHROMIUM_FLAGS } from "./chromium.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const bin = process.env.CALLBOX_BIN || join(root, "target/debug/callbox");
const artifacts = join(root, "target/browser-artifacts");
mkdirSync(artifacts, { recursive: true });

let server;
let browser;

const WHOLE_APPLIANCE = [
  "[turn]",
  'listen = ["127.0.0.1:0"]',
  'http_listen = "127.0.0.1:0"',
  'relay_ip = "127.0.0.1"',
  "relay_port_min = 20000",
  "relay_port_max = 30000",
  'allow_peers = ["127.0.0.0/8"]',
  "[signal]",
  'listen = "127.0.0.1:0"',
  "resume_grace = 30",
];

/** callbox with these config lines (and `serve` arguments), once it says it is ready;
 * on the state directory `dir` when given (a restart), else a fresh one. */
function startCallbox(lines = WHOLE_APPLIANCE, args = [], dir = mkdtempSync(join(tmpdir(), "callbox-browser-"))) {
  const config = join(dir, "callbox.toml");
  writeFileSync(config, [...lines, ""].join("\n"));
  return new Promise((resolveReady, reject) => {
    const child = spawn(bin, ["serve", "--config", config, "--state-dir", dir, ...args], {
      env: { ...process.env, CALLBOX_LOG: "info", JOURNAL_STREAM: "" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let log = "";
    const timer = setTimeout(() => reject(new Error(`callbox did not start:\n${log}`)), 20000);
    const onData = (d) => {
      log += d.toString();
      const line = log.split("\n").find((l) => l.includes("callbox ready"));
      if (line) {
        clearTimeout(timer);
        const field = (k) => (line.match(new RegExp(`${k}=(\\S+)`)) || [])[1];
        resolveReady({ child, dir, signal: field("signal"), http: field("http"), udp: field("udp"), log: () => log });
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => reject(new Error(`callbox exited ${code}:\n${log}`)));
  });
}

/** A redis-server on a free loopback port, without persistence. */
async function startRedis() {
  assert.ok(existsSync("/usr/bin/redis-server"), "redis-server is needed: apt-get install redis-server");
  const port = await new Promise((ok) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => ok(p));
    });
  });
  const child = spawn("/usr/bin/redis-server", ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  await waitFor(
    () =>
      new Promise((ok) => {
        const c = net.connect(port, "127.0.0.1", () => {
          c.destroy();
          ok(true);
        });
        c.on("error", () => ok(false));
      }),
    "redis-server listening",
    10000,
  );
  return { child, url: `redis://127.0.0.1:${port}` };
}

/** A TCP proxy in front of the signal listener, whose connections the test can cut. */
function proxy(target) {
  const [host, port] = target.split(":");
  const sockets = new Set();
  const srv = net.createServer((client) => {
    const upstream = net.connect(Number(port), host);
    sockets.add(client);
    sockets.add(upstream);
    client.pipe(upstream).pipe(client);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("error", drop);
    upstream.on("error", drop);
    client.on("close", drop);
    upstream.on("close", drop);
  });
  return new Promise((ok) =>
    srv.listen(0, "127.0.0.1", () =>
      ok({
        addr: `127.0.0.1:${srv.address().port}`,
        // Every connection through the proxy dies without a close frame.
        cut() {
          for (const s of sockets) s.resetAndDestroy ? s.resetAndDestroy() : s.destroy();
          sockets.clear();
        },
        close() {
          srv.close();
        },
      }),
    ),
  );
}

async function openPage(origin, query, label) {
  const context = await browser.newContext({ viewport: { width: 390, height: 760 } });
  await context.grantPermissions(["camera", "microphone"]);
  const page = await context.newPage();
  const problems = [];
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`${label} console: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`${label} page error: ${e.message}`));
  await page.goto(`http://${origin}/?${query}`);
  return { page, problems, context };
}

async function routeOf(page) {
  return page.evaluate(async () => {
    const c = window.callbox;
    if (!c) return null;
    for (const [id, r] of c.remotes) {
      if (r.pc.connectionState === "connected") return { id, ...(await c.route(id)) };
    }
    return null;
  });
}

async function waitFor(fn, what, ms = 30000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

async function diagnose(page) {
  return page.evaluate(() => {
    const c = window.callbox;
    if (!c) return "no client";
    return JSON.stringify({
      peer: c.peerId,
      ws: c.ws && c.ws.readyState,
      remotes: [...c.remotes].map(([id, r]) => ({ id, polite: r.polite, sig: r.pc.signalingState, ice: r.pc.iceConnectionState, conn: r.pc.connectionState, gather: r.pc.iceGatheringState })),
      errors: c.errors,
      trace: c.trace.slice(-40),
    });
  });
}

async function mediaFlows(page) {
  const a = await waitFor(() => routeOf(page), "a connected peer").catch(async (e) => {
    const others = await Promise.all(page.context().browser().contexts().flatMap((c) => c.pages()).map((p) => diagnose(p)));
    throw new Error(`${e.message}; states: ${others.join("\n")}`);
  });
  await new Promise((r) => setTimeout(r, 2000));
  const b = await routeOf(page);
  return b && b.bytesReceived > a.bytesReceived ? b : null;
}

async function shot(page, name) {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

function metric(text, name) {
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line ? Number(line.split(" ")[1]) : NaN;
}

before(async () => {
  assert.ok(existsSync("/usr/bin/chromium"), "Debian's chromium is needed: apt-get install chromium");
  assert.ok(existsSync(bin), `build the binary first: ${bin}`);
  server = await startCallbox();
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: [...CHROMIUM_FLAGS, "--allow-loopback-in-peer-connection"],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (server) server.child.kill("SIGTERM");
});

test("the page and module are served with types, caching and a CSP", async () => {
  const r = await fetch(`http://${server.signal}/`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type"), /^text\/html/);
  assert.match(r.headers.get("content-security-policy"), /default-src 'none'.*connect-src 'self'/);
  assert.equal(r.headers.get("cache-control"), "no-cache");
  const js = await fetch(`http://${server.signal}/callbox.js`);
  assert.match(js.headers.get("content-type"), /^text\/javascript/);
  const etag = js.headers.get("etag");
  const again = await fetch(`http://${server.signal}/callbox.js`, { headers: { "If-None-Match": etag } });
  assert.equal(again.status, 304);
});

test("two pages join a room and media flows both ways", async () => {
  const a = await openPage(server.signal, "", "a");
  await shot(a.page, "1-join-form");
  await a.page.fill("#room", "browser-direct");
  await a.page.click("#join-button");
  await waitFor(() => a.page.evaluate(() => window.callbox && window.callbox.peerId), "a joined");
  await a.page.waitForFunction(() => document.getElementById("status").textContent.includes("waiting"));
  await shot(a.page, "2-waiting-for-others");
  const b = await openPage(server.signal, "room=browser-direct&autojoin=1", "b");
  const ra = await mediaFlows(a.page);
  const rb = await mediaFlows(b.page);
  assert.ok(ra && rb, "inbound RTP bytes grow on both pages");
  await a.page.waitForFunction(() => document.getElementById("status").textContent.includes("direct"));
  assert.equal(await a.page.isVisible("#join"), false, "the form is hidden during a call");
  await shot(a.page, "3-in-call-direct");
  // Mute and leave update the page and tell the other side.
  await b.page.click("#mute-audio");
  assert.equal(await b.page.getAttribute("#mute-audio", "aria-pressed"), "true");
  await b.page.click("#leave");
  await a.page.waitForFunction(() => document.querySelectorAll("#videos .tile").length === 1);
  await shot(b.page, "4-left");
  assert.deepEqual([...a.problems, ...b.problems], []);
  await a.context.close();
  await b.context.close();
});

test("forced relay goes through our TURN over UDP", async () => {
  const before = await (await fetch(`http://${server.http}/metrics`)).text();
  const relayedBefore = metric(before, 'callbox_turn_relayed_packets_total{direction="to_peer"}');
  const a = await openPage(server.signal, "room=browser-relay&autojoin=1&relay=1", "a");
  const b = await openPage(server.signal, "room=browser-relay&autojoin=1&relay=1", "b");
  const route = await mediaFlows(a.page);
  assert.ok(route, "media flows");
  assert.equal(route.localType, "relay");
  assert.equal(route.protocol, "udp");
  assert.equal(route.relayProtocol, "udp");
  const [ip, port] = route.localAddress.split(":");
  assert.equal(ip, "127.0.0.1", "our relay's address");
  assert.ok(Number(port) >= 20000 && Number(port) <= 30000, `a port of our relay range: ${port}`);
  await a.page.waitForFunction(() => document.getElementById("status").textContent.includes("relayed via TURN over UDP"));
  await shot(a.page, "5-in-call-relayed");
  const after = await (await fetch(`http://${server.http}/metrics`)).text();
  assert.ok(metric(after, 'callbox_turn_relayed_packets_total{direction="to_peer"}') > relayedBefore + 50);
  assert.deepEqual([...a.problems, ...b.problems], []);
  await a.context.close();
  await b.context.close();
});

test("a cut signaling socket resumes, media keeps flowing, renegotiation still works", async () => {
  const p = await proxy(server.signal);
  const a = await openPage(server.signal, "room=browser-resume&autojoin=1", "a");
  const b = await openPage(p.addr, "room=browser-resume&autojoin=1", "b");
  await mediaFlows(b.page);
  const peerOfB = await b.page.evaluate(() => window.callbox.peerId);
  p.cut();
  await b.page.waitForFunction(() => document.getElementById("status").textContent.includes("reconnecting"), null, { timeout: 5000 }).catch(() => {});
  await shot(b.page, "6-reconnecting");
  await waitFor(() => b.page.evaluate(() => window.callbox.resumes >= 1 && window.callbox.ws && window.callbox.ws.readyState === 1), "b resumed");
  assert.equal(await b.page.evaluate(() => window.callbox.peerId), peerOfB, "same peer id after the resume");
  assert.ok(await mediaFlows(b.page), "media kept flowing");
  // Renegotiate through the resumed session: an ICE restart needs a new offer and answer.
  const before = await a.page.evaluate(() => window.callbox.negotiations);
  await b.page.evaluate(() => {
    for (const r of window.callbox.remotes.values()) r.pc.restartIce();
  });
  await waitFor(() => a.page.evaluate((n) => window.callbox.negotiations > n, before), "a answered the new offer");
  await waitFor(() => b.page.evaluate(() => [...window.callbox.remotes.values()].every((r) => r.pc.signalingState === "stable" && r.pc.connectionState === "connected")), "stable again");
  assert.ok(await mediaFlows(a.page));
  await shot(b.page, "7-resumed");
  // The resume was logged by the server.
  const m = await (await fetch(`http://${server.signal}/metrics`)).text();
  assert.ok(metric(m, "callbox_signal_resumes_total") >= 1);
  assert.deepEqual([...a.problems, ...b.problems], []);
  p.close();
  await a.context.close();
  await b.context.close();
});

test("kill -9 of the whole process mid-call: after a restart both pages join again by themselves and media flows", async () => {
  // Fixed ports: the pages reconnect to the same origin, as after a real crash and restart.
  const lines = WHOLE_APPLIANCE.map((l) =>
    l.startsWith("listen = [") ? 'listen = ["127.0.0.1:13678"]' : l.startsWith("listen = ") ? 'listen = "127.0.0.1:13680"' : l,
  ).concat(["[admin]", 'listen = "127.0.0.1:0"']);
  const first = await startCallbox(lines);
  const a = await openPage(first.signal, "room=browser-crash&autojoin=1", "a");
  const b = await openPage(first.signal, "room=browser-crash&autojoin=1", "b");
  assert.ok(await mediaFlows(a.page), "media flows before the crash");
  const before = await Promise.all([a, b].map((p) => p.page.evaluate(() => window.callbox.peerId)));
  first.child.kill("SIGKILL");
  await waitFor(() => b.page.evaluate(() => document.getElementById("status").textContent.includes("reconnecting")), "b noticed");
  await shot(b.page, "10-crashed");
  // Down for 3 s: the pages' reconnect attempts meanwhile find nothing listening, and
  // must keep trying (they gave up on the first refused one before).
  await new Promise((r) => setTimeout(r, 3000));
  const second = await startCallbox(lines, [], first.dir);
  try {
    // The resume is refused (rooms lived in the dead process's memory): each page joins
    // afresh, with a new peer id, and the call is set up again.
    for (const [p, old] of [[a, before[0]], [b, before[1]]]) {
      await waitFor(
        () => p.page.evaluate((old) => window.callbox.peerId && window.callbox.peerId !== old && window.callbox.ws?.readyState === 1, old),
        "joined again",
      );
    }
    assert.ok(await mediaFlows(a.page), "media flows on a after the restart");
    assert.ok(await mediaFlows(b.page), "media flows on b after the restart");
    // Each page shows itself and the other's new peer: the old peers' tiles are gone.
    for (const p of [a, b]) {
      await waitFor(() => p.page.evaluate(() => document.querySelectorAll("#videos .tile").length === 2), "one remote tile");
    }
    await shot(a.page, "11-rejoined");
    // What the pages logged as errors is the browser's own report of the refused
    // connections while the server was down, nothing else.
    const other = [...a.problems, ...b.problems].filter((m) => !/ERR_CONNECTION_REFUSED|\b410\b/.test(m));
    assert.deepEqual(other, []);
    await a.context.close();
    await b.context.close();
  } finally {
    second.child.kill("SIGTERM");
  }
});

test("a refused join says why", async () => {
  const a = await openPage(server.signal, "room=bad%20room!&autojoin=1", "a");
  await a.page.waitForFunction(() => document.getElementById("status").classList.contains("error"));
  const text = await a.page.textContent("#status");
  assert.match(text, /room must match/);
  assert.equal(await a.page.isVisible("#join"), true, "back to the form");
  assert.equal(await a.page.isVisible("#call"), false);
  await shot(a.page, "8-refused");
  await a.context.close();
});

test("two pages on two signaling instances sharing rooms through Redis: media flows both ways", async () => {
  const redis = await startRedis();
  const instance = (ip) =>
    startCallbox(["[signal]", `listen = "${ip}:0"`, `redis_url = "${redis.url}"`], ["--roles", "signal"]);
  const one = await instance("127.0.0.2");
  const two = await instance("127.0.0.3");
  try {
    await waitFor(async () => (await fetch(`http://${two.signal}/readyz`)).status === 200, "the second instance ready");
    const a = await openPage(one.signal, "room=browser-cluster&autojoin=1", "a");
    const b = await openPage(two.signal, "room=browser-cluster&autojoin=1", "b");
    const ra = await mediaFlows(a.page);
    const rb = await mediaFlows(b.page);
    assert.ok(ra && rb, "inbound RTP bytes grow on both pages");
    await shot(b.page, "9-two-instances");
    await b.page.click("#leave");
    await a.page.waitForFunction(() => document.querySelectorAll("#videos .tile").length === 1);
    assert.deepEqual([...a.problems, ...b.problems], []);
    await a.context.close();
    await b.context.close();
  } finally {
    one.child.kill("SIGTERM");
    two.child.kill("SIGTERM");
    redis.child.kill("SIGKILL");
  }
});
