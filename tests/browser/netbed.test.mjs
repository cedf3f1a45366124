// The call page across NATs and firewalls: two headless Debian Chromiums, each in its own
// client network namespace behind its own NAT router, and the real callbox binary on a
// "public" network, all in namespaces built by netbed.sh (addresses from 10.77.0.0/16 only;
// nothing in the namespace this runs in is touched). Each scenario sets what the routers let
// out, joins both pages to one room and checks the selected candidate pair from getStats.
//
// Needs root, `ip` (iproute2), `nft` (nftables), /usr/bin/chromium, `openssl` and `certutil`
// (libnss3-tools, for the test CA Chromium trusts in scenario b) and `npm ci` here. Run it
// inside a namespace that has only loopback, as scripts/test.sh does:
//   unshare -n -- bash -c 'ip link set lo up && node --test --test-concurrency=1 netbed.test.mjs'
// CALLBOX_BIN overrides the binary (default target/debug/callbox).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync, mkdirSync, existsSync, rmSync, chmodSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { CHROMIUM_FLAGS } from "./chromium.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const bin = process.env.CALLBOX_BIN || join(root, "target/debug/callbox");
const artifacts = join(root, "target/browser-artifacts");
const netbed = join(here, "netbed.sh");
// One prefix per run: parallel runs and leftovers of a killed run do not collide.
const prefix = `cbx${process.pid}`;
const ns = (n) => `${prefix}-${n}`;
const SERVER = "10.77.0.10";
const work = mkdtempSync(join(tmpdir(), "callbox-netbed-"));

function bed(...args) {
  return execFileSync(netbed, [args[0], prefix, ...args.slice(1)], {
    stdio: ["ignore", "pipe", "pipe"],
    timeout: 30000,
    encoding: "utf8",
  });
}

function tearDown() {
  const names = existsSync("/run/netns") ? readdirSync("/run/netns") : [];
  if (!names.some((n) => n.startsWith(`${prefix}-`))) return;
  try {
    bed("down");
  } catch (e) {
    process.stderr.write(`netbed down failed: ${e.stderr || e.message}\n`);
  }
}

function cleanUp() {
  tearDown();
  rmSync(work, { recursive: true, force: true });
}

// The namespaces go away however the run ends (short of SIGKILL: the next run collects those).
process.on("exit", cleanUp);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => {
    cleanUp();
    process.exit(130);
  });
}

/** Removes test beds left by runs that were killed (their pid is gone). */
function collectLeftovers() {
  const names = existsSync("/run/netns") ? readdirSync("/run/netns") : [];
  const stale = new Set();
  for (const n of names) {
    const m = /^(cbx(\d+))-(pub|srv|r1|r2|c1|c2)$/.exec(n);
    if (!m || m[1] === prefix) continue;
    try {
      process.kill(Number(m[2]), 0);
    } catch (e) {
      if (e.code === "ESRCH") stale.add(m[1]);
    }
  }
  for (const p of stale) {
    try {
      execFileSync(netbed, ["down", p], { stdio: "ignore", timeout: 30000 });
    } catch {
      // Best effort: a leftover does not collide with this run's names anyway.
    }
  }
}

const withTimeout = (p, ms, what) =>
  Promise.race([p, new Promise((_, no) => setTimeout(() => no(new Error(`timed out after ${ms} ms: ${what}`)), ms).unref())]);

/**
 * How callbox serves the page and TURN, and how the browsers reach it. Scenarios (a) and (c)
 * use PLAIN: the page and WebSocket over http on 10.77.0.10:8080, STUN/TURN over UDP and TCP
 * on 10.77.0.10:3478 (the ICE list has transport=udp and transport=tcp).
 */
/** The [turn] and [signal] sections every scenario's callbox runs with, `turn` keys added. */
function baseConfig(turn = []) {
  return [
    "[turn]",
    `listen = ["${SERVER}:3478"]`,
    ...turn,
    'http_listen = "127.0.0.1:0"',
    `relay_ip = "${SERVER}"`,
    "relay_port_min = 40000",
    "relay_port_max = 40999",
    'allow_peers = ["10.77.0.0/16"]',
    "[signal]",
    `listen = "${SERVER}:8080"`,
    "resume_grace = 30",
  ];
}

