// Live captions in the web client (docs/transcription.md), kept apart from app.js:
// app.js hands every signaling message to `callsctl:message` events and exposes
// window.callsctl (state, send); this file adds the caption area and the host's
// Captions button, and shows each `caption` under the speaker's name.
(() => {
  "use strict";
  const SHOW_MS = 10000; // a caption stays this long unless its speaker says more
  const lines = new Map(); // session id -> {row, timer}
  let on = false;
  let available = false; // the server offers live captions (joined.captions_available)
  let area = null;
  let button = null;

  function api() { return window.callsctl; }

  function ensureUi() {
    if (area) return;
    area = document.createElement("section");
    area.id = "captions";
    area.className = "captions";
    area.setAttribute("aria-live", "polite");
    area.setAttribute("aria-label", "live captions");
    area.hidden = true;
    button = document.createElement("button");
    button.id = "captions-toggle";
    button.type = "button";
    button.hidden = true;
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("click", () => {
      const calls = api();
      if (calls && calls.send) calls.send({type: on ? "captions_stop" : "captions_start"});
    });
    const controls = document.querySelector("#record");
    if (controls && controls.parentNode) controls.parentNode.insertBefore(button, controls.nextSibling);
    else document.body.append(button);
    (document.querySelector("main") || document.body).append(area);
  }

  function render() {
    ensureUi();
    const calls = api();
    const isHost = !!calls && calls.host !== null && calls.host === calls.sessionId;
    button.hidden = !isHost || !(available || on);
    button.textContent = on ? "Stop captions" : "Captions";
    button.setAttribute("aria-pressed", String(on));
    area.hidden = !on && lines.size === 0;
  }

  function showCaption(msg) {
    ensureUi();
    let line = lines.get(msg.session_id);
    if (!line) {
      const row = document.createElement("p");
      row.className = "caption";
      row.dataset.sessionId = msg.session_id;
      const name = document.createElement("span");
      name.className = "caption-name";
      const text = document.createElement("span");
      text.className = "caption-text";
      row.append(name, text);
      area.append(row);
      line = {row, timer: null};
      lines.set(msg.session_id, line);
    }
    line.row.querySelector(".caption-name").textContent = `${msg.name}: `;
    line.row.querySelector(".caption-text").textContent = msg.text; // text, never HTML
    clearTimeout(line.timer);
    line.timer = setTimeout(() => {
      line.row.remove();
      lines.delete(msg.session_id);
      render();
    }, SHOW_MS);
    render();
  }

  window.addEventListener("callsctl:message", (event) => {
    const msg = event.detail || {};
    switch (msg.type) {
      case "joined": on = !!msg.captions; available = !!msg.captions_available; render(); break;
      case "call_captions": on = !!msg.captions; render(); break;
      case "call_host_changed": render(); break;
      case "caption": showCaption(msg); break;
      case "user_left": {
        const line = lines.get(msg.session_id);
        if (line) { clearTimeout(line.timer); line.row.remove(); lines.delete(msg.session_id); }
        break;
      }
      default: break;
    }
  });
})();
