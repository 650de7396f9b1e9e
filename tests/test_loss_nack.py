"""Video under packet loss: the SFU answers NACKs from its ring buffer.

The scenario runs in a network namespace this test creates, where nftables
drops 5% of UDP datagrams at random (`numgen random`; this kernel has no
netem). It runs twice in one test, NACK handling on and off, and compares what
the viewer could decode.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from tests.support.helpers import REPO, have, is_root

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not is_root(), reason="needs root for network namespaces"),
              pytest.mark.skipif(not (have("ip") and have("nft")),
                                 reason="needs iproute2 and nftables")]

LOSS_RULES = ("add table inet loss; add chain inet loss out { type filter hook output "
              "priority 0; }; add rule inet loss out meta l4proto udp numgen random mod 100 < 5 "
              "drop")


@pytest.fixture
def lossy_namespace():
    name = f"cs-loss-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        # A veth address, so the participants have a non-loopback host candidate.
        for command in (["ip", "link", "set", "lo", "up"],
                        ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                        ["ip", "addr", "add", "10.213.0.1/24", "dev", "v0"],
                        ["ip", "link", "set", "v0", "up"], ["ip", "link", "set", "v1", "up"],
                        ["nft", LOSS_RULES]):
            subprocess.run(["ip", "netns", "exec", name, *command], check=True,
                           capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run_scenario(namespace: str, nack_buffer: int) -> dict:
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "tests/scenarios/video_loss.py",
         "--nack-buffer", str(nack_buffer), "--seconds", "8"],
        capture_output=True, text=True, timeout=90, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_nacks_are_answered_and_video_survives_loss(lossy_namespace):
    with_nack = run_scenario(lossy_namespace, 256)
    without = run_scenario(lossy_namespace, 0)
    assert with_nack["nacks_received"] > 0 and with_nack["nacks_answered"] > 0, with_nack
    assert with_nack["nacks_sent_upstream"] > 0, with_nack
    assert without["nacks_answered"] == 0, without
    # The viewer sees the loss repaired: its own RTP statistics count far fewer
    # missing packets with NACK than without (two lossy hops, ~10 % unrepaired).
    assert with_nack["viewer_received"] > 0 and without["viewer_received"] > 0
    assert with_nack["viewer_loss"] < without["viewer_loss"] / 2, (with_nack, without)
    # And its decoder is never worse off (aiortc's own decoder can stall on a lost
    # keyframe either way, so decoded frames are compared, not required to differ).
    assert with_nack["frames"] >= without["frames"], (with_nack, without)
