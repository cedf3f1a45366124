// The call page: join a room, show everyone, say plainly how the call is connected.
import { CallboxClient } from "/callbox.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(window.location.search);
let client = null;
let localStream = null;
const tiles = new Map();

function setStatus(text, kind = "") {
  const el = $("status");
  el.textContent = text;
  el.className = kind;
}

function randomRoom() {
  const words = ["amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "harbor", "iris", "juniper"];
  const pick = () => words[Math.floor(Math.random() * words.length)];
  const n = new Uint32Array(1);
  crypto.getRandomValues(n);
  return `${pick()}-${pick()}-${(n[0] % 10000).toString().padStart(4, "0")}`;
}

function shareLink(room) {
  const u = new URL(window.location.href);
  u.search = new URLSearchParams({ room }).toString();
  return u.toString();
}

async function getMedia(audioOnly) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw Object.assign(new Error("this browser cannot capture media here (a secure origin, https, is needed)"), { name: "NotSupported" });
  }
  if (!audioOnly) {
    try {
      return await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480 } });
    } catch (err) {
      if (err.name === "NotAllowedError") throw err;
      // No camera (or it is busy): fall back to audio only.
      setStatus("No camera available; joining with audio only.");
    }
  }
  return navigator.mediaDevices.getUserMedia({ audio: true, video: false });
}

function tileFor(peerId) {
  let t = tiles.get(peerId);
  if (t) return t;
  const fig = document.createElement("figure");
  fig.className = "tile";
  fig.dataset.peer = peerId;
  const video = document.createElement("video");
  video.autoplay = true;
  video.playsInline = true;
  const cap = document.createElement("figcaption");
  cap.textContent = peerId;
  const route = document.createElement("span");
  route.className = "route";
  route.textContent = "connecting";
  fig.append(video, cap, route);
  $("videos").append(fig);
  t = { fig, video, route };
  tiles.set(peerId, t);
  return t;
}

function removeTile(peerId) {
  const t = tiles.get(peerId);
  if (t) t.fig.remove();
  tiles.delete(peerId);
}

function describe(route) {
  if (!route) return "connecting";
  if (route.relayed) {
    const via = route.relayProtocol ? route.relayProtocol.toUpperCase() : route.protocol.toUpperCase();
    return `relayed via TURN over ${via}`;
  }
  return `direct over ${route.protocol.toUpperCase()}`;
}

async function refreshRoutes() {
  if (!client) return;
  const parts = [];
  for (const peerId of client.remotes.keys()) {
    const state = client.remotes.get(peerId).pc.connectionState;
    const route = state === "connected" ? await client.route(peerId) : null;
    const text = state === "connected" ? describe(route) : state;
    tileFor(peerId).route.textContent = text;
    parts.push(text);
    window.callboxRoutes = window.callboxRoutes || {};
    window.callboxRoutes[peerId] = route;
  }
  if (parts.length === 0 && client.peerId) {
    setStatus(`In room ${client.room}; waiting for others to join.`, "ok");
  } else if (parts.length > 0) {
    const failed = parts.filter((p) => p === "failed").length;
    if (failed) setStatus(`Connection failed with ${failed} peer(s): no network path (ICE failed); retrying.`, "error");
    else setStatus(`In room ${client.room}: ${[...new Set(parts)].join(", ")}.`, "ok");
  }
}

async function join(room) {
  setStatus("Asking for camera and microphone...");
  try {
    localStream = await getMedia($("audio-only").checked || params.get("audio") === "1");
  } catch (err) {
    const why = err.name === "NotAllowedError"
      ? "camera and microphone permission was denied; allow it in the browser and try again"
      : err.message;
    setStatus(`Cannot start: ${why}.`, "error");
    return;
  }
  $("local-video").srcObject = localStream;
  const rtcConfig = params.get("relay") === "1" ? { iceTransportPolicy: "relay" } : {};
  client = new CallboxClient({ room, token: params.get("token") || undefined, rtcConfig });
  window.callbox = client;
  client.setLocalStream(localStream);
  client.addEventListener("track", (e) => {
    const t = tileFor(e.detail.peerId);
    if (t.video.srcObject !== e.detail.stream) t.video.srcObject = e.detail.stream;
  });
  client.addEventListener("peer-joined", (e) => tileFor(e.detail.peerId));
  client.addEventListener("peer-left", (e) => {
    removeTile(e.detail.peerId);
    refreshRoutes();
  });
  client.addEventListener("connectionstate", () => refreshRoutes());
  client.addEventListener("status", (e) => {
    if (e.detail.state === "refused" || e.detail.state === "closed") setStatus(e.detail.text, "error");
    else if (e.detail.state === "reconnecting") setStatus(e.detail.text + " (media continues)");
  });
  client.addEventListener("error", (e) => console.warn("callbox:", e.detail.kind, e.detail.message));
  $("join").hidden = true;
  $("call").hidden = false;
  const link = shareLink(room);
  $("link").href = link;
  $("link").textContent = link;
  history.replaceState(null, "", link);
  setStatus("Connecting to the signaling server...");
  try {
    await client.connect();
  } catch (err) {
    // Back to the form, camera off, with the reason on screen.
    teardown();
    setStatus(`Signaling refused: ${err.message}.`, "error");
    return;
  }
  for (const peerId of client.remotes.keys()) tileFor(peerId);
  refreshRoutes();
}

function teardown() {
  if (client) client.leave();
  client = null;
  if (localStream) localStream.getTracks().forEach((t) => t.stop());
  localStream = null;
  $("local-video").srcObject = null;
  for (const id of [...tiles.keys()]) removeTile(id);
  $("join").hidden = false;
  $("call").hidden = true;
}

function leave() {
  teardown();
  setStatus("You left the call.");
}

function toggle(kind, button, onText, offText) {
  if (!localStream) return;
  const tracks = kind === "audio" ? localStream.getAudioTracks() : localStream.getVideoTracks();
  if (tracks.length === 0) return;
  const enabled = !tracks[0].enabled;
  tracks.forEach((t) => (t.enabled = enabled));
  button.setAttribute("aria-pressed", String(!enabled));
  button.textContent = enabled ? onText : offText;
}

$("generate").addEventListener("click", () => ($("room").value = randomRoom()));
$("join").addEventListener("submit", (e) => {
  e.preventDefault();
  if ($("room").checkValidity()) join($("room").value);
});
$("leave").addEventListener("click", leave);
$("mute-audio").addEventListener("click", (e) => toggle("audio", e.target, "Mute", "Unmute"));
$("mute-video").addEventListener("click", (e) => toggle("video", e.target, "Stop video", "Start video"));
$("copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText($("link").href);
    $("copy").textContent = "Copied";
  } catch {
    $("copy").textContent = "Copy failed";
  }
});
setInterval(refreshRoutes, 2000);

const initial = params.get("room");
if (initial) {
  $("room").value = initial;
  if (params.get("autojoin") === "1") join(initial);
} else {
  $("room").value = randomRoom();
}
