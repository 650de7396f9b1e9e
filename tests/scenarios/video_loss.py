"""One camera publisher and one viewer through a local serve, for a fixed time.

Run by tests/test_loss_nack.py inside a network namespace whose loopback has
`tc netem loss`; prints one JSON line: frames the viewer decoded and the
server's RTCP counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from callsctl_sfu.client.participant import Participant  # noqa: E402
from callsctl_sfu.datadir import load_or_create_secret  # noqa: E402
from callsctl_sfu.tokens import issue_token  # noqa: E402


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def main(nack_buffer: int, seconds: float) -> dict:
    api, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    data_dir = tempfile.mkdtemp(prefix="callsctl-loss-")
    server = subprocess.Popen(
        [sys.executable, "-m", "callsctl", "serve", "--bind", "127.0.0.1", "--api-port",
         str(api), "--udp-port", str(udp), "--data-dir", data_dir, "--log-level", "warning"],
        cwd=REPO, env={"CALLSCTL_NACK_BUFFER_SIZE": str(nack_buffer), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{api}"
    people = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        secret = load_or_create_secret(data_dir)
        camera = Participant(f"ws://127.0.0.1:{api}/ws", issue_token(secret, "r", "cam"), "r",
                             "cam", video=True)
        viewer = Participant(f"ws://127.0.0.1:{api}/ws", issue_token(secret, "r", "view"), "r",
                             "view", send_audio=False)
        people = [camera, viewer]
        for person in people:
            await person.join(20)
        for person in people:
            await person.wait_connected(20)
        await asyncio.sleep(2)
        start = viewer.media_frames[(camera.session_id, "video")]
        await asyncio.sleep(seconds)
        frames = viewer.media_frames[(camera.session_id, "video")] - start
        forwarding = httpx.get(f"{base}/stats", timeout=5).json()["forwarding"]
        # What the viewer's own RTP statistics say it never got (RFC 3550 A.3):
        # retransmissions that arrive in time fill the gaps, so this is the loss
        # its decoder really had to live with.
        report = await viewer.pc.getStats()
        video = [s for s in report.values() if s.type == "inbound-rtp" and s.kind == "video"]
        received = sum(s.packetsReceived for s in video)
        lost = sum(max(0, s.packetsLost) for s in video)
        return {"frames": frames, "frames_before": start, "seconds": seconds,
                "viewer_received": received, "viewer_lost": lost,
                "viewer_loss": lost / (received + lost) if received + lost else None,
                **forwarding}
    finally:
        for person in people:
            await person.close()
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--nack-buffer", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.nack_buffer, args.seconds))))
