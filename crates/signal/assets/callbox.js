// callbox.js: a browser client for callbox signaling (PROTOCOL.md section 2).
//
// An ES module with no dependencies and no build step. It joins a room, keeps one
// RTCPeerConnection per other peer (a mesh), negotiates with the "perfect negotiation"
// pattern, trickles ICE candidates, resumes its signaling session after a dropped socket,
// applies fresh ICE servers with setConfiguration, and restarts ICE when a connection fails.
//
//   import { CallboxClient } from "/callbox.js";
//   const client = new CallboxClient({ room: "demo" });
//   client.addEventListener("track", (e) => show(e.detail.peerId, e.detail.stream));
//   client.setLocalStream(await navigator.mediaDevices.getUserMedia({ audio: true, video: true }));
//   await client.connect();

/** Close codes after which the client must not reconnect. */
const FINAL_CLOSES = new Map([
  [1000, "left"],
  [1003, "binary frame refused"],
  [1009, "message too large"],
  [4000, "replaced by another connection"],
  [4003, "kicked"],
  [4009, "room closed"],
  [4029, "rate limit exceeded"],
]);

function wsBase(base) {
  const u = new URL(base || window.location.href);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  u.pathname = "";
  u.search = "";
  u.hash = "";
  return u.toString().replace(/\/$/, "");
}

function httpBase(base) {
  const u = new URL(base || window.location.href);
  return `${u.protocol}//${u.host}`;
}

/** One remote peer: its RTCPeerConnection and perfect-negotiation state. */
class Remote {
  constructor(client, peerId, meta) {
    this.client = client;
    this.peerId = peerId;
    this.meta = meta || {};
    // The peer with the smaller id is polite: it yields on offer collisions.
    this.polite = client.peerId < peerId;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.settingRemoteAnswerPending = false;
    this.stream = new MediaStream();
    this.pc = new RTCPeerConnection(client.rtcConfiguration());
    this.pc.onnegotiationneeded = () => this.negotiate();
    this.pc.onicecandidate = ({ candidate }) => {
      const c = candidate
        ? candidate.toJSON()
        : { candidate: "", sdpMid: null, sdpMLineIndex: null, usernameFragment: null };
      client.send({ type: "candidate", to: peerId, ...c });
    };
    this.pc.ontrack = ({ track, streams }) => {
      const stream = streams[0] || this.stream;
      if (!streams[0]) this.stream.addTrack(track);
      this.stream = stream;
      client.emit("track", { peerId, stream, track });
    };
    this.restarts = 0;
    this.watchdog = null;
    this.pc.onsignalingstatechange = () => {
      if (this.pc.signalingState === "stable") this.watch();
    };
    this.pc.onconnectionstatechange = () => {
      const state = this.pc.connectionState;
      client.emit("connectionstate", { peerId, state });
      if (state === "connected") this.restarts = 0;
      if (state === "failed") {
        // A new path may exist now (another network, fresh TURN credentials).
        client.log(`ICE failed with ${peerId}; restarting ICE`);
        this.pc.restartIce();
      }
    };
    for (const track of client.localTracks()) {
      this.pc.addTrack(track, client.localStream);
    }
  }

