// callsctl web client: joins a call on a `callsctl serve` SFU.
//
// Signaling is JSON over ws(s)://<same host>/ws?token=JWT (protocol in
// docs/signaling.md); media is one RTCPeerConnection to the SFU. The client
// publishes as Mattermost's own client (calls-common RTCPeer) does: it joins
// muted, its first offer carries only the `calls-dc` data channel, the
// microphone is asked for and added with addTrack on the first unmute
// (renegotiating), and mute/unmute afterwards is sender.replaceTrack(null /
// track). It answers the server's renegotiation offers and is the polite side
// on glare. Read-only state for tests and debugging is `window.callsctl`.
"use strict";

(() => {
  const MEDIA_CONNECT_TIMEOUT_MS = 15000;
  const DC_PING_INTERVAL_MS = 1000;
  const WS_PING_INTERVAL_MS = 20000;
  const REACTION_SHOW_MS = 4000;
  const LOG_LIMIT = 300;
  const END_CONFIRM_MS = 4000;
  const NAME_KEY = "callsctl.name";
  // Tokens minted without a person in mind (the link `callsctl serve` prints).
  const GENERIC_USERS = new Set(["guest", "user", "anonymous"]);
  // Reactions travel as emoji (the protocol's `react {emoji}`), but are drawn
  // as inline SVG: machines without an emoji font show empty boxes otherwise.
  const REACTIONS = [
    {emoji: "👍", icon: "thumbs-up", label: "thumbs up"},
    {emoji: "👏", icon: "sparkle", label: "applause"},
    {emoji: "😂", icon: "laugh", label: "laughing"},
    {emoji: "❤️", icon: "heart", label: "heart"},
    {emoji: "🎉", icon: "burst", label: "celebrate"},
    {emoji: "👋", icon: "wave", label: "wave"},
  ];
  // `user_joined` carries no state: a new session starts unmuted on the server
  // (calls/model.py ParticipantState) until its client says `mute`.
  const DEFAULT_REMOTE_MUTED = false;
  // What the SFU sends: a publisher's mic and camera carry the msid stream id
  // <session_id>; its screen share (and screen audio) "screen-<session_id>".
  const SCREEN_STREAM_PREFIX = "screen-";
  const CAMERA_CONSTRAINTS = {width: {ideal: 640}, height: {ideal: 360}, frameRate: {ideal: 15}};
  const CAMERA_MAX_BITRATE = 800000;
  // One encoding, as the Mattermost client sends a screen without simulcast:
  // about 1 Mbps at 10 fps.
  const SCREEN_CONSTRAINTS = {video: {frameRate: {ideal: 10, max: 15}}, audio: false};
  const SCREEN_MAX_BITRATE = 1000000;
  const SCREEN_MAX_FPS = 10;
  // The server answers screen_on with user_screen_on (to everyone, us included)
  // or an error; without an answer in this time we share anyway.
  const SCREEN_ACK_TIMEOUT_MS = 5000;
  const SCREEN_ERRORS = new Set(["screen_share_taken", "screen_sharing_disabled"]);
  // Grid: the smallest tile worth showing before the rest go to another page.
  const MIN_TILE_WIDTH = 180;
  const MIN_TILE_WIDTH_NARROW = 150;
  const NARROW_WIDTH = 700; // below this the stage stacks (screen above a camera strip)
  const TILE_GAP = 8;
  // Tile shapes: between 4:3 and 16:9 on a landscape stage; down to 3:4 on a
  // portrait one (phones), where wide tiles would leave most of it empty.
  const MIN_ASPECT_LANDSCAPE = 4 / 3;
  const MIN_ASPECT_PORTRAIT = 3 / 4;
  const MAX_ASPECT = 16 / 9;
  const PAGER_SPACE = 44; // room below the tiles for the page buttons
  const SIDE_OPEN_MIN_WIDTH = 1000; // the participant list starts open on wide windows

  // ---------------------------------------------------------------- icons (24x24, stroked)
  // Drawn for this client; `fill: true` icons are filled shapes.
  const ICONS = {
    "mic": ["M12 3a3 3 0 0 0-3 3v6a3 3 0 0 0 6 0V6a3 3 0 0 0-3-3z", "M5 11a7 7 0 0 0 14 0",
      "M12 18v3", "M8.5 21h7"],
    "mic-off": ["M12 3a3 3 0 0 0-3 3v6a3 3 0 0 0 6 0V6a3 3 0 0 0-3-3z", "M5 11a7 7 0 0 0 14 0",
      "M12 18v3", "M8.5 21h7", "M3.5 3.5l17 17"],
    "camera": ["M3 7.5A1.5 1.5 0 0 1 4.5 6h9A1.5 1.5 0 0 1 15 7.5v9a1.5 1.5 0 0 1-1.5 1.5h-9A1.5 1.5 0 0 1 3 16.5z",
      "M15 10.5l6-3.5v10l-6-3.5"],
    "camera-off": ["M3 7.5A1.5 1.5 0 0 1 4.5 6h9A1.5 1.5 0 0 1 15 7.5v9a1.5 1.5 0 0 1-1.5 1.5h-9A1.5 1.5 0 0 1 3 16.5z",
      "M15 10.5l6-3.5v10l-6-3.5", "M2.5 3.5l17 17"],
    "screen": ["M3 5a1 1 0 0 1 1-1h16a1 1 0 0 1 1 1v10a1 1 0 0 1-1 1H4a1 1 0 0 1-1-1z",
      "M8.5 20h7", "M12 16v4", "M9 10l3-3 3 3", "M12 7v6"],
    "screen-off": ["M3 5a1 1 0 0 1 1-1h16a1 1 0 0 1 1 1v10a1 1 0 0 1-1 1H4a1 1 0 0 1-1-1z",
      "M8.5 20h7", "M12 16v4", "M9.5 7.5l5 5", "M14.5 7.5l-5 5"],
    "hand": ["M8 13V6.5a1.5 1.5 0 0 1 3 0V12", "M11 11.5V4.5a1.5 1.5 0 0 1 3 0v7",
      "M14 11.5V6a1.5 1.5 0 0 1 3 0v6.5",
      "M17 12V9.5a1.5 1.5 0 0 1 3 0v4.5a7 7 0 0 1-7 7h-1.2a6 6 0 0 1-4.8-2.4l-3.2-4.3a1.6 1.6 0 0 1 2.5-2L8 14.5"],
    "smile": ["M12 3a9 9 0 1 0 0 18 9 9 0 1 0 0-18z", "M8 14a4.5 4.5 0 0 0 8 0",
      "M9 9.5h.01", "M15 9.5h.01"],
    "users": ["M9 11a3.5 3.5 0 1 0 0-7 3.5 3.5 0 0 0 0 7z", "M2.5 20a6.5 6.5 0 0 1 13 0",
      "M16 4.3a3.5 3.5 0 0 1 0 6.4", "M18 14.2A6.5 6.5 0 0 1 21.5 20"],
    "sliders": ["M4 6h9", "M17 6h3", "M15 4v4", "M4 12h3", "M11 12h9", "M9 10v4", "M4 18h11",
      "M19 18h1", "M17 16v4"],
    "leave": ["M14 4h4a2 2 0 0 1 2 2v12a2 2 0 0 1-2 2h-4", "M10 16l-4-4 4-4", "M6 12h10"],
    "end": {fill: true, d: ["M2.6 13.4c5.2-4.6 13.6-4.6 18.8 0 .5.5.5 1.3 0 1.8l-1.9 1.9a1.3 1.3 0 0 1-1.7.1l-2.4-1.8a1.3 1.3 0 0 1-.5-1v-1.6a11 11 0 0 0-5.8 0v1.6c0 .4-.2.8-.5 1l-2.4 1.8a1.3 1.3 0 0 1-1.7-.1l-1.9-1.9a1.3 1.3 0 0 1 0-1.8z"]},
    "link": ["M10 14a4 4 0 0 0 5.7 0l3-3a4 4 0 0 0-5.7-5.7l-1 1",
      "M14 10a4 4 0 0 0-5.7 0l-3 3a4 4 0 0 0 5.7 5.7l1-1"],
    "copy": ["M9 9h10v11H9z", "M5 15V4h10"],
    "more": {width: 3, d: ["M12 5h.01", "M12 12h.01", "M12 19h.01"]},
    "star": ["M12 3.5l2.6 5.3 5.8.8-4.2 4.1 1 5.8-5.2-2.7-5.2 2.7 1-5.8-4.2-4.1 5.8-.8z"],
    "close": ["M6 6l12 12", "M18 6L6 18"],
    "record": {fill: true, d: ["M12 5.5a6.5 6.5 0 1 0 0 13 6.5 6.5 0 1 0 0-13z"]},
    "record-stop": {fill: true, d: ["M7 7h10v10H7z"]},
    "remove": ["M10 11a4 4 0 1 0 0-8 4 4 0 0 0 0 8z", "M3 21a7 7 0 0 1 12.5-4.3",
      "M16 16l5 5", "M21 16l-5 5"],
    "chevron-left": ["M15 5l-7 7 7 7"],
    "chevron-right": ["M9 5l7 7-7 7"],
    "speaker": ["M4 9h4l5-4v14l-5-4H4z", "M16.5 9a4 4 0 0 1 0 6", "M19 6a8 8 0 0 1 0 12"],
    "thumbs-up": ["M7 11v9H4v-9z",
      "M7 11l3.6-6.6A1.8 1.8 0 0 1 14 5.6L13.4 10H19a2 2 0 0 1 2 2.3l-1.1 6A2 2 0 0 1 17.9 20H7"],
    "sparkle": {fill: true, d: ["M12 2.5l2.2 7.3 7.3 2.2-7.3 2.2-2.2 7.3-2.2-7.3-7.3-2.2 7.3-2.2z"]},
    "laugh": ["M12 3a9 9 0 1 0 0 18 9 9 0 1 0 0-18z", "M7.5 13h9a4.5 4.5 0 0 1-9 0z",
      "M7.5 9l2 1", "M16.5 9l-2 1"],
    "heart": {fill: true, d: ["M12 20.5S3.5 15.4 3.5 9.4A4.4 4.4 0 0 1 12 7.2a4.4 4.4 0 0 1 8.5 2.2c0 6-8.5 11.1-8.5 11.1z"]},
    "burst": ["M12 2.5v4", "M12 17.5v4", "M2.5 12h4", "M17.5 12h4", "M5.3 5.3l2.8 2.8",
      "M15.9 15.9l2.8 2.8", "M5.3 18.7l2.8-2.8", "M15.9 8.1l2.8-2.8", "M12 10.5v3", "M10.5 12h3"],
    "wave": ["M8 13V6.5a1.5 1.5 0 0 1 3 0V12", "M11 11.5V4.5a1.5 1.5 0 0 1 3 0v7",
      "M14 11.5V6a1.5 1.5 0 0 1 3 0v6.5",
      "M17 12V9.5a1.5 1.5 0 0 1 3 0v4.5a7 7 0 0 1-7 7h-1.2a6 6 0 0 1-4.8-2.4l-3.2-4.3a1.6 1.6 0 0 1 2.5-2L8 14.5",
      "M3 7.5a5 5 0 0 1 2-3.5", "M20.5 3.5a4 4 0 0 1 1 2.5"],
  };
  const SVG_NS = "http://www.w3.org/2000/svg";

  function icon(name, extraClass) {
    const spec = ICONS[name] || ICONS.close;
    const paths = Array.isArray(spec) ? spec : spec.d;
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    svg.setAttribute("class", `ic ic-${name}${extraClass ? ` ${extraClass}` : ""}`);
    const filled = !Array.isArray(spec) && spec.fill;
    svg.setAttribute("fill", filled ? "currentColor" : "none");
    svg.setAttribute("stroke", filled ? "none" : "currentColor");
    svg.setAttribute("stroke-width", String(!Array.isArray(spec) && spec.width ? spec.width : 2));
    svg.setAttribute("stroke-linecap", "round");
    svg.setAttribute("stroke-linejoin", "round");
    for (const d of paths) {
      const path = document.createElementNS(SVG_NS, "path");
      path.setAttribute("d", d);
      svg.append(path);
    }
    return svg;
  }

  // A control button's face: its icon, and a label (hidden on narrow screens).
  function setButton(button, iconName, label) {
    if (button.dataset.face === `${iconName}|${label}`) return;
    button.dataset.face = `${iconName}|${label}`;
    button.replaceChildren(icon(iconName), el("span", {"class": "label", text: label}));
    button.setAttribute("aria-label", label);
  }

  const $ = (selector) => document.querySelector(selector);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-") || key.startsWith("aria-") || key === "title" ||
               key === "role") node.setAttribute(key, String(value));
      else node[key] = value;
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // ---------------------------------------------------------------- state
  const S = {
    state: "idle", // idle | ready | connecting | joining | joined | left | ended | removed | closed | error
    token: null,
    claims: null,
    call: null,
    user: null,
    name: null,
    sessionId: null,
    host: null,
    recording: false, // a recording job is in the call (call_recording, joined.recording)
    participants: new Map(), // session_id -> participant
    names: new Map(), // session_id -> display name, kept after they leave (for notices)
    remoteTracks: new Map(), // track id -> {sessionId, kind, source, streamId, mid}
    remoteTrackObjs: new Map(), // track id -> MediaStreamTrack
    mediaElements: new Map(), // "audio:<track id>" -> <audio> element
    tiles: new Map(), // session id -> {node, box, video, trackId, ...}: one per participant
    screenView: null, // {sessionId, trackId, video, self} while a screen is shown
    page: 0,
    pages: 1,
    perPage: 0,
    promoted: new Map(), // session id -> when it spoke while off the first page
    ws: null,
    pc: null,
    dc: null,
    micStream: null,
    micTrack: null, // acquired on the first unmute, kept while muted
    micSender: null,
    micBusy: false,
    muted: true, // everyone joins muted, as in Mattermost
    hand: false,
    camTrack: null, // local camera track while the camera is on
    camTransceiver: null, // kept after the camera stops: turning it on again is replaceTrack
    cameraBusy: false,
    micDeviceId: "",
    camDeviceId: "",
    speakerId: "",
    screenStream: null, // local screen share (getDisplayMedia) while sharing or asking to
    screenTransceiver: null, // reused by the next share
    // The stream (msid) the screen is sent in, its id announced in screen_on: its
    // own, never the mic/camera one, and kept as long as the transceiver. (With
    // sender.setStreams() on a reused transceiver, Chromium 156 offered the new
    // stream id once and then, on its next negotiationneeded, the old one again.)
    screenMsid: null,
    screenPending: null, // {streamId, resolve, reject} while waiting for the server's verdict
    screenBusy: false,
    invite: null, // the last invite_created
    signaling: "idle",
    media: "new",
    rtt: null,
    error: null,
    gotServerError: false,
    localDescSent: false,
    pendingLocalCandidates: [],
    pendingRemoteCandidates: [],
    timers: {wsPing: null, dcPing: null, mediaTimeout: null},
    dcPingTimes: [],
    log: [],
  };

  let chain = Promise.resolve();

  // ---------------------------------------------------------------- logging / banners
  function log(...parts) {
    const text = parts.map((p) => (typeof p === "string" ? p : safeJson(p))).join(" ");
    const line = `${new Date().toISOString().slice(11, 23)} ${text}`;
    S.log.push(line);
    if (S.log.length > LOG_LIMIT) S.log.splice(0, S.log.length - LOG_LIMIT);
    console.log("[callsctl]", text);
    const pre = $("#log");
    if (pre) pre.textContent = S.log.join("\n");
  }

  function safeJson(value) {
    try {
      return JSON.stringify(value);
    } catch (_err) {
      return String(value);
    }
  }

  function showError(message, code) {
    S.error = {code: code || "error", message};
    log(`error [${S.error.code}]: ${message}`);
    $("#error-text").textContent = message;
    $("#error").dataset.code = S.error.code;
    $("#error").hidden = false;
  }

  function clearError(code) {
    if (code && (!S.error || S.error.code !== code)) return;
    S.error = null;
    $("#error").hidden = true;
    $("#error-text").textContent = "";
    delete $("#error").dataset.code;
  }

  let noticeTimer = null;
  function showNotice(message, ms) {
    log(`notice: ${message}`);
    const box = $("#notice");
    box.textContent = message;
    box.hidden = false;
    clearTimeout(noticeTimer);
    if (ms) noticeTimer = setTimeout(() => { box.hidden = true; }, ms);
  }

  function describeError(err) {
    if (!err) return "unknown error";
    return err.name && err.message ? `${err.name}: ${err.message}` : String(err.message || err);
  }

  // ---------------------------------------------------------------- token
  function decodeJwtPayload(token) {
    const parts = token.split(".");
    if (parts.length !== 3) throw new Error("not a JWT (expected three dot-separated parts)");
    let b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    if (!claims || typeof claims !== "object") throw new Error("payload is not an object");
    return claims;
  }

  // ---------------------------------------------------------------- rendering: page state
  function setState(state) {
    S.state = state;
    document.body.dataset.state = state;
    const inCall = state === "connecting" || state === "joining" || state === "joined";
    $("#lobby").hidden = state !== "ready";
    $("#call").hidden = !inCall;
    const over = state === "left" || state === "ended" || state === "removed" || state === "closed";
    // After a failed join with a usable token, offer to try again.
    $("#ended").hidden = !(over || (state === "error" && S.call && S.token));
    if (state === "error") $("#ended-text").textContent = "Not connected.";
    if (inCall) layoutSoon();
    renderStatus();
  }

  function setSignaling(value) {
    S.signaling = value;
    renderStatus();
  }

  function setMediaState(value) {
    S.media = value;
    renderStatus();
  }

  function renderStatus() {
    const sig = $("#signaling-state");
    sig.textContent = S.signaling;
    sig.dataset.state = S.signaling;
    const media = $("#media-state");
    media.textContent = S.media === "new" && !S.pc ? "not started" : S.media;
    media.dataset.state = S.media;
    $("#rtt").textContent = S.rtt === null ? "–" : `${Math.round(S.rtt)} ms`;
    $("#call-id").textContent = S.call ? S.call : "";
  }

  function displayName(p) {
    return p.name || p.user || p.session_id;
  }

  // "Ada Lovelace" -> "AL", "Guest 07" -> "G7", "bob" -> "BO".
  function initials(name) {
    const words = String(name).trim().split(/[\s._-]+/).filter(Boolean);
    const alpha = words.filter((w) => /^\p{L}/u.test(w));
    if (alpha.length > 1) return (alpha[0][0] + alpha[alpha.length - 1][0]).toUpperCase();
    const number = words.find((w) => /^\d+$/.test(w));
    if (alpha.length === 1 && number) return `${alpha[0][0]}${String(Number(number)).slice(-2)}`.toUpperCase();
    return (alpha[0] || words[0] || "?").slice(0, 2).toUpperCase();
  }

  // A stable colour per session for avatars.
  function hue(sid) {
    let h = 0;
    for (const ch of String(sid)) h = (h * 31 + ch.charCodeAt(0)) % 360;
    return h;
  }

  function participantSnapshot(p) {
    const trackIds = [];
    const streamIds = new Set();
    for (const [trackId, info] of S.remoteTracks) {
      if (info.sessionId === p.session_id) {
        trackIds.push(trackId);
        streamIds.add(info.streamId);
      }
    }
    return {
      session_id: p.session_id,
      user: p.user,
      name: p.name,
      muted: p.muted,
      voice: p.voice,
      hand: p.hand,
      screen: p.screen,
      video: p.video,
      host: p.session_id === S.host,
      self: p.session_id === S.sessionId,
      reaction: p.reaction || null,
      trackIds,
      streamIds: [...streamIds],
    };
  }

  function iAmHost() {
    return !!S.sessionId && S.host === S.sessionId;
  }

  // Self first, then whoever spoke while off the first page (most recent first),
  // then join order.
  function orderedParticipants() {
    return [...S.participants.values()].sort((a, b) => {
      const selfRank = (p) => (p.session_id === S.sessionId ? 0 : 1);
      const promoted = (p) => S.promoted.get(p.session_id) || 0;
      return selfRank(a) - selfRank(b) || promoted(b) - promoted(a) || a.order - b.order;
    });
  }

  // ---------------------------------------------------------------- rendering: participant list
  function stateIcons(p, cls) {
    const out = [];
    if (p.muted) out.push(el("span", {"class": `${cls} muted`, "title": "muted", "aria-label": "muted"}, icon("mic-off")));
    if (p.voice) out.push(el("span", {"class": `${cls} speaking`, "title": "speaking", "aria-label": "speaking"}, icon("speaker")));
    if (p.hand) out.push(el("span", {"class": `${cls} hand`, "title": "hand raised", "aria-label": "hand raised"}, icon("hand")));
    if (p.screen) out.push(el("span", {"class": `${cls} screen`, "title": "sharing screen", "aria-label": "sharing screen"}, icon("screen")));
    if (p.video) out.push(el("span", {"class": `${cls} video`, "title": "camera on", "aria-label": "camera on"}, icon("camera")));
    return out;
  }

  function reactionIcon(emoji) {
    const r = REACTIONS.find((x) => x.emoji === emoji);
    return r ? icon(r.icon, `reaction-${r.icon}`) : el("span", {text: emoji});
  }

  // Recording: the indicator for everyone, the start/stop button for the host.
  function renderRecording() {
    $("#recording").hidden = !S.recording;
    const button = $("#record");
    button.hidden = !iAmHost();
    setButton(button, S.recording ? "record-stop" : "record", S.recording ? "Stop recording" : "Record");
    button.setAttribute("aria-pressed", String(S.recording));
  }

  function renderParticipants() {
    renderRecording();
    const list = $("#participants");
    const items = [];
    const ordered = orderedParticipants();
    const host = iAmHost();
    for (const p of ordered) {
      const isSelf = p.session_id === S.sessionId;
      const isHost = p.session_id === S.host;
      const name = displayName(p);
      const li = el("li", {
        "class": "participant",
        "data-session-id": p.session_id,
        "data-user": p.user || "",
        "data-muted": String(!!p.muted),
        "data-speaking": String(!!p.voice),
        "data-hand": String(!!p.hand),
        "data-video": String(!!p.video),
        "data-screen": String(!!p.screen),
        "data-host": String(isHost),
        "data-self": String(isSelf),
      },
      el("span", {"class": initials(name).length > 2 ? "avatar long" : "avatar",
        "style": `--hue: ${hue(p.session_id)}`, "aria-hidden": "true", text: initials(name)}),
      el("span", {"class": "who"},
        el("span", {"class": "name", "text": name}),
        isSelf ? el("span", {"class": "you", "text": "(you)"}) : null,
        isHost ? el("span", {"class": "badge host", "title": "host"}, icon("star"), "host") : null),
      el("span", {"class": "states"}, ...stateIcons(p, "state"),
        p.reaction ? el("span", {"class": "reaction"}, reactionIcon(p.reaction)) : null),
      host && !isSelf ? el("button", {type: "button", "class": "icon more",
        "aria-label": `host controls for ${name}`, "title": "host controls",
        "data-target": p.session_id, "aria-haspopup": "menu"}, icon("more")) : null);
      items.push(li);
    }
    list.replaceChildren(...items);
    $("#participant-count").textContent = String(S.participants.size);
    $("#host-tools").hidden = !host;
    $("#end-call").hidden = !host;
    setButton($("#participants-toggle"), "users", `People ${S.participants.size}`);
    renderTiles(ordered);
    renderScreenView();
    layoutTiles();
  }

  // ---------------------------------------------------------------- rendering: tiles
  function remoteTrackFor(sid, source) {
    let found = null; // the newest live one: a retired transceiver's track may linger
    for (const [trackId, info] of S.remoteTracks) {
      if (info.sessionId !== sid || info.source !== source) continue;
      const track = S.remoteTrackObjs.get(trackId);
      if (track && track.readyState !== "ended") found = track;
    }
    return found;
  }

  function videoFor(track, sid, isSelf) {
    const video = el("video", {autoplay: true, muted: true, playsInline: true,
      "data-session-id": sid, "data-track-id": track.id, "data-self": String(isSelf)});
    // Only the video track: the audio plays through its own <audio> element.
    video.srcObject = new MediaStream([track]);
    playElement(video);
    return video;
  }

  // One tile per participant: the camera when it is on, otherwise an avatar;
  // the name, mute and hand state on it; the speaker highlighted. Tiles are
  // appended once and never moved (moving a playing <video> pauses it): order
  // and paging are CSS (`order`, a hidden class).
  function renderTiles(ordered) {
    const box = $("#videos");
    const seen = new Set();
    ordered.forEach((p, index) => {
      const sid = p.session_id;
      seen.add(sid);
      const isSelf = sid === S.sessionId;
      let tile = S.tiles.get(sid);
      if (!tile) {
        const avatar = el("span", {"class": "avatar", "aria-hidden": "true"});
        const name = el("span", {"class": "name"});
        const icons = el("span", {"class": "tile-icons"});
        const reaction = el("span", {"class": "tile-reaction", "aria-hidden": "true"});
        const media = el("div", {"class": "tile-media"}, avatar);
        const more = el("button", {type: "button", "class": "icon tile-more", "data-target": sid,
          "aria-haspopup": "menu", "title": "host controls"}, icon("more"));
        const node = el("figure", {"class": "tile", "data-session-id": sid,
          "data-self": String(isSelf)}, media, reaction, more,
        el("figcaption", {"class": "tile-label"}, icons, name));
        box.append(node);
        tile = {node, media, avatar, name, icons, reaction, more, video: null, trackId: null};
        S.tiles.set(sid, tile);
      }
      const label = displayName(p);
      tile.name.textContent = isSelf ? `${label} (you)` : label;
      tile.more.hidden = isSelf || !iAmHost();
      tile.more.setAttribute("aria-label", `host controls for ${label}`);
      tile.avatar.textContent = initials(label);
      tile.avatar.style.setProperty("--hue", String(hue(sid)));
      const host = sid === S.host;
      tile.icons.replaceChildren(...(host ? [el("span", {"class": "tile-state host", "title": "host"}, icon("star"))] : []),
        ...stateIcons({...p, voice: false, video: false}, "tile-state"));
      tile.reaction.replaceChildren(...(p.reaction ? [reactionIcon(p.reaction)] : []));
      const d = tile.node.dataset;
      d.muted = String(!!p.muted);
      d.speaking = String(!!p.voice);
      d.hand = String(!!p.hand);
      d.host = String(host);
      d.screen = String(!!p.screen);
      d.index = String(index);
      tile.node.style.order = String(index);
      const track = p.video ? (isSelf ? S.camTrack : remoteTrackFor(sid, "camera")) : null;
      d.video = String(!!track);
      if (track && tile.trackId !== track.id) {
        if (tile.video) {
          tile.video.srcObject = null;
          tile.video.remove();
        }
        tile.video = videoFor(track, sid, isSelf);
        tile.media.append(tile.video);
        tile.trackId = track.id;
      } else if (!track && tile.video) {
        tile.video.srcObject = null;
        tile.video.remove();
        tile.video = null;
        tile.trackId = null;
      }
    });
    for (const [sid, tile] of [...S.tiles]) {
      if (seen.has(sid)) continue;
      if (tile.video) tile.video.srcObject = null;
      tile.node.remove();
      S.tiles.delete(sid);
    }
  }

  // The largest tiles for k of them in W x H: each column count is tried, and
  // the tile's shape follows its cell within the allowed aspect ratios (videos
  // are cropped to fit), so a few tiles fill the stage on any screen.
  function bestFit(k, width, height) {
    const minAspect = height > width ? MIN_ASPECT_PORTRAIT : MIN_ASPECT_LANDSCAPE;
    let best = {w: 0, h: 0, cols: 1};
    for (let cols = 1; cols <= k; cols++) {
      const rows = Math.ceil(k / cols);
      const cellW = (width - TILE_GAP * (cols - 1)) / cols;
      const cellH = (height - TILE_GAP * (rows - 1)) / rows;
      if (cellW <= 0 || cellH <= 0) continue;
      const aspect = Math.min(MAX_ASPECT, Math.max(minAspect, cellW / cellH));
      const w = Math.min(cellW, cellH * aspect);
      const h = w / aspect;
      if (w * h > best.w * best.h) best = {w, h, cols};
    }
    return best;
  }

  let layoutPending = false;
  function layoutSoon() {
    if (layoutPending) return;
    layoutPending = true;
    requestAnimationFrame(() => {
      layoutPending = false;
      layoutTiles();
    });
  }

  // Grid: tiles as large as the stage allows, in pages when they would get
  // smaller than MIN_TILE_WIDTH. Screen share: the screen large, every tile in
  // a scrolling strip beside it (below it on narrow screens).
  function layoutTiles() {
    const stage = $("#stage");
    const box = $("#videos");
    if (!stage || $("#call").hidden) return;
    const narrow = stage.clientWidth < NARROW_WIDTH;
    stage.dataset.narrow = String(narrow);
    const sharing = !$("#screen-view").hidden;
    stage.dataset.layout = sharing ? "screen" : "grid";
    const tiles = [...S.tiles.values()].sort((a, b) => Number(a.node.dataset.index) - Number(b.node.dataset.index));
    const n = tiles.length;
    if (sharing || n === 0) {
      for (const tile of tiles) tile.node.classList.remove("off-page");
      box.style.removeProperty("--tile-w");
      box.style.removeProperty("--tile-h");
      stage.dataset.paged = "false";
      $("#pager").hidden = true;
      S.pages = 1;
      S.page = 0;
      S.perPage = n;
      return;
    }
    const width = box.clientWidth;
    const fullHeight = box.clientHeight; // padding included: the pager's strip when paged
    if (!width || !fullHeight) return;
    const minW = Math.min(narrow ? MIN_TILE_WIDTH_NARROW : MIN_TILE_WIDTH, width);
    const fits = (k, height) => bestFit(k, width, height).w >= minW;
    // Pages only when they are needed; then the page buttons take a strip below.
    let height = fullHeight;
    let perPage = n;
    if (!fits(n, height)) {
      height = fullHeight - PAGER_SPACE;
      while (perPage > 1 && !fits(perPage, height)) perPage -= 1;
    }
    S.perPage = perPage;
    S.pages = Math.max(1, Math.ceil(n / perPage));
    S.page = Math.min(S.page, S.pages - 1);
    const start = S.page * perPage;
    // Every page uses the first page's tile size, so tiles do not jump between pages.
    const fit = bestFit(perPage, width, height);
    box.style.setProperty("--tile-w", `${Math.floor(fit.w) - 1}px`);
    box.style.setProperty("--tile-h", `${Math.floor(fit.h) - 1}px`);
    stage.dataset.paged = String(S.pages > 1);
    tiles.forEach((tile, i) => tile.node.classList.toggle("off-page", i < start || i >= start + perPage));
    $("#pager").hidden = S.pages <= 1;
    $("#page-label").textContent = `${S.page + 1} / ${S.pages}`;
    $("#page-prev").disabled = S.page === 0;
    $("#page-next").disabled = S.page >= S.pages - 1;
  }

  function turnPage(delta) {
    S.page = Math.max(0, Math.min(S.pages - 1, S.page + delta));
    layoutTiles();
  }

  function screenSharer() {
    for (const p of S.participants.values()) {
      if (p.screen) return p;
    }
    return null;
  }

  // The shared screen, large: someone else's as it arrives, our own as a
  // preview of what the others see.
  function renderScreenView() {
    const view = $("#screen-view");
    const sharer = screenSharer();
    const isSelf = !!sharer && sharer.session_id === S.sessionId;
    let track = null;
    if (sharer && !isSelf) track = remoteTrackFor(sharer.session_id, "screen");
    if (isSelf && S.screenStream) track = S.screenStream.getVideoTracks()[0] || null;
    const shown = S.screenView;
    if (shown && (!track || shown.trackId !== track.id)) {
      shown.video.srcObject = null;
      shown.video.remove();
      S.screenView = null;
    }
    if (track && !S.screenView) {
      const video = videoFor(track, sharer.session_id, isSelf);
      view.append(video);
      S.screenView = {sessionId: sharer.session_id, trackId: track.id, video, self: isSelf};
    }
    view.hidden = !sharer;
    view.dataset.sessionId = sharer ? sharer.session_id : "";
    view.dataset.self = String(isSelf);
    let label = "";
    if (isSelf) label = "You are sharing your screen: this is what the others see.";
    else if (sharer) label = `${displayName(sharer)} is sharing their screen${track ? "" : " (connecting…)"}.`;
    $("#screen-label").textContent = label;
  }

  function renderControls() {
    const ready = !!S.pc && S.state === "joined";
    const mute = $("#mute");
    setButton(mute, S.muted ? "mic-off" : "mic", S.muted ? "Unmute" : "Mute");
    mute.title = S.muted ? "Unmute (M)" : "Mute (M)";
    mute.setAttribute("aria-pressed", String(S.muted));
    mute.dataset.muted = String(S.muted);
    mute.disabled = S.micBusy;
    const hand = $("#hand");
    setButton(hand, "hand", S.hand ? "Lower hand" : "Raise hand");
    hand.title = S.hand ? "Lower hand (H)" : "Raise hand (H)";
    hand.setAttribute("aria-pressed", String(S.hand));
    hand.dataset.hand = String(S.hand);
    const camera = $("#camera");
    const cameraOn = !!S.camTrack;
    setButton(camera, cameraOn ? "camera" : "camera-off", cameraOn ? "Stop camera" : "Camera");
    camera.setAttribute("aria-pressed", String(cameraOn));
    camera.disabled = !ready || S.cameraBusy;
    const screen = $("#screen");
    const sharing = !!S.screenStream;
    setButton(screen, sharing ? "screen-off" : "screen", sharing ? "Stop sharing" : "Share screen");
    screen.setAttribute("aria-pressed", String(sharing));
    screen.disabled = !ready || S.screenBusy;
    screen.hidden = !navigator.mediaDevices.getDisplayMedia; // phones cannot share a screen
    setButton($("#react"), "smile", "React");
    setButton($("#settings"), "sliders", "Devices");
    setButton($("#leave"), "leave", "Leave");
    if (!endConfirm) setButton($("#end-call"), "end", "End call");
    $("#participants-toggle").setAttribute("aria-pressed", String(!$("#side").hidden));
    if (!$("#participants-toggle").dataset.face) setButton($("#participants-toggle"), "users", "People");
  }

  // ---------------------------------------------------------------- participants
  let joinOrder = 0;
  function upsertParticipant(info) {
    const sid = info.session_id;
    if (!sid) return null;
    let p = S.participants.get(sid);
    if (!p) {
      p = {session_id: sid, user: "", name: "", muted: DEFAULT_REMOTE_MUTED, voice: false,
        hand: false, screen: false, video: false, reaction: null, order: joinOrder++};
      S.participants.set(sid, p);
    }
    for (const key of ["user", "name", "muted", "voice", "hand", "screen", "video"]) {
      if (info[key] !== undefined && info[key] !== null) p[key] = info[key];
    }
    S.names.set(sid, displayName(p));
    return p;
  }

  function updateParticipant(sid, fields) {
    const p = S.participants.get(sid);
    if (!p) {
      log(`event for unknown session ${sid}`, fields);
      return;
    }
    const isSelf = sid === S.sessionId;
    for (const [key, value] of Object.entries(fields)) {
      if (isSelf) {
        // Our own state is decided here and the server echoes it, except when
        // someone else changed it (a host or an admin lowered our hand or muted us).
        if (key === "hand" && !value && S.hand) {
          S.hand = false;
          renderControls();
        } else if (key === "muted" && value && !S.muted) {
          mute(false);
        }
        if (key === "muted" || key === "hand" || key === "video" || key === "screen") continue;
      }
      p[key] = value;
    }
    if (fields.voice && !isSelf) promoteIfOffPage(sid);
    renderParticipants();
  }

  // A speaker on another page comes to the first one (without reshuffling the rest).
  function promoteIfOffPage(sid) {
    const tile = S.tiles.get(sid);
    if (!tile || !tile.node.classList.contains("off-page") || S.page !== 0) return;
    S.promoted.set(sid, performance.now());
  }

  const reactionTimers = new Map();
  function showReaction(sid, emoji) {
    const p = S.participants.get(sid);
    const who = p ? displayName(p) : sid;
    if (p) {
      p.reaction = emoji;
      clearTimeout(reactionTimers.get(sid));
      reactionTimers.set(sid, setTimeout(() => {
        const current = S.participants.get(sid);
        if (current && current.reaction === emoji) {
          current.reaction = null;
          renderParticipants();
        }
      }, REACTION_SHOW_MS));
      renderParticipants();
    }
    const bubble = el("div", {"class": "reaction-bubble", "data-session-id": sid, "data-emoji": emoji},
      el("span", {"class": "emoji"}, reactionIcon(emoji)), el("span", {"class": "who", "text": who}));
    $("#reactions").append(bubble);
    setTimeout(() => bubble.remove(), REACTION_SHOW_MS);
  }

  // ---------------------------------------------------------------- signaling
  function send(message) {
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN) {
      log("not sent (signaling closed):", message.type);
      return false;
    }
    S.ws.send(JSON.stringify(message));
    if (message.type !== "ping" && !(message.type === "signal" && message.data.type === "candidate")) {
      log("→", message.type === "signal" ? `signal ${message.data.type}` : message.type);
    }
    return true;
  }

  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws?token=${encodeURIComponent(S.token)}`;
  }

  function connect() {
    S.name = ($("#name").value || "").trim() || S.user;
    try {
      if (S.name && S.name !== S.user) localStorage.setItem(NAME_KEY, S.name);
    } catch (_err) { /* storage disabled */ }
    clearError();
    S.gotServerError = false;
    setState("connecting");
    setSignaling("connecting");
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (err) {
      showError(`Cannot open the signaling connection: ${describeError(err)}`, "ws_failed");
      setState("error");
      return;
    }
    S.ws = ws;
    ws.onopen = () => {
      setSignaling("open");
      setState("joining");
      send({type: "join", call: S.call, name: S.name});
      S.timers.wsPing = setInterval(() => send({type: "ping"}), WS_PING_INTERVAL_MS);
    };
    ws.onmessage = (event) => {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch (_err) {
        log("ignoring non-JSON frame");
        return;
      }
      try {
        handleMessage(msg);
      } catch (err) {
        log("handler failed:", describeError(err));
      }
    };
    ws.onerror = () => log("websocket error");
    ws.onclose = (event) => onWsClose(ws, event);
  }

  function onWsClose(ws, event) {
    if (ws !== S.ws) return;
    log(`websocket closed code=${event.code} reason=${event.reason || ""}`);
    setSignaling(`closed (${event.code})`);
    const state = S.state;
    if (state === "left" || state === "ended" || state === "removed" || state === "closed") return;
    const wasJoined = state === "joined";
    teardown(wasJoined ? "closed" : "error");
    if (wasJoined) {
      showError(`Lost the connection to the server (code ${event.code}${
        event.reason ? `: ${event.reason}` : ""}). Media stopped.`, "ws_closed");
      $("#ended-text").textContent = "Disconnected from the server.";
    } else if (!S.gotServerError) {
      diagnoseRefusal(event);
    }
  }

  // The browser hides why a WebSocket handshake was refused; a plain GET of the
  // same URL shows the server's reason (e.g. an invalid or expired token).
  async function diagnoseRefusal(event) {
    let detail = event.reason || "";
    try {
      const ctl = new AbortController();
      const timer = setTimeout(() => ctl.abort(), 5000);
      const resp = await fetch(`/ws?token=${encodeURIComponent(S.token)}`,
        {signal: ctl.signal, cache: "no-store"});
      clearTimeout(timer);
      if (resp.status >= 400) {
        const type = resp.headers.get("content-type") || "";
        let body = type.includes("html") ? "" : (await resp.text()).trim().slice(0, 300);
        try {
          const parsed = JSON.parse(body);
          body = parsed.message || parsed.error || parsed.reason || body;
        } catch (_err) { /* plain text */ }
        detail = `HTTP ${resp.status}${body ? `: ${body}` : ""}`;
        if (resp.status === 401 || resp.status === 403) {
          showError(`The server refused this join link: ${body || resp.statusText}`, "unauthorized");
          return;
        }
      }
    } catch (err) {
      detail = detail || describeError(err);
    }
    showError(`Could not connect to the signaling server (WebSocket closed, code ${event.code}${
      detail ? `; ${detail}` : ""}).`, "ws_failed");
  }

  const HOST_DONE = {
    mute: (n) => `${n} is muted.`,
    mute_others: () => "Everyone else is muted.",
    stop_screen: (n) => `${n}'s screen share is stopped.`,
    lower_hand: (n) => `${n}'s hand is lowered.`,
    remove: (n) => `${n} was removed from the call.`,
    make_host: (n) => `${n} is the host now.`,
  };

  // Who did something to us: the call's host, or an operator through the admin API.
  function actor(msg) {
    return msg.by === "admin" ? "An administrator" : "The host";
  }

  function handleMessage(msg) {
    const type = msg && msg.type;
    if (type !== "pong" && type !== "signal") {
      log("←", type, type === "joined" || type === "invite_created" ? "" : msg);
    }
    // Add-ons (captions.js) follow the call through this event; they render after the switch.
    setTimeout(() => window.dispatchEvent(new CustomEvent("callsctl:message", {detail: msg})));
    switch (type) {
      case "joined":
        onJoined(msg);
        break;
      case "signal":
        if (msg.data) enqueue(() => handleSignal(msg.data));
        break;
      case "user_joined":
        if (msg.session_id !== S.sessionId) {
          upsertParticipant(msg);
          renderParticipants();
        }
        break;
      case "user_left":
        if (msg.session_id !== S.sessionId) {
          S.participants.delete(msg.session_id);
          S.promoted.delete(msg.session_id);
          removeMediaFor(msg.session_id);
          renderParticipants();
        }
        break;
      case "user_muted": updateParticipant(msg.session_id, {muted: true}); break;
      case "user_unmuted": updateParticipant(msg.session_id, {muted: false}); break;
      case "user_voice_on": updateParticipant(msg.session_id, {voice: true}); break;
      case "user_voice_off": updateParticipant(msg.session_id, {voice: false}); break;
      case "user_raise_hand": updateParticipant(msg.session_id, {hand: true}); break;
      case "user_lower_hand": updateParticipant(msg.session_id, {hand: false}); break;
      case "user_screen_on":
        if (msg.session_id === S.sessionId && S.screenPending) S.screenPending.resolve();
        updateParticipant(msg.session_id, {screen: true});
        break;
      case "user_screen_off":
        if (msg.session_id === S.sessionId && S.screenStream && !S.screenPending) {
          // Not our own stop (that clears screenStream first): the server ended the share.
          stopScreen(false);
          showNotice("Your screen share was stopped by the server.", 5000);
        }
        updateParticipant(msg.session_id, {screen: false});
        break;
      case "user_video_on": updateParticipant(msg.session_id, {video: true}); break;
      case "user_video_off": updateParticipant(msg.session_id, {video: false}); break;
      case "user_reacted":
        if (msg.session_id !== S.sessionId) showReaction(msg.session_id, msg.emoji);
        break;
      case "call_recording":
        S.recording = !!msg.recording;
        renderRecording();
        showNotice(S.recording ? "This call is being recorded." : "Recording stopped.", 4000);
        break;
      case "call_host_changed": {
        const was = iAmHost();
        S.host = msg.host;
        if (!was && iAmHost()) showNotice("You are the host now.", 5000);
        if (was && !iAmHost()) closeHostMenu();
        renderParticipants();
        break;
      }
      case "call_start":
        showNotice("The call started.", 3000);
        break;
      case "call_end": {
        const who = msg.by === "admin" ? " by an administrator" : msg.by === "host" ? " by the host" : "";
        teardown("ended");
        $("#ended-text").textContent = `The call was ended${who}${msg.reason ? ` (${msg.reason})` : ""}.`;
        showNotice(`The call ended${msg.reason ? `: ${msg.reason}` : ""}.`);
        break;
      }
      case "host_mute":
        mute(false);
        showNotice(`${actor(msg)} muted you. Unmute when you want to speak.`, 5000);
        break;
      case "host_lower_hand":
        S.hand = false;
        setSelf({hand: false});
        showNotice(`${actor(msg)} lowered your hand.`, 5000);
        break;
      case "host_screen_off":
        if (S.screenStream) stopScreen(false);
        showNotice(`${actor(msg)} stopped your screen share.`, 5000);
        break;
      case "host_removed": {
        const text = `You were removed from the call by ${actor(msg).toLowerCase()}.`;
        teardown("removed");
        $("#ended-text").textContent = text;
        showError(text, "host_removed");
        break;
      }
      case "host_control_done": {
        const say = HOST_DONE[msg.action];
        if (say && (msg.changed !== false || msg.action === "mute_others")) {
          showNotice(say(S.names.get(msg.session_id) || "The participant"), 4000);
        }
        break;
      }
      case "invite_created":
        onInvite(msg);
        break;
      case "error":
        onServerError(msg);
        break;
      case "pong":
        break;
      default:
        log("unknown message type", type);
    }
  }

  function onServerError(msg) {
    S.gotServerError = true;
    const code = msg.code || "error";
    const message = msg.message || "the server reported an error";
    if (SCREEN_ERRORS.has(code)) {
      // The answer to our screen_on: the share must not go ahead.
      if (S.screenPending) S.screenPending.reject(code, message);
      else if (S.screenStream) stopScreen(false);
      showError(`Cannot share your screen: ${message}`, code);
      return;
    }
    if (code === "session_removed" && S.state === "joined") {
      // The server ended our session (media timeout, the same user joined again
      // elsewhere, removal): the call is over for this page.
      teardown("removed");
      const reason = message.replace(/^you were removed from the call: /, "");
      $("#ended-text").textContent = `You are no longer in the call: ${reason}.`;
      showError(`You are no longer in the call: ${reason}.`, code);
      return;
    }
    if (S.state === "joined") {
      showError(`Server error (${code}): ${message}`, code);
      return;
    }
    // Before `joined` an error means the join failed (bad token, call full, ...).
    showError(`Could not join the call (${code}): ${message}`, code);
    teardown("error");
  }

  function onJoined(msg) {
    S.sessionId = msg.session_id;
    if (msg.call) S.call = msg.call;
    S.host = msg.host || null;
    S.recording = !!msg.recording;
    S.participants.clear();
    S.promoted.clear();
    joinOrder = 0;
    upsertParticipant({session_id: S.sessionId, user: S.user, name: S.name, muted: S.muted,
      hand: S.hand, voice: false, video: false, screen: false});
    for (const p of msg.participants || []) {
      if (p.session_id !== S.sessionId) upsertParticipant(p);
    }
    // We join muted (the server's default is unmuted): say so before anything else.
    send({type: "mute"});
    setState("joined");
    renderParticipants();
    renderControls();
    const iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
    enqueue(() => startMedia(iceServers));
  }

  // ---------------------------------------------------------------- media
  function enqueue(task) {
    chain = chain.then(task).catch((err) => {
      log("signaling task failed:", describeError(err));
      if (S.state === "joined") {
        showError(`WebRTC negotiation failed: ${describeError(err)}`, "negotiation_failed");
      }
    });
    return chain;
  }

  // The peer connection with only the `calls-dc` data channel: nothing is
  // captured until the first unmute (or camera, or screen share).
  async function startMedia(iceServers) {
    if (S.state !== "joined") return;
    const pc = new RTCPeerConnection({iceServers, bundlePolicy: "max-bundle"});
    S.pc = pc;
    setMediaState(pc.connectionState);
    pc.onicecandidate = (event) => {
      const cand = event.candidate;
      if (!cand || !cand.candidate) return; // end of candidates
      const json = cand.toJSON();
      if (S.localDescSent) sendCandidate(json);
      else S.pendingLocalCandidates.push(json);
    };
    pc.onconnectionstatechange = () => onMediaStateChange(pc);
    pc.oniceconnectionstatechange = () => log(`ice: ${pc.iceConnectionState}`);
    pc.ontrack = onTrack;
    // The browser fires this whenever an offer is needed and the connection is
    // stable (again after a rollback or an answered server offer if still needed).
    pc.onnegotiationneeded = () => enqueue(maybeOffer);

    S.timers.mediaTimeout = setTimeout(() => {
      if (S.pc === pc && pc.connectionState !== "connected" && S.state === "joined") {
        showError("Media could not connect within 15 s. The server's media port (UDP, 8443 by default; " +
          "TCP as fallback) is probably unreachable from this browser; ask the " +
          "operator to run `callsctl check`.", "media_timeout");
      }
    }, MEDIA_CONNECT_TIMEOUT_MS);

    const dc = pc.createDataChannel("calls-dc");
    S.dc = dc;
    dc.onopen = () => {
      log("data channel open");
      S.timers.dcPing = setInterval(() => {
        if (dc.readyState !== "open") return;
        S.dcPingTimes.push(performance.now());
        if (S.dcPingTimes.length > 10) S.dcPingTimes.shift();
        dc.send("ping");
      }, DC_PING_INTERVAL_MS);
    };
    dc.onmessage = (event) => {
      if (event.data === "pong" && S.dcPingTimes.length) {
        S.rtt = performance.now() - S.dcPingTimes.shift();
        renderStatus();
      }
    };
    dc.onclose = () => log("data channel closed");
    renderControls(); // camera and screen buttons work from now on
    // The first offer follows from `negotiationneeded` (the data channel).
  }

  async function maybeOffer() {
    const pc = S.pc;
    if (!pc || pc.signalingState === "closed") return;
    // Not stable: an offer exchange is in progress; the browser fires
    // negotiationneeded again once stable if an offer is still needed.
    if (pc.signalingState !== "stable") return;
    S.localDescSent = false;
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    send({type: "signal", data: {type: "offer", sdp: pc.localDescription.sdp}});
    flushLocalCandidates();
  }

  function sendCandidate(json) {
    send({type: "signal", data: {type: "candidate", candidate: {
      candidate: json.candidate,
      sdpMid: json.sdpMid,
      sdpMLineIndex: json.sdpMLineIndex,
      usernameFragment: json.usernameFragment,
    }}});
  }

  function flushLocalCandidates() {
    S.localDescSent = true;
    const pending = S.pendingLocalCandidates.splice(0);
    for (const json of pending) sendCandidate(json);
  }

  function normalizeRemoteCandidate(raw) {
    if (!raw) return null;
    const c = typeof raw === "string" ? {candidate: raw} : {...raw};
    if (!c.candidate) return null; // end-of-candidates
    if (!c.candidate.startsWith("candidate:")) c.candidate = `candidate:${c.candidate}`;
    if ((c.sdpMid === undefined || c.sdpMid === null) &&
        (c.sdpMLineIndex === undefined || c.sdpMLineIndex === null)) c.sdpMLineIndex = 0;
    return c;
  }

  async function addRemoteCandidate(c) {
    try {
      await S.pc.addIceCandidate(c);
    } catch (err) {
      log("addIceCandidate failed:", describeError(err), c.candidate);
    }
  }

  async function flushRemoteCandidates() {
    const pending = S.pendingRemoteCandidates.splice(0);
    for (const c of pending) await addRemoteCandidate(c);
  }

  async function handleSignal(data) {
    const pc = S.pc;
    if (!pc || pc.signalingState === "closed") {
      log("signal ignored (no peer connection):", data.type);
      return;
    }
    if (data.type !== "candidate") log("← signal", data.type, `(state ${pc.signalingState})`);
    if (data.type === "offer") {
      let sdp = data.sdp;
      if (pc.signalingState === "have-local-offer") {
        // Glare: we are the polite peer; drop our offer, take the server's, re-offer later.
        log("offer collision: rolling back our offer");
        const ours = pc.localDescription ? pc.localDescription.sdp : "";
        await pc.setLocalDescription({type: "rollback"});
        sdp = adoptExtensionIds(sdp, ours);
      }
      await pc.setRemoteDescription({type: "offer", sdp});
      await flushRemoteCandidates();
      S.localDescSent = false;
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      send({type: "signal", data: {type: "answer", sdp: pc.localDescription.sdp}});
      flushLocalCandidates();
    } else if (data.type === "answer") {
      if (pc.signalingState !== "have-local-offer") {
        log(`answer ignored in state ${pc.signalingState}`);
        return;
      }
      await pc.setRemoteDescription({type: "answer", sdp: data.sdp});
      await flushRemoteCandidates();
    } else if (data.type === "candidate") {
      const c = normalizeRemoteCandidate(data.candidate);
      if (!c) return;
      if (pc.remoteDescription) await addRemoteCandidate(c);
      else S.pendingRemoteCandidates.push(c);
    } else {
      log("unknown signal type", data.type);
    }
  }

  // RTP header extension ids by URI ("a=extmap:ID[/dir] URI"), first use wins.
  function extensionIds(sdp) {
    const ids = new Map();
    for (const line of sdp.split(/\r?\n/)) {
      const match = /^a=extmap:(\d+)(?:\/\w+)? (\S+)/.exec(line);
      if (match && !ids.has(match[2])) ids.set(match[2], Number(match[1]));
    }
    return ids;
  }

  // After a rollback Chromium keeps the extension ids its withdrawn offer gave
  // a new m-section, and refuses an offer that binds one of them to another
  // extension ("RTP extension ID reassignment not supported"); the server,
  // which had not seen that offer, numbered its own independently. So the
  // server's offer is renumbered to our ids (others to free ones); the answer
  // carries them and the server adopts what the answer says (RFC 8285 §6).
  function adoptExtensionIds(remoteSdp, ourSdp) {
    const ours = extensionIds(ourSdp);
    const theirs = extensionIds(remoteSdp);
    const used = new Set(ours.values());
    const remap = new Map();
    for (const [uri, id] of theirs) if (ours.has(uri)) remap.set(id, ours.get(uri));
    for (const [uri, id] of theirs) {
      if (ours.has(uri)) continue;
      let next = id;
      if (used.has(next)) {
        next = 1;
        while (used.has(next) && next < 255) next += 1;
      }
      used.add(next);
      remap.set(id, next);
    }
    if ([...remap].every(([from, to]) => from === to)) return remoteSdp;
    log("renumbered the server's header extensions after the collision");
    return remoteSdp.replace(/^a=extmap:(\d+)/gm, (line, id) => `a=extmap:${remap.has(Number(id)) ? remap.get(Number(id)) : id}`);
  }

  function onMediaStateChange(pc) {
    if (pc !== S.pc) return;
    const state = pc.connectionState;
    log(`media: ${state}`);
    setMediaState(state);
    if (state === "connected") {
      clearTimeout(S.timers.mediaTimeout);
      clearError("media_timeout");
      clearError("media_failed");
      $("#notice").hidden = true;
    } else if (state === "failed") {
      showError("Media connection failed: no audio can flow. The server's media port (UDP, " +
        "8443 by default; TCP as fallback) is probably blocked between this browser and the " +
        "server; ask the operator to run `callsctl check`.", "media_failed");
    } else if (state === "disconnected") {
      showNotice("Media connection interrupted; trying to recover…");
    }
  }

  // Whose track this is and what it carries, from the stream id the SFU sets.
  function sourceOf(streamId, kind) {
    if (streamId && streamId.startsWith(SCREEN_STREAM_PREFIX)) {
      return {sessionId: streamId.slice(SCREEN_STREAM_PREFIX.length),
        source: kind === "audio" ? "screenaudio" : "screen"};
    }
    return {sessionId: streamId || null, source: kind === "audio" ? "mic" : "camera"};
  }

  function onTrack(event) {
    const track = event.track;
    const stream = event.streams[0] || null;
    const {sessionId, source} = sourceOf(stream ? stream.id : null, track.kind);
    S.remoteTracks.set(track.id, {sessionId, kind: track.kind, source,
      streamId: stream ? stream.id : null,
      mid: event.transceiver ? event.transceiver.mid : null});
    S.remoteTrackObjs.set(track.id, track);
    log(`remote ${source} track from ${sessionId || "(no stream)"}`);
    if (track.kind === "audio") attachAudio(track, sessionId);
    const forget = () => {
      if (!S.remoteTrackObjs.has(track.id)) return;
      S.remoteTracks.delete(track.id);
      S.remoteTrackObjs.delete(track.id);
      detachMedia(`audio:${track.id}`);
      renderParticipants();
    };
    track.addEventListener("ended", forget);
    // The server retires a transceiver (inactive) when a track goes away.
    if (stream) stream.addEventListener("removetrack", (e) => { if (e.track === track) forget(); });
    renderParticipants();
  }

  function attachAudio(track, sid) {
    const key = `audio:${track.id}`;
    if (S.mediaElements.has(key)) return;
    const node = el("audio", {autoplay: true, "data-session-id": sid || "",
      "data-track-id": track.id});
    node.srcObject = new MediaStream([track]);
    S.mediaElements.set(key, node);
    $("#media").append(node);
    if (S.speakerId && node.setSinkId) {
      node.setSinkId(S.speakerId).catch((err) => log("setSinkId failed:", describeError(err)));
    }
    playElement(node);
  }

  function playElement(node) {
    const result = node.play();
    if (result && result.catch) {
      result.catch((err) => {
        log("playback blocked:", describeError(err));
        if (node.tagName === "AUDIO") $("#enable-audio-box").hidden = false;
      });
    }
  }

  function detachMedia(key) {
    const node = S.mediaElements.get(key);
    if (!node) return;
    node.srcObject = null;
    node.remove();
    S.mediaElements.delete(key);
  }

  function removeMediaFor(sid) {
    for (const [key, node] of [...S.mediaElements]) {
      if (node.dataset.sessionId === sid) detachMedia(key);
    }
    for (const [trackId, info] of [...S.remoteTracks]) {
      if (info.sessionId === sid) {
        S.remoteTracks.delete(trackId);
        S.remoteTrackObjs.delete(trackId);
      }
    }
  }

  // ---------------------------------------------------------------- microphone
  function micConstraints() {
    return S.micDeviceId ? {deviceId: {exact: S.micDeviceId}} : true;
  }

  // Mute: the sender stops (replaceTrack(null), no renegotiation); the
  // microphone stays open for a quick unmute. `notify` = tell the server (not
  // needed when the server muted us).
  function mute(notify = true) {
    S.muted = true;
    if (S.micSender && S.pc && S.pc.signalingState !== "closed") {
      S.micSender.replaceTrack(null).catch((err) => log("replaceTrack failed:", describeError(err)));
    }
    if (notify) send({type: "mute"});
    setSelf({muted: true});
  }

  // Unmute: the first time, ask for the microphone and add it to the
  // connection (addTrack renegotiates); afterwards replaceTrack(track).
  async function unmute() {
    if (S.micBusy || !S.pc || S.state !== "joined") return;
    if (!S.micTrack) {
      S.micBusy = true;
      renderControls();
      let stream = null;
      try {
        stream = await navigator.mediaDevices.getUserMedia({audio: micConstraints()});
      } catch (err) {
        showError(`Microphone unavailable (${describeError(err)}); you can listen but not speak.`,
          "no_microphone");
      } finally {
        S.micBusy = false;
      }
      const pc = S.pc;
      if (!stream || !pc || pc.signalingState === "closed" || S.state !== "joined") {
        if (stream) stream.getTracks().forEach((t) => t.stop());
        renderControls();
        return;
      }
      clearError("no_microphone");
      S.micStream = stream;
      S.micTrack = stream.getAudioTracks()[0];
      S.micSender = pc.addTrack(S.micTrack, stream); // negotiationneeded follows
      log("microphone added");
      refreshDevices();
    } else if (S.micSender) {
      await S.micSender.replaceTrack(S.micTrack);
    }
    S.muted = false;
    S.micTrack.enabled = true;
    send({type: "unmute"});
    setSelf({muted: false});
  }

  function setMuted(muted) {
    if (muted === S.muted) return;
    if (muted) mute();
    else unmute().catch((err) => showError(`Cannot unmute: ${describeError(err)}`, "no_microphone"));
  }

  async function switchMicrophone() {
    const old = S.micTrack;
    if (!old || !S.micSender) return;
    const stream = await navigator.mediaDevices.getUserMedia({audio: micConstraints()});
    const track = stream.getAudioTracks()[0];
    if (S.micTrack !== old) { // the call ended or another switch won meanwhile
      track.stop();
      return;
    }
    if (S.micStream) {
      S.micStream.removeTrack(old);
      S.micStream.addTrack(track);
    }
    S.micTrack = track;
    if (!S.muted) await S.micSender.replaceTrack(track);
    old.stop();
    log(`microphone: ${track.label}`);
  }

  function setHand(raised) {
    S.hand = raised;
    send({type: raised ? "raise_hand" : "lower_hand"});
    setSelf({hand: raised});
  }

  // The SFU forwards VP8: offer it first on the video we send.
  function preferVp8(transceiver) {
    if (!transceiver.setCodecPreferences || !RTCRtpReceiver.getCapabilities) return;
    const codecs = (RTCRtpReceiver.getCapabilities("video") || {codecs: []}).codecs;
    const isVp8 = (c) => c.mimeType.toLowerCase() === "video/vp8";
    if (!codecs.some(isVp8)) return;
    try {
      transceiver.setCodecPreferences([...codecs.filter(isVp8), ...codecs.filter((c) => !isVp8(c))]);
    } catch (err) {
      log("setCodecPreferences failed:", describeError(err));
    }
  }

  function setSelf(fields) {
    const self = S.participants.get(S.sessionId);
    if (self) Object.assign(self, fields);
    renderControls();
    renderParticipants();
  }

  // ---------------------------------------------------------------- camera
  function cameraConstraints() {
    return S.camDeviceId ? {...CAMERA_CONSTRAINTS, deviceId: {exact: S.camDeviceId}} : CAMERA_CONSTRAINTS;
  }

  // Camera on: a send-only transceiver of our own (never one the server created
  // to send us someone else's video), re-offered to the server; video_on tells
  // everyone. Camera off: replaceTrack(null), no renegotiation; video_off.
  async function startCamera() {
    if (S.camTrack || S.cameraBusy || !S.pc || S.state !== "joined") return;
    S.cameraBusy = true;
    renderControls();
    try {
      let stream;
      try {
        stream = await navigator.mediaDevices.getUserMedia({video: cameraConstraints()});
      } catch (err) {
        showError(`Camera unavailable (${describeError(err)}).`, "no_camera");
        return;
      }
      const track = stream.getVideoTracks()[0];
      const pc = S.pc;
      if (!track || !pc || pc.signalingState === "closed" || S.state !== "joined") {
        stream.getTracks().forEach((t) => t.stop());
        return;
      }
      clearError("no_camera");
      const reusable = S.camTransceiver && S.camTransceiver.currentDirection !== "stopped";
      if (reusable) {
        await S.camTransceiver.sender.replaceTrack(track);
      } else {
        S.camTransceiver = pc.addTransceiver(track, {direction: "sendonly",
          streams: [new MediaStream()], sendEncodings: [{maxBitrate: CAMERA_MAX_BITRATE}]});
        preferVp8(S.camTransceiver);
        // negotiationneeded follows: the re-offer carries the new m-section.
      }
      S.camTrack = track;
      track.addEventListener("ended", () => { if (S.camTrack === track) stopCamera(); });
      send({type: "video_on"});
      log("camera on");
      refreshDevices();
    } finally {
      S.cameraBusy = false;
      setSelf({video: !!S.camTrack});
    }
  }

  function stopCamera() {
    const track = S.camTrack;
    if (!track) return;
    S.camTrack = null;
    if (S.camTransceiver && S.pc && S.pc.signalingState !== "closed") {
      S.camTransceiver.sender.replaceTrack(null)
        .catch((err) => log("replaceTrack failed:", describeError(err)));
    }
    track.stop();
    send({type: "video_off"});
    log("camera off");
    setSelf({video: false});
  }

  async function switchCamera() {
    const old = S.camTrack;
    if (!old || !S.camTransceiver || S.cameraBusy) return;
    S.cameraBusy = true;
    try {
      const stream = await navigator.mediaDevices.getUserMedia({video: cameraConstraints()});
      const track = stream.getVideoTracks()[0];
      if (S.camTrack !== old) {
        track.stop();
        return;
      }
      await S.camTransceiver.sender.replaceTrack(track);
      S.camTrack = track;
      track.addEventListener("ended", () => { if (S.camTrack === track) stopCamera(); });
      old.stop();
      log(`camera: ${track.label}`);
    } finally {
      S.cameraBusy = false;
      setSelf({video: !!S.camTrack});
    }
  }

  // ---------------------------------------------------------------- screen share
  // Ask the server for the call's one screen-share slot, naming the stream that
  // will carry the screen. Resolves on our user_screen_on, rejects on an error.
  function requestScreenSlot(streamId) {
    return new Promise((resolve, reject) => {
      const pending = {streamId};
      const finish = () => {
        clearTimeout(pending.timer);
        if (S.screenPending === pending) S.screenPending = null;
      };
      pending.resolve = () => { finish(); resolve(); };
      pending.reject = (code, message) => {
        finish();
        reject(Object.assign(new Error(message), {code}));
      };
      pending.timer = setTimeout(() => {
        log("no answer to screen_on; sharing anyway");
        pending.resolve();
      }, SCREEN_ACK_TIMEOUT_MS);
      S.screenPending = pending;
      if (!send({type: "screen_on", stream_id: streamId})) {
        pending.reject("ws_closed", "the signaling connection is closed");
      }
    });
  }

  async function startScreen() {
    if (S.screenStream || S.screenBusy || !S.pc || S.state !== "joined") return;
    if (!navigator.mediaDevices.getDisplayMedia) {
      showError("This browser cannot share its screen.", "screen_unsupported");
      return;
    }
    S.screenBusy = true;
    renderControls();
    try {
      let stream;
      try {
        stream = await navigator.mediaDevices.getDisplayMedia(SCREEN_CONSTRAINTS);
      } catch (err) {
        if (err && err.name === "NotAllowedError") log("screen share cancelled");
        else showError(`Cannot share your screen (${describeError(err)}).`, "screen_failed");
        return;
      }
      const track = stream.getVideoTracks()[0];
      // Only the picture is shared; stop anything else the picker granted.
      stream.getAudioTracks().forEach((t) => { stream.removeTrack(t); t.stop(); });
      if (!track || !S.pc || S.state !== "joined") {
        stream.getTracks().forEach((t) => t.stop());
        return;
      }
      S.screenStream = stream;
      renderControls();
      const reusable = S.screenTransceiver && S.screenTransceiver.currentDirection !== "stopped" &&
        !S.screenTransceiver.sender.track;
      if (!reusable) S.screenMsid = new MediaStream();
      const msid = S.screenMsid;
      try {
        await requestScreenSlot(msid.id);
      } catch (err) {
        // Refused (someone else shares, or sharing is disabled): the error banner
        // is already up (onServerError); drop what we captured.
        if (S.screenStream === stream) S.screenStream = null;
        stream.getTracks().forEach((t) => t.stop());
        if (err.code === "ws_closed") showError(`Cannot share your screen: ${err.message}`, err.code);
        return;
      }
      const pc = S.pc;
      if (S.screenStream !== stream || !pc || pc.signalingState === "closed") return; // stopped meanwhile
      clearError("screen_share_taken");
      clearError("screen_sharing_disabled");
      track.contentHint = "detail";
      track.addEventListener("ended", () => { if (S.screenStream === stream) stopScreen(true); });
      if (reusable && S.screenMsid === msid) {
        // The previous share's m-section (same msid): new track, send again.
        await S.screenTransceiver.sender.replaceTrack(track);
        S.screenTransceiver.direction = "sendonly";
      } else {
        S.screenTransceiver = pc.addTransceiver(track, {direction: "sendonly", streams: [msid],
          sendEncodings: [{maxBitrate: SCREEN_MAX_BITRATE, maxFramerate: SCREEN_MAX_FPS}]});
        preferVp8(S.screenTransceiver);
      }
      log(`sharing screen (stream ${msid.id})`);
    } finally {
      S.screenBusy = false;
      setSelf({screen: !!S.screenStream && !S.screenPending});
    }
  }

  // Stop sharing: the track leaves the connection (renegotiation) and, unless the
  // server already ended it, screen_off tells everyone.
  function stopScreen(notify = true) {
    const stream = S.screenStream;
    if (!stream) return;
    S.screenStream = null;
    const pending = S.screenPending;
    const t = S.screenTransceiver;
    if (t && t.sender.track && S.pc && S.pc.signalingState !== "closed") {
      try {
        S.pc.removeTrack(t.sender);
      } catch (err) {
        log("removeTrack failed:", describeError(err));
      }
    }
    stream.getTracks().forEach((track) => track.stop());
    if (notify) send({type: "screen_off"});
    if (pending) pending.resolve(); // startScreen sees the stream gone and stops there
    log("screen share stopped");
    setSelf({screen: false});
  }

  // ---------------------------------------------------------------- reactions, leaving
  function react(emoji) {
    if (S.state !== "joined") return;
    send({type: "react", emoji});
    showReaction(S.sessionId, emoji);
    toggleReactions(false);
  }

  function toggleReactions(open) {
    const box = $("#reaction-buttons");
    const show = open === undefined ? box.hidden : open;
    box.hidden = !show;
    $("#react").setAttribute("aria-expanded", String(show));
  }

  function leave() {
    if (S.state === "joined" || S.state === "joining") send({type: "leave"});
    teardown("left");
    $("#ended-text").textContent = "You left the call.";
  }

  // "End call" asks once more (a second click within a few seconds) instead of a modal.
  let endConfirm = null;
  function endCall() {
    if (!iAmHost()) return;
    if (!endConfirm) {
      setButton($("#end-call"), "end", "Click again to end for everyone");
      $("#end-call").dataset.confirm = "true";
      endConfirm = setTimeout(resetEndCall, END_CONFIRM_MS);
      return;
    }
    resetEndCall();
    hostControl("end");
  }

  function resetEndCall() {
    clearTimeout(endConfirm);
    endConfirm = null;
    delete $("#end-call").dataset.confirm;
    setButton($("#end-call"), "end", "End call");
  }

  function teardown(state) {
    for (const key of Object.keys(S.timers)) {
      clearTimeout(S.timers[key]);
      clearInterval(S.timers[key]);
      S.timers[key] = null;
    }
    if (S.dc) {
      try { S.dc.close(); } catch (_err) { /* already closed */ }
    }
    if (S.pc) {
      try { S.pc.close(); } catch (_err) { /* already closed */ }
      setMediaState("closed");
    }
    if (S.micStream) S.micStream.getTracks().forEach((t) => t.stop());
    S.micStream = null;
    S.micTrack = null;
    S.micSender = null;
    if (S.camTrack) S.camTrack.stop();
    S.camTrack = null;
    S.camTransceiver = null;
    if (S.screenPending) S.screenPending.reject("closed", "the call is over");
    if (S.screenStream) S.screenStream.getTracks().forEach((t) => t.stop());
    S.screenStream = null;
    S.screenTransceiver = null;
    S.screenMsid = null;
    for (const key of [...S.mediaElements.keys()]) detachMedia(key);
    S.remoteTracks.clear();
    S.remoteTrackObjs.clear();
    for (const tile of S.tiles.values()) {
      if (tile.video) tile.video.srcObject = null;
      tile.node.remove();
    }
    S.tiles.clear();
    if (S.screenView) {
      S.screenView.video.srcObject = null;
      S.screenView.video.remove();
      S.screenView = null;
    }
    $("#screen-view").hidden = true;
    closeHostMenu();
    for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
    if (S.ws) {
      const ws = S.ws;
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
        setSignaling("closed");
        try { ws.close(1000, state); } catch (_err) { /* closing */ }
      }
    }
    setState(state);
  }

  // ---------------------------------------------------------------- host controls
  // The server decides (only the host's commands take effect); the page only
  // offers them to the host.
  function hostControl(action, sessionId) {
    const message = {type: "host_control", action};
    if (sessionId) message.session_id = sessionId;
    send(message);
  }

  let hostMenuTarget = null;
  let hostMenuAnchor = null;
  function openHostMenu(sid, anchor) {
    const p = S.participants.get(sid);
    if (!p || !iAmHost()) return;
    const menu = $("#host-menu");
    hostMenuTarget = sid;
    menu.dataset.target = sid;
    for (const button of menu.querySelectorAll("button[data-action]")) {
      const action = button.dataset.action;
      button.hidden = (action === "mute" && p.muted) || (action === "lower_hand" && !p.hand) ||
        (action === "stop_screen" && !p.screen);
    }
    menu.hidden = false;
    hostMenuAnchor = anchor;
    anchor.setAttribute("aria-expanded", "true");
    const rect = anchor.getBoundingClientRect();
    const width = menu.offsetWidth;
    const height = menu.offsetHeight;
    const left = Math.max(8, Math.min(rect.right - width, window.innerWidth - width - 8));
    const below = rect.bottom + 4 + height < window.innerHeight;
    menu.style.left = `${left}px`;
    menu.style.top = `${below ? rect.bottom + 4 : Math.max(8, rect.top - height - 4)}px`;
    const first = menu.querySelector("button:not([hidden])");
    if (first) first.focus();
  }

  function closeHostMenu() {
    const menu = $("#host-menu");
    if (menu) menu.hidden = true;
    if (hostMenuAnchor) hostMenuAnchor.removeAttribute("aria-expanded");
    hostMenuAnchor = null;
    hostMenuTarget = null;
  }

  // ---------------------------------------------------------------- invite links
  function openInvite() {
    const dialog = $("#invite-dialog");
    $("#invite-link").value = "";
    $("#invite-copy").disabled = true;
    if (!dialog.open) dialog.showModal();
    $("#invite-name").focus();
  }

  function requestInvite(event) {
    event.preventDefault();
    const name = $("#invite-name").value.trim();
    if (!name) return;
    send({type: "invite", name});
  }

  async function copyInvite() {
    const link = $("#invite-link").value;
    if (!link) return false;
    try {
      await navigator.clipboard.writeText(link);
      showNotice("Join link copied.", 3000);
      return true;
    } catch (_err) {
      $("#invite-link").select(); // the clipboard needs permission: let the user copy
      showNotice("Select the link and copy it (the browser refused the clipboard).", 5000);
      return false;
    }
  }

  function onInvite(msg) {
    const link = new URL(msg.path, location.href).href;
    S.invite = {...msg, link};
    $("#invite-link").value = link;
    $("#invite-copy").disabled = false;
    copyInvite();
  }

  // ---------------------------------------------------------------- devices
  function fillDevices(select, devices, current, noun) {
    const options = devices.map((d, i) => el("option", {value: d.deviceId,
      text: d.label || `${noun} ${i + 1}`}));
    if (!options.length) options.push(el("option", {value: "", text: `no ${noun.toLowerCase()} found`}));
    select.replaceChildren(...options);
    select.disabled = !devices.length;
    if (current && devices.some((d) => d.deviceId === current)) select.value = current;
  }

  function trackDevice(track) {
    const settings = track && track.getSettings ? track.getSettings() : {};
    return settings.deviceId || "";
  }

  async function refreshDevices() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
    let devices = [];
    try {
      devices = await navigator.mediaDevices.enumerateDevices();
    } catch (err) {
      log("enumerateDevices failed:", describeError(err));
      return;
    }
    fillDevices($("#mic-select"), devices.filter((d) => d.kind === "audioinput"),
      S.micDeviceId || trackDevice(S.micTrack), "Microphone");
    fillDevices($("#cam-select"), devices.filter((d) => d.kind === "videoinput"),
      S.camDeviceId || trackDevice(S.camTrack), "Camera");
    const canPick = "setSinkId" in HTMLMediaElement.prototype;
    $("#speaker-select").hidden = !canPick;
    $("#speaker-label").hidden = !canPick;
    if (canPick) {
      fillDevices($("#speaker-select"), devices.filter((d) => d.kind === "audiooutput"),
        S.speakerId, "Speaker");
    }
  }

  function openSettings() {
    refreshDevices();
    const dialog = $("#settings-dialog");
    if (!dialog.open) dialog.showModal();
  }

  async function onDeviceChoice(kind, value) {
    try {
      if (kind === "mic") {
        S.micDeviceId = value;
        await switchMicrophone();
      } else if (kind === "cam") {
        S.camDeviceId = value;
        await switchCamera();
      } else {
        S.speakerId = value;
        for (const node of S.mediaElements.values()) {
          if (node.setSinkId) await node.setSinkId(value);
        }
      }
    } catch (err) {
      showError(`Cannot switch to that device: ${describeError(err)}`, "device_failed");
    }
  }

  // ---------------------------------------------------------------- side panel
  function toggleSide(open) {
    const side = $("#side");
    side.hidden = open === undefined ? !side.hidden : !open;
    $("#participants-toggle").setAttribute("aria-pressed", String(!side.hidden));
    layoutSoon();
  }

  // ---------------------------------------------------------------- wiring
  function videoInfo(video, trackId) {
    return {trackId, width: video.videoWidth, height: video.videoHeight, paused: video.paused,
      self: video.dataset.self === "true"};
  }

  function exposeApi() {
    const api = {};
    const props = {
      state: () => S.state,
      sessionId: () => S.sessionId,
      call: () => S.call,
      user: () => S.user,
      name: () => S.name,
      host: () => S.host,
      isHost: () => iAmHost(),
      recording: () => S.recording,
      muted: () => S.muted,
      hand: () => S.hand,
      signaling: () => S.signaling,
      media: () => S.media,
      rtt: () => S.rtt,
      error: () => (S.error ? {...S.error} : null),
      pc: () => S.pc,
      ws: () => S.ws,
      participants: () => {
        const out = {};
        for (const [sid, p] of S.participants) out[sid] = participantSnapshot(p);
        return out;
      },
      remoteTracks: () => {
        const out = {};
        for (const [id, info] of S.remoteTracks) out[id] = {...info};
        return out;
      },
      camera: () => !!S.camTrack,
      microphone: () => (S.micTrack ? {label: S.micTrack.label, deviceId: trackDevice(S.micTrack)} : null),
      // True once the server accepted our share (and until we stop it).
      screenSharing: () => !!S.screenStream && !S.screenPending,
      screenSharer: () => { const p = screenSharer(); return p ? p.session_id : null; },
      // Camera videos on tiles, by session id (ours included while our camera is on).
      videos: () => {
        const out = {};
        for (const [sid, tile] of S.tiles) if (tile.video) out[sid] = videoInfo(tile.video, tile.trackId);
        return out;
      },
      screenView: () => (S.screenView ? {sessionId: S.screenView.sessionId,
        ...videoInfo(S.screenView.video, S.screenView.trackId)} : null),
      layout: () => ({mode: $("#stage").dataset.layout, page: S.page, pages: S.pages,
        perPage: S.perPage, tiles: S.tiles.size}),
      invite: () => (S.invite ? {...S.invite} : null),
      log: () => S.log.slice(),
    };
    for (const [name, get] of Object.entries(props)) {
      Object.defineProperty(api, name, {get, enumerable: true});
    }
    // The <video> elements themselves, for tests (by session id; the screen view).
    api.videoElement = (sid) => (S.tiles.has(sid) ? S.tiles.get(sid).video : null);
    api.screenElement = () => (S.screenView ? S.screenView.video : null);
    api.send = (message) => send(message); // for add-ons such as captions.js
    window.callsctl = Object.freeze(api);
  }

  function typingInto(target) {
    return !!target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
  }

  function onKey(event) {
    if (event.key === "Escape") {
      closeHostMenu();
      toggleReactions(false);
      return;
    }
    if (S.state !== "joined" || event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (typingInto(event.target) || document.querySelector("dialog[open]")) return;
    const key = event.key.toLowerCase();
    if (key === "m") {
      event.preventDefault();
      setMuted(!S.muted);
    } else if (key === "h") {
      event.preventDefault();
      setHand(!S.hand);
    }
  }

  function decorateStaticButtons() {
    for (const node of document.querySelectorAll("[data-icon]")) {
      node.prepend(icon(node.dataset.icon));
    }
  }

  function init() {
    exposeApi();
    decorateStaticButtons();
    for (const r of REACTIONS) {
      const button = el("button", {type: "button", "class": "react", "data-emoji": r.emoji,
        "title": r.label, "aria-label": r.label}, icon(r.icon, `reaction-${r.icon}`));
      button.addEventListener("click", () => react(r.emoji));
      $("#reaction-buttons").append(button);
    }
    $("#mute").addEventListener("click", () => setMuted(!S.muted));
    $("#hand").addEventListener("click", () => setHand(!S.hand));
    $("#react").addEventListener("click", (event) => {
      event.stopPropagation();
      toggleReactions();
    });
    $("#camera").addEventListener("click", () => {
      if (S.camTrack) stopCamera();
      else startCamera().catch((err) => showError(`Camera failed: ${describeError(err)}`, "no_camera"));
    });
    $("#screen").addEventListener("click", () => {
      if (S.screenStream) stopScreen(true);
      else startScreen().catch((err) => showError(`Screen share failed: ${describeError(err)}`,
        "screen_failed"));
    });
    $("#leave").addEventListener("click", leave);
    $("#end-call").addEventListener("click", endCall);
    $("#record").addEventListener("click",
      () => send({type: S.recording ? "record_stop" : "record_start"}));
    $("#participants-toggle").addEventListener("click", () => toggleSide());
    $("#side-close").addEventListener("click", () => toggleSide(false));
    $("#settings").addEventListener("click", openSettings);
    $("#mic-select").addEventListener("change", (e) => onDeviceChoice("mic", e.target.value));
    $("#cam-select").addEventListener("change", (e) => onDeviceChoice("cam", e.target.value));
    $("#speaker-select").addEventListener("change", (e) => onDeviceChoice("speaker", e.target.value));
    $("#mute-all").addEventListener("click", () => hostControl("mute_others"));
    $("#invite").addEventListener("click", openInvite);
    $("#invite-form").addEventListener("submit", requestInvite);
    $("#invite-copy").addEventListener("click", copyInvite);
    $("#invite-close").addEventListener("click", () => $("#invite-dialog").close());
    $("#videos").addEventListener("click", (event) => {
      const button = event.target.closest("button.tile-more");
      if (!button) return;
      event.stopPropagation();
      if (hostMenuTarget === button.dataset.target) closeHostMenu();
      else openHostMenu(button.dataset.target, button);
    });
    $("#participants").addEventListener("click", (event) => {
      const button = event.target.closest("button.more");
      if (!button) return;
      event.stopPropagation();
      if (hostMenuTarget === button.dataset.target) closeHostMenu();
      else openHostMenu(button.dataset.target, button);
    });
    $("#host-menu").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      if (!button || !hostMenuTarget) return;
      hostControl(button.dataset.action, hostMenuTarget);
      closeHostMenu();
    });
    document.addEventListener("click", (event) => {
      if (!event.target.closest("#host-menu")) closeHostMenu();
      if (!event.target.closest(".popover-anchor")) toggleReactions(false);
    });
    document.addEventListener("keydown", onKey);
    $("#page-prev").addEventListener("click", () => turnPage(-1));
    $("#page-next").addEventListener("click", () => turnPage(1));
    $("#error-dismiss").addEventListener("click", () => clearError());
    $("#rejoin").addEventListener("click", () => location.reload());
    $("#enable-audio").addEventListener("click", () => {
      $("#enable-audio-box").hidden = true;
      for (const node of S.mediaElements.values()) playElement(node);
    });
    $("#join-form").addEventListener("submit", (event) => {
      event.preventDefault();
      if (S.state === "ready") connect();
    });
    window.addEventListener("pagehide", () => {
      if (S.state === "joined") send({type: "leave"});
    });
    if (window.ResizeObserver) new ResizeObserver(layoutSoon).observe($("#stage"));
    else window.addEventListener("resize", layoutSoon);
    if (navigator.mediaDevices.addEventListener) {
      navigator.mediaDevices.addEventListener("devicechange", refreshDevices);
    }
    $("#side").hidden = window.innerWidth < SIDE_OPEN_MIN_WIDTH;
    // The list covers the stage on narrow screens: it closes when the window gets narrow.
    const narrowQuery = window.matchMedia(`(max-width: ${NARROW_WIDTH + 60}px)`);
    narrowQuery.addEventListener("change", (event) => { if (event.matches) toggleSide(false); });
    renderControls();

    const params = new URLSearchParams(location.search);
    const token = params.get("token");
    if (!token) {
      setState("error");
      showError("This page needs a join link with a token (…/?token=…). Open the link " +
        "printed by `callsctl serve`, or mint one with `callsctl token`.", "no_token");
      return;
    }
    S.token = token;
    try {
      S.claims = decodeJwtPayload(token);
    } catch (err) {
      setState("error");
      showError(`The token in this link is malformed (${err.message}); ask for a new join link.`,
        "bad_token");
      return;
    }
    S.call = typeof S.claims.call === "string" ? S.claims.call : null;
    S.user = typeof S.claims.sub === "string" ? S.claims.sub : "";
    if (!S.call) {
      setState("error");
      showError("The token in this link names no call; ask for a new join link.", "bad_token");
      return;
    }
    if (typeof S.claims.exp === "number" && S.claims.exp * 1000 < Date.now()) {
      showNotice("This join link looks expired; the server will probably refuse it.");
    }
    // The name: the link's, else the one used last time, else the token's user
    // unless that is a generic one ("guest"): then the prompt starts empty.
    let remembered = "";
    try {
      remembered = localStorage.getItem(NAME_KEY) || "";
    } catch (_err) { /* storage disabled */ }
    const generic = !S.user || GENERIC_USERS.has(S.user.toLowerCase());
    $("#name").value = params.get("name") || remembered || (generic ? "" : S.user);
    $("#lobby-title").textContent = `Join “${S.call}”`;
    $("#lobby-info").textContent = generic ? "Tell the others who you are." :
      `Your link is for user “${S.user}”.`;
    renderStatus();
    setState("ready");
    if (params.get("autojoin") === "1") connect();
    else $("#name").focus();
  }

  function boot() {
    if (!window.RTCPeerConnection || !navigator.mediaDevices) {
      exposeApi();
      setState("error");
      showError("This browser cannot make calls here: WebRTC and microphone access need a " +
        "recent browser and a secure page (https, or http://localhost).", "unsupported");
      return;
    }
    init();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
