// Charter's conference page: camera and microphone in, one tile per remote participant.
//
// One RTCPeerConnection (Unified Plan, BUNDLE, non-trickle: every offer and answer is sent
// once ICE gathering completed). The page offers its own tracks with the join; Charter
// answers, and later offers what the page receives (a transceiver per remote track), which
// the page answers. The a=msid:<publisher id> <track id> of each offered m-line tells whose
// track arrives on that transceiver. Signalling goes over one WebSocket to `charter web`
// (cli/web.py), which speaks the controller's gRPC API.
//
// window.charterTest exposes the state and per-participant statistics to tests.
"use strict";

const GATHER_TIMEOUT_MS = 5000;
const STATS_INTERVAL_MS = 1000;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const state = {
  phase: "idle", // idle, starting, joining, joined, left, removed, ended, error
  detail: "",
  conference: "",
  participant: "",
  name: "",
  errors: [], // {call, code, detail}
  offer: "", // the SDP offer sent with the join
  answer: "", // Charter's answer to it
  offersReceived: 0,
  answersSent: 0,
  gatheringTimedOut: 0,
  joinSentAt: null, // performance.now() when the join went to the gateway
  joinedAt: null, // ... when Charter's answer was applied
  camera: null, // the local camera's settings (width, height, frameRate, deviceId ...)
};

let ws = null;
let pc = null;
let localStream = null;
let statsTimer = null;
let queue = Promise.resolve(); // the gateway's messages, handled one after the other
const names = new Map(); // participant id -> display name
const remotes = new Map(); // publisher id -> {tile, video, stream, firstFrameAt, video stats, audio stats}
const owners = new Map(); // mid -> {publisher, track}: from the a=msid of Charter's offers
const previous = new Map(); // stats id -> {bytes, timestamp}: for bitrates
let local = {};
let rttMs = null;
let availableOutgoingBitrate = null; // the browser's bandwidth estimate of the path to Charter

// --------------------------------------------------------------------------------------
// Phase, errors, the form

function setPhase(phase, text) {
  state.phase = phase;
  state.detail = text;
  const status = $("status");
  status.dataset.phase = phase;
  status.textContent = text;
  const inCall = phase === "starting" || phase === "joining" || phase === "joined";
  $("join").disabled = inCall;
  $("leave").disabled = !inCall;
  $("conference").disabled = inCall;
  $("name").disabled = inCall;
}

function showError(call, code, detail) {
  state.errors.push({ call, code, detail });
  const error = $("error");
  error.hidden = false;
  error.textContent = `${call}: ${code}${detail ? ": " + detail : ""}`;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function send(message) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

function connect() {
  if (ws && ws.readyState === WebSocket.OPEN) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    ws = new WebSocket(`${scheme}://${location.host}/ws`);
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error("cannot reach the gateway"));
    ws.onmessage = (event) => {
      queue = queue.then(() => handle(JSON.parse(event.data))).catch((error) => {
        showError("page", "INTERNAL", String(error));
      });
    };
    ws.onclose = () => {
      ws = null;
      if (state.phase === "joining" || state.phase === "joined") {
        showError("gateway", "UNAVAILABLE", "the connection to the gateway closed");
        teardown();
        setPhase("error", "Disconnected.");
      }
    };
  });
}

// --------------------------------------------------------------------------------------
// Joining and leaving

async function join(conference, name) {
  clearError();
  state.conference = conference;
  state.name = name;
  state.offersReceived = state.answersSent = 0;
  state.joinSentAt = state.joinedAt = null;
  history.replaceState(null, "", `?conference=${encodeURIComponent(conference)}`);
  setPhase("starting", "Starting camera and microphone ...");
  try {
    localStream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
    state.camera = localStream.getVideoTracks()[0].getSettings();
    $("local-video").srcObject = localStream;
    $("local-name").textContent = `${name || "you"} (you)`;
    $("local-tile").hidden = false;
    pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
    pc.ontrack = onTrack;
    pc.onconnectionstatechange = () => {
      if (state.phase === "joined") setPhase("joined", joinedText());
    };
    for (const track of localStream.getTracks()) {
      pc.addTransceiver(track, { direction: "sendonly", streams: [localStream] });
    }
    await pc.setLocalDescription(await pc.createOffer());
    await gathered();
    state.offer = pc.localDescription.sdp;
    await connect();
    setPhase("joining", `Joining ${conference} ...`);
    state.joinSentAt = performance.now();
    send({ type: "join", conference, name, offer: state.offer });
    statsTimer = setInterval(() => updateStats().catch(() => {}), STATS_INTERVAL_MS);
  } catch (error) {
    showError("page", error.name || "Error", error.message || String(error));
    teardown();
    setPhase("error", "Could not join.");
  }
}