  /** After a negotiation settles, a connection that gets nowhere is given a fresh ICE
   * session (at most three times in a row). */
  watch() {
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => {
      const state = this.pc.connectionState;
      if ((state === "new" || state === "connecting") && this.restarts < 3 && this.pc.signalingState === "stable") {
        this.restarts += 1;
        this.client.log(`no connection with ${this.peerId} yet; restarting ICE`);
        this.pc.restartIce();
      }
    }, 8000);
  }

  async negotiate() {
    try {
      this.makingOffer = true;
      await this.pc.setLocalDescription();
      this.client.send({ type: this.pc.localDescription.type, sdp: this.pc.localDescription.sdp, to: this.peerId });
      this.client.negotiations += 1;
    } catch (err) {
      this.client.fail("negotiation", err);
    } finally {
      this.makingOffer = false;
    }
  }

  async onDescription(description) {
    const pc = this.pc;
    const readyForOffer =
      !this.makingOffer && (pc.signalingState === "stable" || this.settingRemoteAnswerPending);
    const collision = description.type === "offer" && !readyForOffer;
    this.ignoreOffer = !this.polite && collision;
    if (this.ignoreOffer) return;
    this.settingRemoteAnswerPending = description.type === "answer";
    await pc.setRemoteDescription(description);
    this.settingRemoteAnswerPending = false;
    if (description.type === "offer") {
      await pc.setLocalDescription();
      this.client.send({ type: pc.localDescription.type, sdp: pc.localDescription.sdp, to: this.peerId });
      this.client.negotiations += 1;
    }
  }

  async onCandidate(msg) {
    try {
      const init = msg.candidate === ""
        ? null
        : { candidate: msg.candidate, sdpMid: msg.sdpMid, sdpMLineIndex: msg.sdpMLineIndex, usernameFragment: msg.usernameFragment };
      await this.pc.addIceCandidate(init);
    } catch (err) {
      if (!this.ignoreOffer) this.client.fail("candidate", err);
    }
  }

  close() {
    clearTimeout(this.watchdog);
    this.pc.close();
  }
}

/**
 * A signaling session and its peer connections.
 *
 * Events (CustomEvent, data in `detail`): `welcome`, `peer-joined`, `peer-left`, `track`,
 * `connectionstate`, `message` (application data), `status` ({state, text}), `error`
 * ({kind, message}), `closed` ({code, reason}).
 */
