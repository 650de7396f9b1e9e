// callsctl web client: joins a call on a `callsctl serve` SFU.
//
// Signaling is JSON over ws(s)://<same host>/ws?token=JWT (protocol in DESIGN.md);
// media is one RTCPeerConnection to the SFU. The client makes the first offer,
// answers the server's renegotiation offers, and is the polite side on glare.
// Read-only state for tests and debugging is exposed as `window.callsctl`.
"use strict";

(() => {
  const MEDIA_CONNECT_TIMEOUT_MS = 15000;
  const DC_PING_INTERVAL_MS = 1000;
  const WS_PING_INTERVAL_MS = 20000;
  const REACTION_SHOW_MS = 4000;
  const LOG_LIMIT = 300;
  const REACTIONS = ["👍", "👏", "😂", "❤️", "🎉", "👋"];
  // `user_joined` carries no state: a new session starts unmuted on the server
  // (calls/model.py ParticipantState) and changes arrive as user_muted etc.
  const DEFAULT_REMOTE_MUTED = false;
  // What the SFU sends (DESIGN.md): a publisher's mic and camera carry the msid
  // stream id <session_id>; its screen share (and screen audio) "screen-<session_id>".
  const SCREEN_STREAM_PREFIX = "screen-";
  const CAMERA_CONSTRAINTS = {width: {ideal: 640}, height: {ideal: 360}, frameRate: {ideal: 15}};
  const CAMERA_MAX_BITRATE = 800000;
  // One encoding (the SFU has no simulcast yet), as the Mattermost client sends
  // a screen without simulcast: about 1 Mbps at 10 fps.
  const SCREEN_CONSTRAINTS = {video: {frameRate: {ideal: 10, max: 15}}, audio: false};
  const SCREEN_MAX_BITRATE = 1000000;
  const SCREEN_MAX_FPS = 10;
  // The server answers screen_on with user_screen_on (to everyone, us included)
  // or an error; without an answer in this time we share anyway.
  const SCREEN_ACK_TIMEOUT_MS = 5000;
  const SCREEN_ERRORS = new Set(["screen_share_taken", "screen_sharing_disabled"]);

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
    recording: false, // a recording job is in the call (call_recording; jobs, issue 19)
    participants: new Map(), // session_id -> participant
    remoteTracks: new Map(), // track id -> {sessionId, kind, source, streamId, mid}
    remoteTrackObjs: new Map(), // track id -> MediaStreamTrack
    mediaElements: new Map(), // "audio:<track id>" -> <audio> element
    videoTiles: new Map(), // session id -> {node, video, label, trackId}
    screenView: null, // {sessionId, trackId, video} while a remote screen is shown
    ws: null,
    pc: null,
    dc: null,
    micStream: null,
    micTrack: null,
    micSender: null,
    muted: false,
    hand: false,
    camTrack: null, // local camera track while the camera is on
    camTransceiver: null, // kept after the camera stops: turning it on again is replaceTrack
    cameraBusy: false,
    screenStream: null, // local screen share (getDisplayMedia) while sharing or asking to
    screenTransceiver: null, // reused by the next share
    // The stream (msid) the screen is sent in, its id announced in screen_on: its
    // own, never the mic/camera one, and kept as long as the transceiver. (With
    // sender.setStreams() on a reused transceiver, Chromium 156 offered the new
    // stream id once and then, on its next negotiationneeded, the old one again.)
    screenMsid: null,
    screenPending: null, // {streamId, resolve, reject} while waiting for the server's verdict
    screenBusy: false,
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

  // ---------------------------------------------------------------- rendering
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
    $("#call-id").textContent = S.call ? `call ${S.call}` : "";
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

  // Recording (issue 19): the indicator for everyone, the start/stop button for the host.
  function renderRecording() {
    $("#recording").hidden = !S.recording;
    const button = $("#record");
    button.hidden = S.host !== S.sessionId;
    button.textContent = S.recording ? "Stop recording" : "Record";
    button.setAttribute("aria-pressed", String(S.recording));
  }

  function renderParticipants() {
    renderRecording();
    const list = $("#participants");
    const items = [];
    const ordered = [...S.participants.values()].sort((a, b) => {
      const rank = (p) => (p.session_id === S.sessionId ? 0 : 1);
      return rank(a) - rank(b) || a.order - b.order;
    });
    for (const p of ordered) {
      const isSelf = p.session_id === S.sessionId;
      const isHost = p.session_id === S.host;
      const displayName = p.name || p.user || p.session_id;
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
      el("span", {"class": "speaking-dot", "title": p.voice ? "speaking" : ""}),
      el("span", {"class": "name", "text": displayName}),
      isSelf ? el("span", {"class": "you", "text": "(you)"}) : null,
      isHost ? el("span", {"class": "badge host", "text": "host"}) : null,
      p.muted ? el("span", {"class": "muted", "title": "muted", "text": "🔇 muted"}) : null,
      p.voice ? el("span", {"class": "speaking", "title": "speaking", "text": "🔊 speaking"}) : null,
      p.hand ? el("span", {"class": "hand", "title": "hand raised", "text": "✋ hand raised"}) : null,
      p.screen ? el("span", {"class": "screen", "title": "sharing screen", "text": "🖥"}) : null,
      p.video ? el("span", {"class": "video", "title": "camera on", "text": "🎥"}) : null,
      p.reaction ? el("span", {"class": "reaction", "text": p.reaction}) : null);
      items.push(li);
    }
    list.replaceChildren(...items);
    $("#participant-count").textContent = String(S.participants.size);
    renderVideos(ordered);
    renderScreenView();
  }

  // ---------------------------------------------------------------- video tiles / screen view
  function remoteTrackFor(sid, source) {
    let found = null; // the newest live one: a retired transceiver's track may linger
    for (const [trackId, info] of S.remoteTracks) {
      if (info.sessionId !== sid || info.source !== source) continue;
      const track = S.remoteTrackObjs.get(trackId);
      if (track && track.readyState !== "ended") found = track;
    }
    return found;
  }

  function displayName(p) {
    return p.name || p.user || p.session_id;
  }

  function videoFor(track, sid, isSelf) {
    const video = el("video", {autoplay: true, muted: true, playsInline: true,
      "data-session-id": sid, "data-track-id": track.id, "data-self": String(isSelf)});
    // Only the video track: the audio plays through its own <audio> element.
    video.srcObject = new MediaStream([track]);
    playElement(video);
    return video;
  }

  // A tile per participant whose camera is on (by the server's user_video_on,
  // or our own state) and whose video track we have.
  function renderVideos(ordered) {
    const wanted = new Map();
    for (const p of ordered) {
      if (!p.video) continue;
      const isSelf = p.session_id === S.sessionId;
      const track = isSelf ? S.camTrack : remoteTrackFor(p.session_id, "camera");
      if (track) wanted.set(p.session_id, {p, track, isSelf});
    }
    for (const [sid, tile] of [...S.videoTiles]) {
      const want = wanted.get(sid);
      if (want && want.track.id === tile.trackId) continue;
      tile.video.srcObject = null;
      tile.node.remove();
      S.videoTiles.delete(sid);
    }
    const box = $("#videos");
    for (const [sid, {p, track, isSelf}] of wanted) {
      let tile = S.videoTiles.get(sid);
      if (!tile) {
        const video = videoFor(track, sid, isSelf);
        const label = el("span", {"class": "label"});
        const node = el("figure", {"class": "tile", "data-session-id": sid,
          "data-self": String(isSelf)}, video, label);
        // Appended, never moved: moving a playing <video> pauses it.
        box.append(node);
        tile = {node, video, label, trackId: track.id};
        S.videoTiles.set(sid, tile);
      }
      tile.label.textContent = isSelf ? `${displayName(p)} (you)` : displayName(p);
    }
    box.hidden = S.videoTiles.size === 0;
  }

  function screenSharer() {
    for (const p of S.participants.values()) {
      if (p.screen) return p;
    }
    return null;
  }

  function renderScreenView() {
    const view = $("#screen-view");
    const sharer = screenSharer();
    const remote = sharer && sharer.session_id !== S.sessionId;
    const track = remote ? remoteTrackFor(sharer.session_id, "screen") : null;
    const shown = S.screenView;
    if (shown && (!track || shown.trackId !== track.id)) {
      shown.video.srcObject = null;
      shown.video.remove();
      S.screenView = null;
    }
    if (track && !S.screenView) {
      const video = videoFor(track, sharer.session_id, false);
      view.append(video);
      S.screenView = {sessionId: sharer.session_id, trackId: track.id, video};
    }
    view.hidden = !sharer;
    view.dataset.sessionId = sharer ? sharer.session_id : "";
    let label = "";
    if (sharer && !remote) label = "You are sharing your screen.";
    else if (sharer) label = `${displayName(sharer)} is sharing their screen${track ? "" : " (connecting…)"}.`;
    $("#screen-label").textContent = label;
  }

  function renderControls() {
    const mute = $("#mute");
    mute.textContent = S.muted ? "Unmute" : "Mute";
    mute.setAttribute("aria-pressed", String(S.muted));
    mute.dataset.muted = String(S.muted);
    const hand = $("#hand");
    hand.textContent = S.hand ? "Lower hand" : "Raise hand";
    hand.setAttribute("aria-pressed", String(S.hand));
    hand.dataset.hand = String(S.hand);
    const ready = !!S.pc && S.state === "joined";
    const camera = $("#camera");
    const cameraOn = !!S.camTrack;
    camera.textContent = cameraOn ? "Stop camera" : "Camera";
    camera.setAttribute("aria-pressed", String(cameraOn));
    camera.disabled = !ready || S.cameraBusy;
    const screen = $("#screen");
    const sharing = !!S.screenStream;
    screen.textContent = sharing ? "Stop sharing" : "Share screen";
    screen.setAttribute("aria-pressed", String(sharing));
    screen.disabled = !ready || S.screenBusy;
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
      // Our own mute, hand, camera and screen state is decided locally; the
      // server echoes it.
      if (isSelf && (key === "muted" || key === "hand" || key === "video" || key === "screen")) {
        continue;
      }
      p[key] = value;
    }
    renderParticipants();
  }

  const reactionTimers = new Map();
  function showReaction(sid, emoji) {
    const p = S.participants.get(sid);
    const who = p ? p.name || p.user || sid : sid;
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
    const bubble = el("div", {"class": "reaction-bubble", "data-session-id": sid},
      el("span", {"class": "emoji", "text": emoji}), el("span", {"class": "who", "text": who}));
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

  function handleMessage(msg) {
    const type = msg && msg.type;
    if (type !== "pong" && type !== "signal") log("←", type, type === "joined" ? "" : msg);
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
      case "call_host_changed":
        S.host = msg.host;
        renderParticipants();
        break;
      case "call_start":
        showNotice("The call started.", 3000);
        break;
      case "call_end":
        teardown("ended");
        $("#ended-text").textContent = `The call ended${msg.reason ? ` (${msg.reason})` : ""}.`;
        showNotice(`The call ended${msg.reason ? `: ${msg.reason}` : ""}.`);
        break;
      case "host_mute":
        setMuted(true);
        showNotice("The host muted you.", 5000);
        break;
      case "host_removed":
        teardown("removed");
        $("#ended-text").textContent = "You were removed from the call by the host.";
        showError("You were removed from the call by the host.", "host_removed");
        break;
      case "error":
        onServerError(msg);
        break;
      case "pong":
      case "call_state":
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
    joinOrder = 0;
    upsertParticipant({session_id: S.sessionId, user: S.user, name: S.name, muted: S.muted,
      hand: S.hand, voice: false, video: false, screen: false});
    for (const p of msg.participants || []) {
      if (p.session_id !== S.sessionId) upsertParticipant(p);
    }
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

    let stream = null;
    try {
      stream = await navigator.mediaDevices.getUserMedia({audio: true});
    } catch (err) {
      showError(`Microphone unavailable (${describeError(err)}); you can listen but not speak.`,
        "no_microphone");
    }
    if (S.pc !== pc || S.state !== "joined") {
      if (stream) stream.getTracks().forEach((t) => t.stop());
      return;
    }
    if (stream) {
      S.micStream = stream;
      S.micTrack = stream.getAudioTracks()[0];
      S.micSender = pc.addTrack(S.micTrack, stream);
      applyMute();
    } else {
      pc.addTransceiver("audio", {direction: "recvonly"});
      S.muted = true;
      renderControls();
    }
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
    // Tell the server our mute state explicitly (its default may differ).
    send({type: S.muted ? "mute" : "unmute"});
    renderControls(); // camera and screen buttons work from now on
    // The first offer follows from `negotiationneeded` (track + data channel).
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
      if (pc.signalingState === "have-local-offer") {
        // Glare: we are the polite peer; drop our offer, take the server's, re-offer later.
        log("offer collision: rolling back our offer");
        await pc.setLocalDescription({type: "rollback"});
      }
      await pc.setRemoteDescription({type: "offer", sdp: data.sdp});
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
    playElement(node);
  }

  function playElement(node) {
    const result = node.play();
    if (result && result.catch) {
      result.catch((err) => {
        log("playback blocked:", describeError(err));
        $("#enable-audio-box").hidden = false;
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

  // ---------------------------------------------------------------- controls
  function applyMute() {
    if (S.micTrack) S.micTrack.enabled = !S.muted;
    if (S.micSender && S.pc && S.pc.signalingState !== "closed") {
      S.micSender.replaceTrack(S.muted ? null : S.micTrack)
        .catch((err) => log("replaceTrack failed:", describeError(err)));
    }
  }

  function setMuted(muted) {
    if (muted === S.muted) return;
    if (!muted && !S.micTrack && S.pc) {
      showNotice("No microphone: cannot unmute.", 4000);
      return;
    }
    S.muted = muted;
    applyMute();
    send({type: muted ? "mute" : "unmute"});
    const self = S.participants.get(S.sessionId);
    if (self) self.muted = muted;
    renderControls();
    renderParticipants();
  }

  function setHand(raised) {
    S.hand = raised;
    send({type: raised ? "raise_hand" : "lower_hand"});
    const self = S.participants.get(S.sessionId);
    if (self) self.hand = raised;
    renderControls();
    renderParticipants();
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
        stream = await navigator.mediaDevices.getUserMedia({video: CAMERA_CONSTRAINTS});
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

  function react(emoji) {
    if (S.state !== "joined") return;
    send({type: "react", emoji});
    showReaction(S.sessionId, emoji);
  }

  function leave() {
    if (S.state === "joined" || S.state === "joining") send({type: "leave"});
    teardown("left");
    $("#ended-text").textContent = "You left the call.";
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
    for (const tile of S.videoTiles.values()) {
      tile.video.srcObject = null;
      tile.node.remove();
    }
    S.videoTiles.clear();
    if (S.screenView) {
      S.screenView.video.srcObject = null;
      S.screenView.video.remove();
      S.screenView = null;
    }
    $("#videos").hidden = true;
    $("#screen-view").hidden = true;
    if (S.ws) {
      const ws = S.ws;
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
        setSignaling("closed");
        try { ws.close(1000, state); } catch (_err) { /* closing */ }
      }
    }
    setState(state);
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
      // True once the server accepted our share (and until we stop it).
      screenSharing: () => !!S.screenStream && !S.screenPending,
      screenSharer: () => { const p = screenSharer(); return p ? p.session_id : null; },
      // Camera tiles on screen, by session id (ours included while our camera is on).
      videos: () => {
        const out = {};
        for (const [sid, tile] of S.videoTiles) out[sid] = videoInfo(tile.video, tile.trackId);
        return out;
      },
      screenView: () => (S.screenView ? {sessionId: S.screenView.sessionId,
        ...videoInfo(S.screenView.video, S.screenView.trackId)} : null),
      log: () => S.log.slice(),
    };
    for (const [name, get] of Object.entries(props)) {
      Object.defineProperty(api, name, {get, enumerable: true});
    }
    // The <video> elements themselves, for tests (by session id; the screen view).
    api.videoElement = (sid) => (S.videoTiles.has(sid) ? S.videoTiles.get(sid).video : null);
    api.screenElement = () => (S.screenView ? S.screenView.video : null);
    api.send = (message) => send(message); // for add-ons such as captions.js
    window.callsctl = Object.freeze(api);
  }

  function init() {
    exposeApi();
    for (const emoji of REACTIONS) {
      const button = el("button", {type: "button", "class": "react", "data-emoji": emoji,
        "title": `react ${emoji}`, text: emoji});
      button.addEventListener("click", () => react(emoji));
      $("#reaction-buttons").append(button);
    }
    $("#mute").addEventListener("click", () => setMuted(!S.muted));
    $("#hand").addEventListener("click", () => setHand(!S.hand));
    $("#record").addEventListener("click",
      () => send({type: S.recording ? "record_stop" : "record_start"}));
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
    $("#name").value = params.get("name") || S.user;
    $("#lobby-info").textContent = `Join call “${S.call}” as user “${S.user}”.`;
    renderStatus();
    setState("ready");
    if (params.get("autojoin") === "1") connect();
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