const PLAIN = {
  origin: `http://${SERVER}:8080`,
  config: baseConfig(),
  // getUserMedia needs a secure origin; the page is plain http on the public address.
  chromiumArgs: [`--unsafely-treat-insecure-origin-as-secure=http://${SERVER}:8080`],
};

/**
 * Scenario (b): the one TLS port. TLS ends on 10.77.0.10:443 and each connection goes on to
 * HTTP (the page, the WebSocket, /v1/ice-servers) or to TURN, so the ICE list's
 * `turns:callbox.test:443?transport=tcp` is the only server a client behind the tcp443 policy
 * reaches. TURN/TLS on 5349 is off (`turn.tls_listen = []`): only 443 is used; the plain
 * listeners (8080, 3478) still run and the routers drop what goes to them.
 *
 * Trust: a test CA made here with openssl signs the server certificate (DNS:callbox.test,
 * IP:10.77.0.10); each Chromium gets a HOME of its own whose NSS database
 * (~/.pki/nssdb, where Chromium on Linux reads user-added trust anchors) trusts that CA for
 * TLS servers. Chromium's certificate verifier then accepts it for the page and the WebSocket
 * and for TURNS too, since its TURN/TLS client verifies against the same verifier with the
 * host name of the turns: URL. No --ignore-certificate-errors. callbox.test resolves to
 * 10.77.0.10 by --host-resolver-rules (there is no DNS in the test bed), which also covers
 * the TURN client's lookup of the turns: host.
 */
const TLS_HOST = "callbox.test";
const tlsDir = join(work, "tls");
const TLS_FILES = { ca: join(tlsDir, "ca.pem"), cert: join(tlsDir, "fullchain.pem"), key: join(tlsDir, "key.pem") };
const TLS443 = {
  origin: `https://${TLS_HOST}`,
  // node in a client namespace has no host resolver rules: it checks the IP address SAN.
  probe: { origin: `https://${SERVER}`, env: { NODE_EXTRA_CA_CERTS: TLS_FILES.ca } },
  prepare: makeTestCerts,
  config: [
    ...baseConfig(["tls_listen = []", `public_host = "${TLS_HOST}"`]),
    "[tls]",
    `cert_file = "${TLS_FILES.cert}"`,
    `key_file = "${TLS_FILES.key}"`,
    `listen = ["${SERVER}:443"]`,
    "http_listen = []",
  ],
  chromiumArgs: [`--host-resolver-rules=MAP ${TLS_HOST} ${SERVER}`],
  browserEnv: (n) => ({ ...process.env, HOME: nssHome(n) }),
};