export class CallboxClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.room            room id
   * @param {string} [options.url]           server base URL (default: this page's origin)
   * @param {string} [options.token]         JWT when the server requires one
   * @param {RTCConfiguration} [options.rtcConfig] extra RTCPeerConnection settings
   *        (e.g. `{iceTransportPolicy: "relay"}`); `iceServers` come from the server.
   */
  constructor(options) {
    super();
    this.options = options;
    this.room = options.room;
    this.peerId = null;
    this.resumeToken = null;
    this.lastSeq = 0;
    this.iceServers = [];
    this.remotes = new Map();
    this.localStream = null;
    this.ws = null;
    this.leaving = false;
    this.attempt = 0;
    this.negotiations = 0;
    this.resumes = 0;
    this.events = [];
    this.errorLog = [];
    this.inbox = Promise.resolve();
    this.trace = [];
    this.pendingMeta = new Map();
  }

  emit(type, detail) {
    this.events.push({ type, t: Date.now() });
    if (type === "error") {
      this.errorLog.push(`${detail.kind}: ${detail.message}`);
      if (this.errorLog.length > 50) this.errorLog.shift();
    }
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  log(text) {
    this.emit("log", { text });
  }

  status(state, text) {
    this.emit("status", { state, text });
  }

  fail(kind, err) {
    const message = err && err.message ? err.message : String(err);
    this.emit("error", { kind, message });
  }

  /** The last client-side errors, newest last (for diagnostics). */
  get errors() {
    return this.errorLog;
  }

  rtcConfiguration() {
    return { ...(this.options.rtcConfig || {}), iceServers: this.iceServers };
  }

  localTracks() {
    return this.localStream ? this.localStream.getTracks() : [];
  }

  /** Sets (or replaces) the local media sent to every peer. */
  setLocalStream(stream) {
    this.localStream = stream;
    for (const r of this.remotes.values()) {
      const senders = r.pc.getSenders();
      for (const track of stream.getTracks()) {
        const same = senders.find((s) => s.track && s.track.kind === track.kind);
        if (same) same.replaceTrack(track);
        else r.pc.addTrack(track, stream);
      }
    }
  }

  /** Sends application data to one peer (`to`) or to everyone. */
  sendMessage(data, to) {
    this.send(to ? { type: "message", data, to } : { type: "message", data });
  }

  /** Keeps the last 200 signaling events, for diagnostics (`client.trace`). */
  note(text) {
    this.trace.push(`${(performance.now() / 1000).toFixed(2)} ${text}`);
    if (this.trace.length > 200) this.trace.shift();
  }

  send(msg) {
    this.note(`tx ${msg.type}${msg.to ? " to " + msg.to : ""}${this.ws && this.ws.readyState === WebSocket.OPEN ? "" : " (not sent: socket closed)"}`);
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(msg));
      return true;
    }
    return false;
  }

  signalUrl() {
    const q = new URLSearchParams({ room: this.room });
    if (this.options.token) q.set("token", this.options.token);
    if (this.resumeToken) {
      q.set("resume", this.resumeToken);
      q.set("last_seq", String(this.lastSeq));
    }
    return q;
  }

  /** Asks the server why a connection would be refused (browsers cannot read that). */
  async refusal() {
    try {
      const r = await fetch(`${httpBase(this.options.url)}/v1/signal/validate?${this.signalUrl()}`, { cache: "no-store" });
      if (r.ok) return null;
      const body = await r.json();
      return { status: r.status, code: body.error && body.error.code, message: body.error && body.error.message };
    } catch (err) {
      return { status: 0, code: "unreachable", message: String(err) };
    }
  }

  /** Opens the signaling session; resolves on `welcome`, rejects with the refusal. */
  connect() {
    this.leaving = false;
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`${wsBase(this.options.url)}/v1/signal?${this.signalUrl()}`, ["callbox.v1"]);
      this.ws = ws;
      let welcomed = false;
      ws.onmessage = (ev) => {
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          return;
        }
        if (msg.type === "welcome") {
          welcomed = true;
          this.attempt = 0;
          this.onWelcome(msg);
          resolve(msg);
          return;
        }
        // One message at a time, in order: a candidate must not overtake the offer it
        // belongs to while that offer is still being applied.
        this.inbox = this.inbox.then(() => this.onMessage(msg)).catch((err) => this.fail("message", err));
      };
      ws.onclose = async (ev) => {
        if (this.ws !== ws) return;
        if (!welcomed) {
          const why = await this.refusal();
          if (why && (why.code === "resume-expired" || why.code === "resume-gap")) {
            // The old session is gone: join afresh.
            this.log(`resume refused (${why.code}); joining afresh`);
            this.dropSession();
            this.connect().then(resolve, reject);
            return;
          }
          if (why && this.attempt > 0 && (why.status === 0 || why.status >= 500)) {
            // Reconnecting to a server that is down or restarting (unreachable, 502-504,
            // 503 while its Redis is away): keep trying with backoff, not give up.
            this.onClose(ev, reject);
            return;
          }
          if (why) {
            this.status("refused", `signaling refused: ${why.message || why.code} (${why.status})`);
            this.emit("closed", { code: why.status, reason: why.code });
            reject(Object.assign(new Error(why.message || why.code), why));
            return;
          }
        }
        this.onClose(ev, reject);
      };
    });
  }

  dropSession() {
    // The pages of these peers must go too: without the event a page kept their tiles
    // (a black tile per old peer after a server restart). The map is emptied first, so
    // a listener that walks it sees only what remains.
    const gone = [...this.remotes];
    this.remotes.clear();
    for (const [id, r] of gone) {
      r.close();
      this.emit("peer-left", { peerId: id, reason: "gone" });
    }
    this.pendingMeta.clear();
    this.resumeToken = null;
    this.lastSeq = 0;
    this.peerId = null;
  }

  onWelcome(msg) {
    const resumed = msg.resumed;
    this.peerId = msg.peer_id;
    this.resumeToken = msg.resume_token;
    this.applyIceServers(msg.ice_servers);
    if (resumed) this.resumes += 1;
    const present = new Set(msg.peers.map((p) => p.peer_id));
    for (const [id, r] of this.remotes) {
      if (!present.has(id)) {
        r.close();
        this.remotes.delete(id);
        this.emit("peer-left", { peerId: id, reason: "gone" });
      }
    }
    // The newcomer's side waits for offers; existing peers are connected from here only
    // when this is a fresh join (after a resume the connections are still up).
    for (const p of msg.peers) {
      if (!this.remotes.has(p.peer_id)) this.addRemote(p.peer_id, p.meta);
    }
    this.status("joined", resumed ? "signaling resumed" : "joined the room");
    this.emit("welcome", msg);
  }

  addRemote(peerId, meta) {
    const r = new Remote(this, peerId, meta);
    this.remotes.set(peerId, r);
    return r;
  }

  applyIceServers(list) {
    this.iceServers = list || [];
    for (const r of this.remotes.values()) {
      try {
        r.pc.setConfiguration(this.rtcConfiguration());
      } catch (err) {
        this.fail("ice-servers", err);
      }
    }
  }

  async onMessage(msg) {
    this.note(`rx ${msg.type}${msg.from ? " from " + msg.from : ""}${msg.peer_id ? " " + msg.peer_id : ""} seq ${msg.seq}`);
    if (typeof msg.seq === "number") this.lastSeq = Math.max(this.lastSeq, msg.seq);
    switch (msg.type) {
      case "peer-joined":
        // The newcomer makes the first offer (it learns of us from its welcome); creating
        // our side only when that offer arrives avoids an offer collision on every join.
        this.pendingMeta.set(msg.peer_id, msg.meta);
        this.emit("peer-joined", { peerId: msg.peer_id, meta: msg.meta });
        break;
      case "peer-left": {
        this.pendingMeta.delete(msg.peer_id);
        const r = this.remotes.get(msg.peer_id);
        if (r) r.close();
        this.remotes.delete(msg.peer_id);
        this.emit("peer-left", { peerId: msg.peer_id, reason: msg.reason });
        break;
      }
      case "offer":
      case "answer": {
        const r = this.remotes.get(msg.from) || this.addRemote(msg.from, this.pendingMeta.get(msg.from) || {});
        this.pendingMeta.delete(msg.from);
        try {
          await r.onDescription({ type: msg.type, sdp: msg.sdp });
        } catch (err) {
          this.fail("negotiation", err);
        }
        break;
      }
      case "candidate": {
        const r = this.remotes.get(msg.from);
        if (r) await r.onCandidate(msg);
        break;
      }
      case "ice-servers":
        this.applyIceServers(msg.ice_servers);
        break;
      case "message":
        this.emit("message", { from: msg.from, data: msg.data });
        break;
      case "error":
        this.emit("error", { kind: msg.code, message: msg.message });
        break;
      default:
        break;
    }
  }

  onClose(ev, reject) {
    this.ws = null;
    if (this.leaving) {
      this.emit("closed", { code: ev.code, reason: "left" });
      return;
    }
    const final = FINAL_CLOSES.get(ev.code);
    if (final) {
      this.status("closed", `signaling closed: ${final} (${ev.code})`);
      this.emit("closed", { code: ev.code, reason: final });
      this.dropSession();
      if (reject) reject(new Error(final));
      return;
    }
    // Dropped (or 4012 draining): resume with backoff; media keeps flowing meanwhile.
    const delay = Math.min(5000, 250 * 2 ** this.attempt) * (0.75 + Math.random() / 2);
    this.attempt += 1;
    this.status("reconnecting", `signaling lost (${ev.code}); reconnecting`);
    setTimeout(() => {
      if (this.leaving) return;
      this.connect().catch((err) => this.fail("reconnect", err));
    }, delay);
  }

  /** Leaves the room for good and closes every peer connection. */
  leave() {
    this.leaving = true;
    this.send({ type: "leave" });
    if (this.ws) this.ws.close(1000);
    this.dropSession();
    this.status("left", "left the call");
  }

  /**
   * How the connection with a peer runs: the selected candidate pair's types, protocol and
   * (for relayed pairs) the relay's address and transport to it.
   */
  async route(peerId) {
    const r = this.remotes.get(peerId);
    if (!r) return null;
    const stats = await r.pc.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    if (!pair) {
      stats.forEach((s) => {
        if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
      });
    }
    if (!pair) return null;
    const local = stats.get(pair.localCandidateId);
    const remote = stats.get(pair.remoteCandidateId);
    let inbound = 0;
    stats.forEach((s) => {
      if (s.type === "inbound-rtp") inbound += s.bytesReceived || 0;
    });
    return {
      relayed: local.candidateType === "relay" || remote.candidateType === "relay",
      localType: local.candidateType,
      remoteType: remote.candidateType,
      protocol: local.protocol,
      relayProtocol: local.relayProtocol || null,
      localAddress: `${local.address || local.ip}:${local.port}`,
      remoteAddress: `${remote.address || remote.ip}:${remote.port}`,
      bytesReceived: inbound,
    };
  }
}
