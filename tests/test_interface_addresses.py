"""This host's addresses, as a server bound to 0.0.0.0 advertises them (rtc/connectivity.py).

They are read over rtnetlink (rtc/hostaddrs.py), or with getifaddrs(3) through
ifaddr where netlink is refused, not with psutil (an idle server's memory).
The namespace tests build a namespace of their own with known addresses: two
IPv4 addresses on one interface, an IPv4 on a second one, a global IPv6
address and the kernel's link-local ones. Both readings must be psutil's,
address for address and in the same order, and a real `callsctl serve`
started there must advertise the first non-loopback IPv4 address.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callsctl_sfu.rtc import hostaddrs
from tests.support.helpers import REPO, have, is_root

needs_namespaces = [
    pytest.mark.root,
    pytest.mark.skipif(not is_root(), reason="needs root for network namespaces"),
    pytest.mark.skipif(not have("ip"), reason="needs iproute2"),
]

PROBE = r"""
import json, socket, psutil
from callsctl_sfu.rtc import connectivity as c, hostaddrs
seen = [(int(f), a) for f, a in hostaddrs.via_netlink()]
fallback = [(int(f), a) for f, a in hostaddrs.via_ifaddr()]
theirs = [(int(i.family), i.address.split("%", 1)[0]) for items in psutil.net_if_addrs().values()
          for i in items if i.family in (socket.AF_INET, socket.AF_INET6)]
print(json.dumps({"seen": seen, "fallback": fallback, "psutil": theirs,
                  "local": c.local_address("0.0.0.0"), "v6": c._ipv6_addresses("::"),
                  "ips": c._local_ips("0.0.0.0")}))
"""


def sh(*args: str, ns: str | None = None) -> str:
    cmd = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=REPO)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


@pytest.fixture
def namespace() -> Iterator[str]:
    """A namespace with lo and a veth pair: cia0 (two IPv4, one global IPv6), cib0 (one IPv4)."""
    ns = f"cs-ifa-{os.getpid()}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "set", "lo", "up", ns=ns)
        # The peer (cia0) is made first, so it has the lower index: the kernel lists it first.
        sh("ip", "link", "add", "cib0", "type", "veth", "peer", "name", "cia0", ns=ns)
        sh("ip", "addr", "add", "10.77.0.5/24", "dev", "cia0", ns=ns)
        sh("ip", "addr", "add", "10.77.1.5/24", "dev", "cia0", ns=ns)
        sh("ip", "addr", "add", "10.78.0.9/24", "dev", "cib0", ns=ns)
        sh("ip", "-6", "addr", "add", "2001:db8:77::5/64", "dev", "cia0", "nodad", ns=ns)
        for name in ("cia0", "cib0"):
            sh("ip", "link", "set", name, "up", ns=ns)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _marked(test):  # the namespace tests' marks, applied one by one
    for mark in needs_namespaces:
        test = mark(test)
    return test


@_marked
def test_connectivity_sees_what_psutil_sees_in_the_same_order(namespace: str) -> None:
    found = json.loads(sh(sys.executable, "-c", PROBE, ns=namespace))
    assert found["seen"] == found["psutil"]  # netlink
    assert found["fallback"] == found["psutil"]  # getifaddrs through ifaddr
    v4 = [address for family, address in found["seen"] if family == 2]
    assert v4 == ["127.0.0.1", "10.77.0.5", "10.77.1.5", "10.78.0.9"]
    assert found["local"] == ["10.77.0.5", "interface"]
    assert found["v6"] == ["2001:db8:77::5"]  # neither ::1 nor the link-local ones
    assert any(address.startswith("fe80:") for address in found["ips"])  # scope stripped
    assert "%" not in "".join(found["ips"])
    assert {"10.77.0.5", "10.77.1.5", "10.78.0.9", "::1", "2001:db8:77::5"} <= set(found["ips"])


@_marked
def test_a_server_bound_to_all_addresses_advertises_the_first_interface_address(
        namespace: str, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    env = {**os.environ, "CALLSCTL_STUN_SERVER": ""}
    with log.open("w") as out:
        server = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, "-m", "callsctl", "serve",
             "--api-port", "18045", "--udp-port", "18443", "--data-dir", str(tmp_path / "d")],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while "advertising" not in log.read_text() and time.monotonic() < deadline:
            assert server.poll() is None, log.read_text()
            time.sleep(0.2)
        line = next(line for line in log.read_text().splitlines() if "advertising" in line)
        assert "advertising 10.77.0.5 udp 18443" in line and "(interface" in line, line
    finally:
        server.terminate()
        server.wait(15)


def _message(kind: int, body: bytes, sequence: int = 1) -> bytes:
    return hostaddrs.NLMSG_HEADER.pack(hostaddrs.NLMSG_HEADER.size + len(body), kind, 0,
                                       sequence, 0) + body


def test_a_netlink_error_or_a_truncated_answer_is_an_oserror_and_ifaddr_answers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    found: list = []
    refused = _message(hostaddrs.NLMSG_ERROR, struct.pack("=i", -errno.EPERM) + bytes(16))
    with pytest.raises(OSError) as error:
        hostaddrs._parse(refused, 1, found)
    assert error.value.errno == errno.EPERM
    acknowledged = _message(hostaddrs.NLMSG_ERROR, struct.pack("=i", 0) + bytes(16))
    assert hostaddrs._parse(acknowledged, 1, found)  # an acknowledgement ends the dump
    with pytest.raises(OSError):
        hostaddrs._parse(_message(hostaddrs.RTM_NEWADDR, bytes(8))[:-4] + b"\xff" * 20, 1, found)
    assert found == []

    def refuse() -> list:
        raise PermissionError(errno.EPERM, "netlink refused")

    monkeypatch.setattr(hostaddrs, "via_netlink", refuse)
    assert hostaddrs.interface_addresses() == hostaddrs.via_ifaddr()


def test_an_address_answer_names_its_local_address_not_its_peer() -> None:
    """A point-to-point IPv4 address carries the peer in IFA_ADDRESS: ours is IFA_LOCAL."""
    def attr(kind: int, payload: bytes) -> bytes:
        return hostaddrs.RTATTR.pack(hostaddrs.RTATTR.size + len(payload), kind) + payload

    body = (hostaddrs.IFADDRMSG.pack(socket.AF_INET, 32, 0, 0, 7)
            + attr(hostaddrs.IFA_ADDRESS, socket.inet_aton("10.9.9.1"))
            + attr(hostaddrs.IFA_LOCAL, socket.inet_aton("10.9.9.2")))
    other = _message(hostaddrs.RTM_NEWADDR, body, sequence=2)  # another dump's: ignored
    found: list = []
    done = hostaddrs._parse(_message(hostaddrs.RTM_NEWADDR, body) + other
                            + _message(hostaddrs.NLMSG_DONE, bytes(4)), 1, found)
    assert done and found == [(7, (socket.AF_INET, "10.9.9.2"))]