function run(cmd, args, opts = {}) {
  try {
    return execFileSync(cmd, args, { encoding: "utf8", timeout: 30000, stdio: ["ignore", "pipe", "pipe"], ...opts });
  } catch (e) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${e.stderr || e.message}`);
  }
}

/** A test CA and a server certificate it signs (EC P-256, 30 days), in tlsDir. */
function makeTestCerts() {
  if (existsSync(TLS_FILES.cert)) return;
  mkdirSync(tlsDir, { recursive: true });
  const f = (n) => join(tlsDir, n);
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  run("openssl", ["req", "-x509", ...ec, "-keyout", f("ca-key.pem"), "-out", TLS_FILES.ca, "-days", "30", "-subj", "/CN=callbox netbed test CA",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
  run("openssl", ["req", "-new", ...ec, "-keyout", TLS_FILES.key, "-out", f("server.csr"), "-subj", `/CN=${TLS_HOST}`]);
  writeFileSync(f("server.ext"), [
    "basicConstraints=critical,CA:FALSE",
    "keyUsage=critical,digitalSignature",
    "extendedKeyUsage=serverAuth",
    `subjectAltName=DNS:${TLS_HOST},IP:${SERVER}`,
    "",
  ].join("\n"));
  run("openssl", ["x509", "-req", "-in", f("server.csr"), "-CA", TLS_FILES.ca, "-CAkey", f("ca-key.pem"), "-CAcreateserial",
    "-days", "30", "-sha256", "-extfile", f("server.ext"), "-out", f("server.pem")]);
  // Full chain, leaf first.
  writeFileSync(TLS_FILES.cert, readFileSync(f("server.pem"), "utf8") + readFileSync(TLS_FILES.ca, "utf8"));
}

/** A HOME for the Chromium in namespace n whose NSS database trusts the test CA for TLS servers. */
function nssHome(n) {
  const home = join(tlsDir, `home-${n}`);
  const db = join(home, ".pki/nssdb");
  if (!existsSync(join(db, "cert9.db"))) {
    mkdirSync(db, { recursive: true });
    run("certutil", ["-N", "-d", `sql:${db}`, "--empty-password"]);
    run("certutil", ["-A", "-d", `sql:${db}`, "-t", "C,,", "-n", "callbox-test", "-i", TLS_FILES.ca]);
  }
  return home;
}

function startCallbox(tag, setup) {
  const dir = mkdtempSync(join(work, `callbox-${tag}-`));
  const config = join(dir, "callbox.toml");
  writeFileSync(config, setup.config.join("\n") + "\n");
  return new Promise((resolveReady, reject) => {
    const child = spawn("ip", ["netns", "exec", ns("srv"), bin, "serve", "--config", config, "--state-dir", dir], {
      env: { ...process.env, CALLBOX_LOG: "info", JOURNAL_STREAM: "" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let log = "";
    let ready = false;
    const server = { child, config, dir, log: () => log };
    const timer = setTimeout(() => reject(new Error(`callbox did not start in 20 s:\n${log}`)), 20000);
    const onData = (d) => {
      log += d.toString();
      if (!ready && log.includes("callbox ready")) {
        ready = true;
        clearTimeout(timer);
        resolveReady(server);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code, sig) => {
      server.exited = `${code ?? sig}`;
      if (!ready) {
        clearTimeout(timer);
        reject(new Error(`callbox exited ${code ?? sig}:\n${log}`));
      }
    });
  });
}

async function stopCallbox(server) {
  if (!server || server.exited) return;
  const gone = new Promise((ok) => server.child.once("exit", ok));
  server.child.kill("SIGTERM");
  await withTimeout(gone, 25000, "callbox exit").catch(() => server.child.kill("SIGKILL"));
}

/** `callbox admin ...` against the server in its namespace (diagnostics). */
function admin(server, ...args) {
  try {
    return execFileSync("ip", ["netns", "exec", ns("srv"), bin, "admin", "--config", server.config, "--state-dir", server.dir, ...args], {
      encoding: "utf8",
      timeout: 10000,
      stdio: ["ignore", "pipe", "pipe"],
    });
  } catch (e) {
    return `callbox admin ${args.join(" ")} failed: ${e.stderr || e.message}`;
  }
}

/** An HTTP GET from inside a namespace (node's fetch), with a deadline. */
function fetchFrom(n, url, env = {}) {
  const js = `fetch(${JSON.stringify(url)}, { signal: AbortSignal.timeout(3000) })` +
    `.then((r) => process.stdout.write(String(r.status)), (e) => process.stdout.write("error " + e.message + (e.cause ? ": " + e.cause.message : "")))`;
  return execFileSync("ip", ["netns", "exec", ns(n), process.execPath, "-e", js], { encoding: "utf8", timeout: 10000, env: { ...process.env, ...env } });
}

/** Chromium in a client namespace: playwright talks to it over a pipe, which crosses namespaces. */
async function launchIn(n, setup) {
  const wrapper = join(work, `chromium-${n}`);
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${ns(n)} /usr/bin/chromium "$@"\n`);
  chmodSync(wrapper, 0o755);
  return chromium.launch({
    executablePath: wrapper,
    headless: true,
    timeout: 30000,
    env: setup.browserEnv ? setup.browserEnv(n) : process.env,
    args: [...CHROMIUM_FLAGS, ...setup.chromiumArgs],
  });
}