function gathered() {
  // Non-trickle: the description is sent with every candidate in it.
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  const connection = pc;
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      state.gatheringTimedOut += 1;
      resolve();
    }, GATHER_TIMEOUT_MS);
    connection.addEventListener("icegatheringstatechange", () => {
      if (connection.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

function leave() {
  send({ type: "leave" });
  teardown();
  setPhase("left", "You left the conference.");
}

function teardown() {
  clearInterval(statsTimer);
  statsTimer = null;
  if (pc) pc.close();
  pc = null;
  if (localStream) localStream.getTracks().forEach((track) => track.stop());
  localStream = null;
  $("local-tile").hidden = true;
  for (const id of [...remotes.keys()]) removeRemote(id);
  names.clear();
  owners.clear();
  previous.clear();
  state.participant = "";
}

function joinedText() {
  const connection = pc ? pc.connectionState : "closed";
  return `In ${state.conference} as ${state.name || state.participant} (${remotes.size} others; media ${connection}).`;
}

// --------------------------------------------------------------------------------------
// The gateway's messages

async function handle(message) {
  switch (message.type) {
    case "joined":
      if (!pc) return;
      state.participant = message.participant;
      state.answer = message.answer;
      await pc.setRemoteDescription({ type: "answer", sdp: message.answer });
      state.joinedAt = performance.now();
      setPhase("joined", joinedText());
      break;
    case "offer":
      if (!pc) return;
      state.offersReceived += 1;
      learnOwners(message.sdp);
      await pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
      await pc.setLocalDescription(await pc.createAnswer());
      await gathered();
      send({ type: "answer", sdp: pc.localDescription.sdp, version: message.version });
      state.answersSent += 1;
      break;
    case "participant_joined":
      if (message.participant === state.participant) break;
      names.set(message.participant, message.name || message.participant);
      ensureRemote(message.participant);
      break;
    case "participant_left":
      names.delete(message.participant);
      removeRemote(message.participant);
      break;
    case "moved": {
      // The conference went to another media daemon: a new transport there, so join again.
      const { conference, name } = state;
      send({ type: "leave" });
      teardown();
      state.moves = (state.moves || 0) + 1;
      setPhase("starting", `The conference moved (${message.reason}): joining again ...`);
      join(conference, name);
      return;
    }
    case "removed":
      teardown();
      setPhase("removed", `Charter removed you from the conference (${message.reason}).`);
      break;
    case "ended":
      teardown();
      setPhase("ended", `The conference ended (${message.reason}).`);
      break;
    case "left":
      break;
    case "error":
      showError(message.call, message.code, message.detail);
      if (state.phase === "joining") {
        teardown();
        setPhase("error", "Could not join.");
      }
      break;
    default:
      break;
  }
  if (state.phase === "joined") setPhase("joined", joinedText());
}

function learnOwners(sdp) {
  // mid -> publisher, from "a=mid:<mid>" and "a=msid:<publisher id> <track id>" of each m-line.
  for (const section of sdp.split(/\r?\n(?=m=)/).slice(1)) {
    const mid = /^a=mid:(\S+)/m.exec(section);
    const msid = /^a=msid:(\S+)(?: (\S+))?/m.exec(section);
    if (mid && msid && msid[1] !== "-") owners.set(mid[1], { publisher: msid[1], track: msid[2] || "" });
  }
}

function onTrack(event) {
  const owner = owners.get(event.transceiver.mid);
  const publisher = owner ? owner.publisher : event.streams[0] && event.streams[0].id;
  if (!publisher) return;
  const remote = ensureRemote(publisher);
  for (const old of remote.stream.getTracks().filter((t) => t.kind === event.track.kind)) {
    remote.stream.removeTrack(old);
  }
  remote.stream.addTrack(event.track);
  remote.video.srcObject = remote.stream;
  remote.video.play().catch(() => {});
}

function ensureRemote(publisher) {
  let remote = remotes.get(publisher);
  if (remote) {
    remote.tile.querySelector(".name").textContent = names.get(publisher) || publisher;
    return remote;
  }
  const tile = $("remote-tile").content.firstElementChild.cloneNode(true);
  tile.dataset.participant = publisher;
  tile.querySelector(".name").textContent = names.get(publisher) || publisher;
  const video = tile.querySelector("video");
  remote = { tile, video, stream: new MediaStream(), firstFrameAt: null, videoStats: {}, audioStats: {} };
  const onFrame = (now) => {
    if (remote.firstFrameAt === null) remote.firstFrameAt = now;
  };
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onFrame);
  else video.addEventListener("loadeddata", () => onFrame(performance.now()), { once: true });
  $("tiles").appendChild(tile);
  remotes.set(publisher, remote);
  return remote;
}

function removeRemote(publisher) {
  const remote = remotes.get(publisher);
  if (!remote) return;
  remote.video.srcObject = null;
  remote.tile.remove();
  remotes.delete(publisher);
}

// --------------------------------------------------------------------------------------
// Statistics (getStats): inbound-rtp by mid -> publisher, outbound-rtp, the selected pair

function bitrate(stat, bytes) {
  // Over the last second or more: getStats is asked more often than that (the tile timer,
  // tests), and a report it cached has the same timestamp as the one before.
  const before = previous.get(stat.id);
  if (!before) {
    previous.set(stat.id, { bytes, timestamp: stat.timestamp, rate: null });
    return null;
  }
  if (stat.timestamp - before.timestamp < STATS_INTERVAL_MS) return before.rate;
  const rate = (8 * (bytes - before.bytes) * 1000) / (stat.timestamp - before.timestamp);
  previous.set(stat.id, { bytes, timestamp: stat.timestamp, rate });
  return rate;
}

function lossPercent(lost, received) {
  return lost + received > 0 ? (100 * Math.max(lost, 0)) / (lost + received) : 0;
}

async function updateStats() {
  if (!pc) return;
  const report = await pc.getStats();
  const byId = new Map();
  report.forEach((stat) => byId.set(stat.id, stat));
  rttMs = null;
  availableOutgoingBitrate = null;
  const found = { video: {}, audio: {}, remoteInbound: {} };
  for (const stat of byId.values()) {
    if (stat.type === "transport" && stat.selectedCandidatePairId) {
      const pair = byId.get(stat.selectedCandidatePairId);
      if (pair && pair.currentRoundTripTime !== undefined) rttMs = 1000 * pair.currentRoundTripTime;
      if (pair && pair.availableOutgoingBitrate !== undefined) availableOutgoingBitrate = pair.availableOutgoingBitrate;
    } else if (stat.type === "candidate-pair" && stat.nominated && stat.state === "succeeded" && rttMs === null) {
      if (stat.currentRoundTripTime !== undefined) rttMs = 1000 * stat.currentRoundTripTime;
    }
  }
  for (const stat of byId.values()) {
    if (stat.type === "inbound-rtp") {
      const owner = owners.get(stat.mid);
      const remote = owner && remotes.get(owner.publisher);
      if (!remote) continue;
      const common = {
        bytesReceived: stat.bytesReceived || 0,
        packetsReceived: stat.packetsReceived || 0,
        packetsLost: stat.packetsLost || 0,
        lossPercent: lossPercent(stat.packetsLost || 0, stat.packetsReceived || 0),
        jitterMs: 1000 * (stat.jitter || 0),
        bitrate: bitrate(stat, stat.bytesReceived || 0),
        ssrc: stat.ssrc,
      };
      if (stat.kind === "video") {
        remote.videoStats = { ...common, framesDecoded: stat.framesDecoded || 0, framesReceived: stat.framesReceived || 0,
          framesDropped: stat.framesDropped || 0, keyFramesDecoded: stat.keyFramesDecoded || 0,
          frameWidth: stat.frameWidth || 0, frameHeight: stat.frameHeight || 0,
          framesPerSecond: stat.framesPerSecond || 0 };
      } else {
        remote.audioStats = { ...common, totalSamplesReceived: stat.totalSamplesReceived || 0,
          audioLevel: stat.audioLevel || 0, totalAudioEnergy: stat.totalAudioEnergy || 0,
          concealedSamples: stat.concealedSamples || 0 };
      }
    } else if (stat.type === "outbound-rtp") {
      const out = { bytesSent: stat.bytesSent || 0, packetsSent: stat.packetsSent || 0,
        bitrate: bitrate(stat, stat.bytesSent || 0), ssrc: stat.ssrc };
      if (stat.kind === "video") {
        Object.assign(out, { framesEncoded: stat.framesEncoded || 0, framesSent: stat.framesSent || 0,
          targetBitrate: stat.targetBitrate || 0,
          frameWidth: stat.frameWidth || 0, frameHeight: stat.frameHeight || 0,
          framesPerSecond: stat.framesPerSecond || 0, qualityLimitationReason: stat.qualityLimitationReason || "" });
      }
      found[stat.kind] = out;
    } else if (stat.type === "remote-inbound-rtp") {
      // What Charter reports receiving of a track the page sends (RTCP receiver reports).
      found.remoteInbound[stat.kind] = { packetsLost: stat.packetsLost || 0, fractionLost: stat.fractionLost || 0,
        roundTripTimeMs: stat.roundTripTime !== undefined ? 1000 * stat.roundTripTime : null };
    }
  }
  local = { ...found, rttMs, availableOutgoingBitrate, connection: pc.connectionState };
  render();
}

function fmtRate(bps) {
  if (bps === null || bps === undefined) return "-";
  return bps >= 1e6 ? `${(bps / 1e6).toFixed(2)} Mb/s` : `${(bps / 1e3).toFixed(0)} kb/s`;
}

function fmtRtt() {
  return rttMs === null ? "-" : `${rttMs.toFixed(0)} ms`;
}

function render() {
  const v = local.video || {};
  const a = local.audio || {};
  $("local-stats").textContent =
    `sending ${v.frameWidth || 0}x${v.frameHeight || 0} ${(v.framesPerSecond || 0).toFixed(0)} fps ` +
    `${fmtRate(v.bitrate)}, audio ${fmtRate(a.bitrate)}\nRTT ${fmtRtt()}, estimate ${fmtRate(availableOutgoingBitrate)}, ` +
    `media ${local.connection}`;
  for (const remote of remotes.values()) {
    const v = remote.videoStats;
    const a = remote.audioStats;
    const lines = [];
    if (v.ssrc !== undefined) {
      lines.push(`${v.frameWidth}x${v.frameHeight} ${v.framesPerSecond.toFixed(0)} fps ${fmtRate(v.bitrate)} ` +
        `loss ${v.lossPercent.toFixed(1)} %`);
    }
    if (a.ssrc !== undefined) lines.push(`audio ${fmtRate(a.bitrate)} loss ${a.lossPercent.toFixed(1)} %`);
    lines.push(`RTT ${fmtRtt()}`);
    remote.tile.querySelector(".stats").textContent = v.ssrc === undefined && a.ssrc === undefined
      ? "waiting for media" : lines.join("\n");
  }
}

// --------------------------------------------------------------------------------------
// For tests: everything as plain JSON

window.charterTest = {
  state: () => ({ ...state, errors: [...state.errors], connection: pc ? pc.connectionState : "closed",
    iceConnection: pc ? pc.iceConnectionState : "closed", remoteCount: remotes.size }),
  names: () => Object.fromEntries(names),
  owners: () => Object.fromEntries(owners),
  // Fresh statistics: {local: {video, audio, remoteInbound, rttMs}, remotes: {id: {name, video, audio, ...}}}
  stats: async () => {
    await updateStats();
    const out = {};
    for (const [id, remote] of remotes) {
      out[id] = { name: names.get(id) || id, video: remote.videoStats, audio: remote.audioStats,
        firstFrameAt: remote.firstFrameAt, tracks: remote.stream.getTracks().map((t) => t.kind) };
    }
    return { local, remotes: out, rttMs, now: performance.now() };
  },
};

// --------------------------------------------------------------------------------------

$("conference").value = params.get("conference") || "";
$("name").value = params.get("name") || "";
$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  join($("conference").value.trim(), $("name").value.trim());
});
$("leave").addEventListener("click", leave);
