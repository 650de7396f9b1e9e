"""Simulcast from a real Chromium publisher: both layers arrive, the viewer gets one.

The publisher is a page on the server's origin that sends an animated canvas as
a screen share with two encodings, rids `l` (half resolution) and `h`, as the
Mattermost web app does; the viewer is the ordinary web client.
"""

from __future__ import annotations

import os
import time

import httpx
import pytest

from callsctl_sfu.rtc import simulcast
from tests.support.browser import BrowserParticipant
from tests.support.chromium import CHROMIUM

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                 reason=f"{CHROMIUM} is not installed")]

PUBLISH_JS = """
async ([token, call]) => {
  const st = window.pub = {events: [], errors: []};
  const canvas = document.createElement('canvas');
  canvas.width = 640; canvas.height = 360;
  const g = canvas.getContext('2d');
  setInterval(() => {  // moving noise: a real bitrate on both layers
    for (let i = 0; i < 40; i++) {
      g.fillStyle = `hsl(${Math.random() * 360},80%,50%)`;
      g.fillRect(Math.random() * 640, Math.random() * 360, 60, 60);
    }
  }, 50);
  const stream = canvas.captureStream(15);
  const ws = new WebSocket(`ws://${location.host}/ws?token=${token}`);
  const send = m => ws.send(JSON.stringify(m));
  let pc, chain = Promise.resolve();
  ws.onmessage = ev => {
    const m = JSON.parse(ev.data); st.events.push(m.type);
    if (m.type === 'joined') chain = chain.then(async () => {
      pc = new RTCPeerConnection({bundlePolicy: 'max-bundle'});
      pc.onicecandidate = e => e.candidate &&
        send({type: 'signal', data: {type: 'candidate', candidate: e.candidate.toJSON()}});
      pc.addTransceiver(stream.getVideoTracks()[0], {direction: 'sendonly', streams: [stream],
        sendEncodings: [{rid: 'l', scaleResolutionDownBy: 2, maxBitrate: 250000},
                        {rid: 'h', maxBitrate: 1500000}]});
      pc.createDataChannel('calls-dc');
      send({type: 'screen_on', stream_id: stream.id});
      await pc.setLocalDescription(await pc.createOffer());
      send({type: 'signal', data: {type: 'offer', sdp: pc.localDescription.sdp}});
    });
    else if (m.type === 'signal') chain = chain.then(async () => {
      try {
        if (m.data.type === 'offer') {
          await pc.setRemoteDescription(m.data);
          await pc.setLocalDescription(await pc.createAnswer());
          send({type: 'signal', data: {type: 'answer', sdp: pc.localDescription.sdp}});
        } else if (m.data.type === 'answer') await pc.setRemoteDescription(m.data);
      } catch (e) { st.errors.push(String(e)); }
    });
    else if (m.type === 'error') st.errors.push(JSON.stringify(m));
  };
  ws.onopen = () => send({type: 'join', call, name: 'presenter'});
}
"""

SCREEN_WIDTH_JS = """
async () => {
  const pc = window.callsctl && window.callsctl.pc;
  if (!pc) return null;
  let best = null;
  (await pc.getStats()).forEach(s => {
    if (s.type === 'inbound-rtp' && s.kind === 'video' && s.framesDecoded > 0)
      best = {width: s.frameWidth, frames: s.framesDecoded};
  });
  return best;
}
"""


def test_simulcast_layers_arrive_and_the_viewer_gets_the_best(browser, serve_factory):  # noqa: F811
    server = serve_factory(env={"CALLSCTL_ENABLE_SIMULCAST": "true"})
    context = browser.new_context()
    publisher = context.new_page()
    publisher.goto(f"{server.api_url}/version")
    publisher.evaluate(PUBLISH_JS, [server.token("room", "presenter"), "room"])
    viewer = BrowserParticipant(browser, "viewer")
    try:
        viewer.join(server.join_url("room", "viewer"), "Viewer")
        # The viewer's bandwidth estimate (REMB) starts low and can dip on a loaded
        # machine; the server then moves it down to `l` and tries `h` again after
        # simulcast.PROBE_AFTER seconds. So wait for the viewer on `h` in the same
        # snapshot as the 640-pixel frames, with room for such a round.
        deadline = time.monotonic() + 25 + 2 * simulcast.PROBE_AFTER
        snapshot, seen = [], None
        while time.monotonic() < deadline:
            snapshot = httpx.get(f"{server.api_url}/stats", timeout=5).json()["simulcast"]
            seen = viewer.page.evaluate(SCREEN_WIDTH_JS)
            layers = snapshot[0]["layers_bps"] if snapshot else {}
            on = list(snapshot[0]["receivers"].values()) if snapshot else []
            if seen and seen["width"] == 640 and seen["frames"] > 20 and on == ["h"] and \
                    all(layers.get(rid, 0) > 0 for rid in ("l", "h")):
                break
            time.sleep(0.5)
        errors = publisher.evaluate("window.pub.errors")
        assert not errors, errors
        assert snapshot and set(snapshot[0]["layers_bps"]) == {"l", "h"}, snapshot
        assert all(bps > 0 for bps in snapshot[0]["layers_bps"].values()), snapshot
        assert seen and seen["width"] == 640 and seen["frames"] > 20, (seen, snapshot)
        assert list(snapshot[0]["receivers"].values()) == ["h"], snapshot
    finally:
        viewer.context.close()
        context.close()