async function openPage(browser, origin, room, label) {
  const context = await browser.newContext({ viewport: { width: 390, height: 760 } });
  await context.grantPermissions(["camera", "microphone"], { origin });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  const problems = [];
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`${label} console: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`${label} page error: ${e.message}`));
  await page.goto(`${origin}/?room=${room}&autojoin=1`);
  return { page, problems, label };
}

/** The selected candidate pair of the first connected peer connection, from getStats. */
async function selectedPair(page) {
  return page.evaluate(async () => {
    const c = window.callbox;
    if (!c) return null;
    for (const [id, r] of c.remotes) {
      if (r.pc.connectionState !== "connected") continue;
      const stats = await r.pc.getStats();
      let pair = null;
      stats.forEach((s) => {
        if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
      });
      if (!pair) continue;
      const cand = (s) => ({
        candidateType: s.candidateType,
        protocol: s.protocol,
        relayProtocol: s.relayProtocol || null,
        address: `${s.address || s.ip}:${s.port}`,
      });
      let bytesReceived = 0;
      stats.forEach((s) => {
        if (s.type === "inbound-rtp") bytesReceived += s.bytesReceived || 0;
      });
      return { peer: id, local: cand(stats.get(pair.localCandidateId)), remote: cand(stats.get(pair.remoteCandidateId)), bytesReceived };
    }
    return null;
  });
}

/** Every candidate pair ICE tried on the first peer connection (for failure reports). */
async function candidatePairs(page) {
  return page
    .evaluate(async () => {
      const c = window.callbox;
      const r = c && [...c.remotes.values()][0];
      if (!r) return [];
      const stats = await r.pc.getStats();
      const name = (id) => {
        const s = stats.get(id);
        return s ? `${s.candidateType}/${s.protocol}${s.relayProtocol ? "(" + s.relayProtocol + ")" : ""} ${s.address || s.ip || ""}:${s.port}` : id;
      };
      const out = [];
      stats.forEach((s) => {
        if (s.type === "candidate-pair") {
          out.push(`${name(s.localCandidateId)} -> ${name(s.remoteCandidateId)} ${s.state}${s.nominated ? " nominated" : ""} sent=${s.requestsSent || 0} got=${s.responsesReceived || 0}`);
        }
      });
      return out;
    })
    .catch((e) => [`candidatePairs failed: ${e.message}`]);
}

async function waitFor(fn, what, ms) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
}

/** Connected, and inbound RTP bytes grow: media flows over the selected pair. */
async function mediaFlows(side) {
  const first = await waitFor(() => selectedPair(side.page), `${side.label} connected`, 45000);
  return waitFor(
    async () => {
      const now = await selectedPair(side.page);
      return now && now.bytesReceived > first.bytesReceived + 1000 ? now : null;
    },
    `${side.label} receiving media`,
    15000,
  );
}

async function diagnose(side) {
  return side.page
    .evaluate(() => {
      const c = window.callbox;
      if (!c) return "no client";
      return JSON.stringify({
        status: document.getElementById("status").textContent,
        peer: c.peerId,
        ws: c.ws && c.ws.readyState,
        iceServers: (c.iceServers || []).map((s) => s.urls),
        remotes: [...c.remotes].map(([id, r]) => ({ id, sig: r.pc.signalingState, ice: r.pc.iceConnectionState, conn: r.pc.connectionState, gather: r.pc.iceGatheringState })),
        errors: c.errors,
        trace: (c.trace || []).slice(-30),
      });
    })
    .catch((e) => `diagnose failed: ${e.message}`);
}

/**
 * One scenario on a fresh test bed and a fresh callbox: the routers' policy (a mode of
 * `netbed.sh policy`), callbox and the browsers set up as `setup` says, two pages in one
 * room, then `check(pairs, ctx)` with both sides' selected pairs once media flows.
 */
async function scenario(t, name, { policy, setup = PLAIN }, check) {
  bed("up");
  bed("policy", policy);
  let server;
  const browsers = [];
  const sides = [];
  try {
    if (setup.prepare) setup.prepare();
    server = await startCallbox(name, setup);
    const probe = setup.probe || { origin: setup.origin, env: {} };
    for (const c of ["c1", "c2"]) {
      const r = fetchFrom(c, `${probe.origin}/healthz`, probe.env);
      assert.equal(r, "200", `${c} reaches the signal port through its NAT: ${r}`);
    }
    const room = `netbed-${name}`;
    for (const c of ["c1", "c2"]) {
      const b = await launchIn(c, setup);
      browsers.push(b);
      sides.push(await openPage(b, setup.origin, room, c));
    }
    const pairs = await withTimeout(Promise.all(sides.map(mediaFlows)), 75000, "both sides connected with media");
    for (const [i, p] of pairs.entries()) {
      t.diagnostic(`${sides[i].label} selected pair: local ${JSON.stringify(p.local)} remote ${JSON.stringify(p.remote)}`);
    }
    for (const s of sides) {
      for (const line of await candidatePairs(s.page)) t.diagnostic(`${s.label} pair ${line}`);
    }
    const statuses = await Promise.all(sides.map((s) => s.page.textContent("#status")));
    await check(pairs, { sides, server, statuses, t });
    assert.deepEqual(sides.flatMap((s) => s.problems), []);
  } catch (err) {
    mkdirSync(artifacts, { recursive: true });
    const report = [`netbed scenario ${name} failed: ${err.stack || err}`];
    for (const s of sides) {
      await s.page.screenshot({ path: join(artifacts, `netbed-${name}-${s.label}.png`), fullPage: true }).catch(() => {});
      report.push(`${s.label}: ${await diagnose(s)}`, ...(await candidatePairs(s.page)).map((l) => `${s.label} pair ${l}`), ...s.problems);
    }
    if (server) {
      report.push(`callbox allocations:\n${admin(server, "allocations", "list")}`);
      report.push(`callbox log:\n${server.log()}`);
    }
    try {
      report.push(bed("show"));
    } catch (e) {
      report.push(`netbed show failed: ${e.message}`);
    }
    process.stderr.write(report.join("\n") + "\n");
    throw err;
  } finally {
    for (const b of browsers) await withTimeout(b.close(), 10000, "browser close").catch(() => {});
    await stopCallbox(server);
    if (server) {
      mkdirSync(artifacts, { recursive: true });
      writeFileSync(join(artifacts, `netbed-${name}-callbox.log`), server.log());
    }
    bed("down");
  }
}

const relayedOverTcp = (c) => c.candidateType === "relay" && c.relayProtocol === "tcp";

before(() => {
  for (const [tool, pkg] of [["ip", "iproute2"], ["nft", "nftables"], ["openssl", "openssl"], ["certutil", "libnss3-tools"]]) {
    try {
      execFileSync("sh", ["-c", `command -v ${tool}`], { stdio: "ignore" });
    } catch {
      assert.fail(`${tool} is missing: apt-get install ${pkg}`);
    }
  }
  assert.equal(process.getuid(), 0, "the network test bed creates namespaces: run as root");
  assert.ok(existsSync("/usr/bin/chromium"), "Debian's chromium is needed: apt-get install chromium");
  assert.ok(existsSync(bin), `build the binary first: ${bin}`);
  collectLeftovers();
});

after(cleanUp);

/** At least two allocations in callbox's admin listing, each with the client's `transport`. */
function checkAllocations(t, server, transport) {
  const out = admin(server, "allocations", "list", "--json");
  let allocs;
  try {
    allocs = JSON.parse(out);
  } catch {
    assert.fail(`callbox admin allocations list --json: ${out}`);
  }
  for (const a of allocs) t.diagnostic(`callbox allocation: client ${a.client} relay ${a.relay} transport ${a.transport} packets to peer ${a.packets_to_peer}`);
  assert.ok(allocs.length >= 2, `two allocations: ${out}`);
  for (const a of allocs) assert.equal(a.transport, transport, `allocation over ${transport}: ${JSON.stringify(a)}`);
}

test("(a) no UDP out of either LAN: the call goes through TURN over TCP", { timeout: 150000 }, async (t) => {
  await scenario(t, "no-udp", { policy: "no-udp" }, async (pairs, { server, statuses, t }) => {
    // No UDP leaves either LAN and neither host address is reachable: only the relay is left.
    for (const p of pairs) assert.equal(p.local.candidateType, "relay", `every local candidate is relay: ${JSON.stringify(p)}`);
    assert.ok(pairs.some((p) => relayedOverTcp(p.local)), `one side's local candidate is relay over tcp: ${JSON.stringify(pairs)}`);
    // The page says so in its status line.
    assert.ok(statuses.some((s) => s.includes("relayed via TURN over TCP")), `status lines: ${JSON.stringify(statuses)}`);
    t.diagnostic(`status lines: ${JSON.stringify(statuses)}`);
    // The server's side: two allocations, each relaying to the other, over TCP.
    checkAllocations(t, server, "tcp");
  });
});

