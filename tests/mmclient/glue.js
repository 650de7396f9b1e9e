// Test glue: Mattermost's RTCPeer (dist/rtcpeer.js, unchanged) joined to a
// callsctl server the way the Mattermost web app drives it (its client.ts):
// - the microphone is acquired when joining but added to the peer only on the
//   first unmute (peer.addTrack, which renegotiates); later mutes and unmutes are
//   peer.replaceTrack(id, null) / peer.replaceTrack(id, track), no renegotiation;
// - the first offer therefore carries only the `calls-dc` data channel;
// - a screen share is peer.addStream(stream) (a send-only transceiver, with
//   rids l/h when simulcast is on) and stopping it is peer.removeTrack(id);
// - the camera is peer.addTrack(videoTrack, stream) (same transceiver path).
// Only the transport differs: callsctl's /ws JSON messages instead of
// Mattermost's plugin websocket events.
(() => {
  const S = {
    ws: null, peer: null, sessionId: null, events: [], errors: [], connected: false,
    micStream: null, micTrack: null, micAdded: false,
    camStream: null, screenStream: null, screenTimer: null,
    sent: [], // signals this client sent, for diagnostics
    transcript: [], // every offer and answer, both ways, in order
    trackStreams: {}, // remote track id -> stream id (session id, or screen-<id>)
  };
  const logger = {
    logDebug: () => {}, logInfo: () => {}, logWarn: (...a) => S.errors.push(a.join(" ")),
    logErr: (...a) => S.errors.push(a.join(" ")),
  };

  // "<mid>:<kind> <direction> <msid stream>" per m-section, for the transcript.
  function summary(sdp) {
    return sdp.split(/\r?\nm=/).slice(1).map((section) => {
      const attr = (name) => ((section.match(new RegExp(`\\na=${name}:?(\\S*)`)) || [])[1]);
      const dir = ["sendrecv", "sendonly", "recvonly", "inactive"].find(
        (d) => section.includes(`\na=${d}`)) || "";
      return `${attr("mid")}:${section.split(" ")[0]} ${dir} ${attr("msid") || ""}`.trim();
    }).join(" | ");
  }

  function note(direction, data) {
    if (data.sdp) S.transcript.push(`${direction} ${data.type}: ${summary(data.sdp)}`);
  }

  function send(message) {
    if (message.type === "signal") {
      S.sent.push(message.data);
      note("->", message.data);
    }
    S.ws.send(JSON.stringify(message));
  }

  function onMessage(message) {
    S.events.push(message);
    if (message.type === "joined" && S.onJoined) S.onJoined(message);
    if (message.type === "error" && S.onJoinError && !S.sessionId) S.onJoinError(message);
    if (message.type === "signal") note("<-", message.data);
    if (message.type === "signal" && S.peer) {
      S.peer.signal(JSON.stringify(message.data)).catch((err) => S.errors.push(String(err)));
    }
  }

  function play(track) {
    const audio = document.createElement("audio");
    audio.autoplay = true;
    audio.srcObject = new MediaStream([track]);
    document.body.appendChild(audio);
    audio.play().catch(() => {});
  }

  async function join(wsUrl, call, name, options) {
    const opts = options || {};
    S.micStream = await navigator.mediaDevices.getUserMedia({audio: true});
    S.micTrack = S.micStream.getAudioTracks()[0];
    S.micTrack.enabled = false;
    S.ws = new WebSocket(wsUrl);
    await new Promise((resolve, reject) => {
      S.ws.onopen = resolve;
      S.ws.onerror = () => reject(new Error("websocket failed"));
    });
    const joined = new Promise((resolve, reject) => {
      S.onJoined = resolve;
      S.onJoinError = (m) => reject(new Error(`join refused: ${m.code}`));
    });
    S.ws.onmessage = (event) => onMessage(JSON.parse(event.data));
    send({type: "join", call, name});
    const message = await joined;
    S.sessionId = message.session_id;
    S.peer = new window.RTCPeer({
      iceServers: message.ice_servers || [], logger, simulcast: !!opts.simulcast,
    });
    if (opts.generic) {
      // A standard client rather than Mattermost's: without RTCPeer's Firefox
      // workaround (forcing incoming video transceivers to sendrecv), a receive
      // transceiver stays "never used to send", which addTrack may then reuse.
      S.peer.pc.ontrack = (event) => S.peer.emit("stream", new MediaStream([event.track]));
    }
    S.peer.pc.addEventListener("track", (event) => {
      S.trackStreams[event.track.id] = event.streams[0] ? event.streams[0].id : null;
      play(event.track);
    });
    S.peer.on("offer", (d) => send({type: "signal", data: {type: "offer", sdp: d.sdp}}));
    S.peer.on("answer", (d) => send({type: "signal", data: {type: "answer", sdp: d.sdp}}));
    S.peer.on("candidate", (c) => send({type: "signal", data: {
      type: "candidate", candidate: c.toJSON ? c.toJSON() : c}}));
    S.peer.on("connect", () => { S.connected = true; });
    S.peer.on("error", (err) => S.errors.push(String(err)));
    return S.sessionId;
  }

  function unmute() {
    if (S.micAdded) {
      S.peer.replaceTrack(S.micTrack.id, S.micTrack);
    } else {
      S.peer.addTrack(S.micTrack, S.micStream);
      S.micAdded = true;
    }
    S.micTrack.enabled = true;
    send({type: "unmute"});
  }

  function mute() {
    if (S.micAdded) S.peer.replaceTrack(S.micTrack.id, null);
    S.micTrack.enabled = false;
    send({type: "mute"});
  }

  // A client that says it is muted but keeps sending: the server must enforce it.
  function muteSignalOnly() {
    send({type: "mute"});
  }

  async function cameraOn() {
    S.camStream = await navigator.mediaDevices.getUserMedia({video: {width: 320, height: 240}});
    await S.peer.addTrack(S.camStream.getVideoTracks()[0], S.camStream);
    send({type: "video_on"});
  }

  // What other standard clients do, on the same peer connection:
  // mute by turning the microphone's transceiver recvonly (renegotiating) and
  // unmute by turning it back to sendrecv;
  function setMicDirection(direction) {
    const sender = S.peer.senders[S.micTrack.id];
    const transceiver = S.peer.pc.getTransceivers().find((t) => t.sender === sender);
    transceiver.direction = direction;
    send({type: direction === "recvonly" ? "mute" : "unmute"});
  }

  // unmute with a brand-new microphone track after replaceTrack(null);
  async function replaceMicWithNewTrack() {
    const stream = await navigator.mediaDevices.getUserMedia({audio: true});
    const track = stream.getAudioTracks()[0];
    S.peer.replaceTrack(S.micTrack.id, track);
    S.micTrack.stop();
    S.micStream = stream;
    S.micTrack = track;
    send({type: "unmute"});
  }

  // and start the camera with plain pc.addTrack, which reuses a transceiver the
  // server created to send this client someone else's video.
  async function addCameraByAddTrack() {
    S.camStream = await navigator.mediaDevices.getUserMedia({video: {width: 320, height: 240}});
    const sender = S.peer.pc.addTrack(S.camStream.getVideoTracks()[0], S.camStream);
    send({type: "video_on"});
    return S.peer.pc.getTransceivers().find((t) => t.sender === sender).mid;
  }

  // mid -> what each transceiver does now, to prove which path a test took.
  function transceivers() {
    const out = {};
    for (const t of S.peer.pc.getTransceivers()) {
      if (t.mid === null) continue;
      out[t.mid] = {kind: t.receiver.track.kind, direction: t.direction,
                    current: t.currentDirection, sending: !!t.sender.track,
                    mic: !!S.micTrack && t.sender.track === S.micTrack};
    }
    return out;
  }

  // A canvas stands in for getDisplayMedia (headless Chromium has no screen to pick).
  function startScreen() {
    const canvas = document.createElement("canvas");
    canvas.width = 640;
    canvas.height = 360;
    const ctx = canvas.getContext("2d");
    let frame = 0;
    S.screenTimer = setInterval(() => {
      frame += 1;
      ctx.fillStyle = `hsl(${(frame * 7) % 360}, 70%, 50%)`;
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.fillStyle = "#fff";
      ctx.fillText(`frame ${frame}`, 20 + (frame % 500), 180);
    }, 50);
    S.screenStream = canvas.captureStream(20);
    S.peer.addStream(S.screenStream);
    send({type: "screen_on", stream_id: S.screenStream.id});
    return S.screenStream.id;
  }

  function stopScreen() {
    const track = S.screenStream.getVideoTracks()[0];
    S.peer.removeTrack(track.id);
    track.stop();
    clearInterval(S.screenTimer);
    send({type: "screen_off"});
  }

  function leave() {
    send({type: "leave"});
    S.peer.destroy();
    S.ws.close();
  }

  // Packets received per "<session id>/<audio|video|screen>": the server names a
  // publisher's microphone and camera stream by its session id, its screen
  // share's stream screen-<session id>.
  async function inbound() {
    const out = {};
    if (!S.peer || !S.peer.pc) return out;
    const stats = await S.peer.pc.getStats();
    stats.forEach((r) => {
      if (r.type !== "inbound-rtp") return;
      const stream = S.trackStreams[r.trackIdentifier];
      if (!stream) return;
      const key = stream.startsWith("screen-") ? `${stream.slice(7)}/screen` : `${stream}/${r.kind}`;
      out[key] = (out[key] || 0) + (r.packetsReceived || 0);
    });
    return out;
  }

  async function outbound() {
    const out = {};
    const stats = await S.peer.pc.getStats();
    stats.forEach((r) => {
      if (r.type === "outbound-rtp") out[`${r.mid}/${r.kind}`] = r.packetsSent || 0;
    });
    return out;
  }

  window.mm = {
    join, unmute, mute, muteSignalOnly, cameraOn, setMicDirection, replaceMicWithNewTrack,
    addCameraByAddTrack, transceivers, startScreen, stopScreen, leave, inbound, outbound,
    transcript: () => S.transcript,
    state: () => ({sessionId: S.sessionId, connected: S.connected, errors: S.errors,
                   events: S.events.filter((e) => e.type !== "signal" && e.type !== "pong")}),
    pc: () => S.peer && S.peer.pc,
    signals: () => S.events.filter((e) => e.type === "signal"),
    sentSignals: () => S.sent.filter((d) => d.type !== "candidate"),
    sdp: () => (S.peer && S.peer.pc.localDescription ? S.peer.pc.localDescription.sdp : ""),
  };
})();