test("(b) only TCP to 443 out: page, WebSocket and TURNS share one TLS port", { timeout: 150000 }, async (t) => {
  await scenario(t, "tcp443", { policy: "tcp443", setup: TLS443 }, async (pairs, { sides, server, statuses, t }) => {
    // The one TLS port runs, and no TURN/TLS port beside it.
    const ready = server.log().split("\n").find((l) => l.includes("callbox ready")) || "";
    t.diagnostic(`callbox: ${ready.trim()}`);
    assert.match(ready, new RegExp(`\\btls=${SERVER.replace(/\./g, "\\.")}:443\\b`), "the one TLS port listens on 443");
    assert.doesNotMatch(ready, /\bturn_tls=/, "turn.tls_listen = [] runs no TURN/TLS port");
    for (const s of sides) {
      const page = await s.page.evaluate(() => ({
        href: location.href,
        ws: window.callbox.ws && window.callbox.ws.url,
        iceServers: (window.callbox.iceServers || []).flatMap((i) => [].concat(i.urls)),
      }));
      t.diagnostic(`${s.label} page ${page.href} signaling ${page.ws} ice servers ${JSON.stringify(page.iceServers)}`);
      assert.ok(page.href.startsWith(`https://${TLS_HOST}/`), `${s.label} loaded the page over https: ${page.href}`);
      assert.ok(String(page.ws).startsWith(`wss://${TLS_HOST}/`), `${s.label} signals over wss on the same port: ${page.ws}`);
      assert.ok(page.iceServers.includes(`turns:${TLS_HOST}:443?transport=tcp`), `${s.label} ICE list has TURNS on 443: ${JSON.stringify(page.iceServers)}`);
    }
    // The only way out of either LAN is TLS to 443: both sides relay through TURNS there.
    for (const p of pairs) {
      assert.equal(p.local.candidateType, "relay", `every local candidate is relay: ${JSON.stringify(p)}`);
      assert.equal(p.local.relayProtocol, "tls", `relayed over TLS: ${JSON.stringify(p)}`);
    }
    assert.ok(statuses.every((s) => s.includes("relayed via TURN over TLS")), `status lines: ${JSON.stringify(statuses)}`);
    t.diagnostic(`status lines: ${JSON.stringify(statuses)}`);
    checkAllocations(t, server, "tls");
  });
});

test("(c) both NATed, UDP open: the call connects and is not relayed over TCP", { timeout: 150000 }, async (t) => {
  await scenario(t, "nat-udp", { policy: "open" }, async (pairs, { statuses, t }) => {
    for (const p of pairs) {
      assert.equal(relayedOverTcp(p.local), false, `not relayed over TCP: ${JSON.stringify(p)}`);
      assert.equal(p.local.protocol, "udp", `a UDP path: ${JSON.stringify(p)}`);
    }
    t.diagnostic(`status lines: ${JSON.stringify(statuses)}`);
  });
});
