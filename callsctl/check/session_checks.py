"""The stages of a real Calls session after signaling, as check results with fixes.

Shared by `check rtcd` and `check webrtc --mattermost`: both end up with a
`CallsPeer` that sent an offer through the server's signaling. From there the
stages are the same: answer, the server's candidates, the ICE pair, DTLS,
media, RTT, and the ICE-TCP fallback. When ICE fails, authenticated
connectivity checks (`ice_probe`) to the advertised address and to the
address the operator reaches the server at tell the usual causes apart:

- advertised address silent, reached address answers: the ICE host override
  (rtcd `rtc.ice_host_override`, plugin `ICEHostOverride`) is wrong;
- both silent over UDP, ICE-TCP answers: UDP is blocked on the path;
- everything silent: the media port is not reachable at all.
"""

from __future__ import annotations

import asyncio
import ipaddress
import statistics
import time
from dataclasses import dataclass
from typing import Any

from callsctl.check.callspeer import CallsPeer, IceProbe, ice_probe
from callsctl.check.result import CheckResult


@dataclass(frozen=True)
class Naming:
    """How the fixes name the settings of the server kind under test."""

    override: str       # the ICE host override setting
    udp_port: str       # the UDP media port setting
    tcp_port: str       # the ICE-TCP port setting
    log: str            # whose log to read


RTCD_NAMES = Naming("rtc.ice_host_override (RTCD_RTC_ICEHOSTOVERRIDE)", "rtc.ice_port_udp",
                    "rtc.ice_port_tcp", "rtcd's log")
PLUGIN_NAMES = Naming("ICE Host Override (System Console > Plugins > Calls)",
                      "RTC Server Port (UDP)", "RTC Server Port (TCP)",
                      "the Mattermost server log (Calls plugin)")


async def wait_answer(peer: CallsPeer, timeout: float) -> bool:
    """True once the answer and at least one server candidate arrived (then a moment more)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if peer.answer_at is not None and peer.server_candidates:
            await asyncio.sleep(0.3)  # trickled stragglers (TCP after UDP)
            return True
        await asyncio.sleep(0.05)
    return peer.answer_at is not None


def answer_result(peer: CallsPeer, answered: bool, names: Naming) -> CheckResult:
    if not answered or peer.answer_at is None or peer.offer_at is None:
        return CheckResult("offer/answer", "fail", "the SFU did not answer our offer",
                           fix=f"signaling reached the server but no SDP answer came back: read "
                           f"{names.log} (session errors, rtcd connection)")
    return CheckResult("offer/answer", "pass", "offer sent, answer received",
                       figure=f"{(peer.answer_at - peer.offer_at) * 1000:.0f} ms")


def candidates_result(peer: CallsPeer, target_ip: str | None) -> CheckResult:
    cands = peer.server_candidates
    details = {"server_candidates": [c.as_text() for c in cands]}
    if not cands:
        return CheckResult("candidates", "fail", "the server sent no ICE candidates",
                           fix="the SFU has no usable address: check its ICE settings",
                           details=details)
    notes = []
    reached = _ip(target_ip) if target_ip else None
    if reached is not None and reached.is_global:
        for cand in cands:
            address = _ip(cand.host)
            if address is not None and not address.is_global:
                notes.append(f"{cand.host} is not a public address, but the server was reached "
                             f"at public {target_ip}")
    text = ", ".join(c.as_text() for c in cands)
    return CheckResult("candidates", "warn" if notes else "pass",
                       f"server advertises {text}" + (f"; {'; '.join(notes)}" if notes else ""),
                       figure=str(len(cands)), fix="set the ICE host override to the public "
                       "address clients reach" if notes else None, details=details)


async def probes(peer: CallsPeer, target_ip: str | None, timeout: float) -> dict[str, IceProbe]:
    """Authenticated checks to each advertised address, and to the reached address."""
    jobs: dict[str, Any] = {}
    for cand in peer.server_candidates:
        if cand.type != "host" and cand.type != "srflx":
            continue
        key = f"{cand.protocol} {cand.host}:{cand.port}"
        if key not in jobs and (cand.protocol == "udp" or cand.tcptype in (None, "passive")):
            jobs[key] = (cand.protocol, (cand.host, cand.port))
        if target_ip and cand.host != target_ip:
            alt = f"{cand.protocol} {target_ip}:{cand.port}"
            if alt not in jobs:
                jobs[alt] = (cand.protocol, (target_ip, cand.port))
    keys = list(jobs)
    outcomes = await asyncio.gather(*(asyncio.to_thread(ice_probe, jobs[k][0], jobs[k][1], peer,
                                                        min(timeout, 3.0)) for k in keys))
    return dict(zip(keys, outcomes, strict=True))


def ice_result(peer: CallsPeer, state: str, elapsed: float, checks: dict[str, IceProbe],
               target_ip: str | None, names: Naming) -> CheckResult:
    """The ICE pair chosen, or why none was."""
    details: dict[str, Any] = {"probes": {k: v.as_details() for k, v in checks.items()},
                               "ice_state": peer.ice_state()}
    if state == "connected":
        pair = peer.selected_pair() or {}
        details["candidate_pair"] = pair
        return CheckResult("ice", "pass" if pair.get("protocol") == "udp" else "warn",
                           f"pair chosen over {pair.get('protocol', '?')}: "
                           f"{pair.get('local', '?')} ({pair.get('local_type', '?')}) -> "
                           f"{pair.get('remote', '?')} ({pair.get('remote_type', '?')})",
                           figure=f"{elapsed * 1000:.0f} ms", details=details)
    udp_adv = {k: v for k, v in checks.items() if k.startswith("udp ") and
               (target_ip is None or f" {target_ip}:" not in k)}
    udp_reached = {k: v for k, v in checks.items() if k.startswith("udp ") and target_ip and
                   f" {target_ip}:" in k}
    tcp_ok = [k for k, v in checks.items() if k.startswith("tcp ") and v.ok]
    adv_ok = [k for k, v in udp_adv.items() if v.ok]
    reached_ok = [k for k, v in udp_reached.items() if v.ok]
    what = "timed out" if state == "timeout" else "failed"
    if udp_adv and not adv_ok and reached_ok:
        details["verdict"] = "wrong ice host override"
        adv = ", ".join(k.split(" ", 1)[1] for k in udp_adv)
        return CheckResult("ice", "fail", f"ICE {what}: the server advertises {adv}, which does "
                           f"not answer, while {reached_ok[0].split(' ', 1)[1]} (the address you "
                           "reach it at) answers this session's connectivity check",
                           figure="wrong address",
                           fix=f"set {names.override} to {target_ip} (the address clients "
                           "reach), or fix the port forward to the advertised address",
                           details=details)
    if not adv_ok and not reached_ok and tcp_ok:
        details["verdict"] = "udp blocked"
        return CheckResult("ice", "fail", f"ICE {what}: no UDP connectivity check to the media "
                           f"port is answered, but ICE-TCP ({tcp_ok[0].split(' ', 1)[1]}) is: "
                           "UDP is blocked between here and the server",
                           figure="UDP blocked",
                           fix=f"open UDP on the media port ({names.udp_port}) in every firewall "
                           "and security group on the path; until then clients fall back to TCP",
                           details=details)
    if adv_ok or reached_ok:
        details["verdict"] = "udp answers, ice failed"
        return CheckResult("ice", "fail", f"ICE {what} although the media port answers this "
                           "session's connectivity checks over UDP", figure=state,
                           fix=f"a middlebox may pass STUN but not DTLS/RTP; read {names.log}",
                           details=details)
    details["verdict"] = "media port unreachable"
    return CheckResult("ice", "fail", f"ICE {what}: neither UDP nor TCP connectivity checks to "
                       "the media port are answered", figure="unreachable",
                       fix=f"open the media port ({names.udp_port}, {names.tcp_port}) to clients "
                       f"and check that {names.override} is the address clients reach",
                       details=details)


def tcp_fallback_result(checks: dict[str, IceProbe], names: Naming) -> CheckResult:
    tcp = {k: v for k, v in checks.items() if k.startswith("tcp ")}
    details = {"probes": {k: v.as_details() for k, v in tcp.items()}}
    if not tcp:
        return CheckResult("ice-tcp", "warn", "the server offers no ICE-TCP candidate: clients "
                           "behind UDP-blocking firewalls cannot connect", figure="none",
                           fix=f"enable ICE-TCP ({names.tcp_port}) or offer TURN over TCP/TLS",
                           details=details)
    good = [k for k, v in tcp.items() if v.ok]
    if good:
        probe = tcp[good[0]]
        return CheckResult("ice-tcp", "pass", f"this session's connectivity check over ICE-TCP "
                           f"(RFC 4571) answered on {good[0].split(' ', 1)[1]}",
                           figure=f"{probe.rtt_ms:.1f} ms" if probe.rtt_ms else None,
                           details=details)
    first = next(iter(tcp.values()))
    return CheckResult("ice-tcp", "warn", f"ICE-TCP does not answer: {first.error}",
                       figure="no answer", fix=f"open TCP on {names.tcp_port}; only clients whose "
                       "firewall blocks UDP need it", details=details)


def dtls_result(peer: CallsPeer) -> CheckResult:
    state = peer.dtls_state()
    if state == "connected":
        return CheckResult("dtls", "pass", "DTLS handshake done; SRTP keys and SCTP (calls-dc) up")
    return CheckResult("dtls", "fail", f"DTLS state {state}", fix="ICE connected but DTLS did "
                       "not: a middlebox that drops large UDP datagrams or fragments (MTU)")


async def media_result(peers: list[CallsPeer], seconds: float) -> list[CheckResult]:
    """Audio both ways (two peers hear each other), the server's receiver report, RTT."""
    before = [p.audio_frames for p in peers]
    await asyncio.sleep(seconds)
    got = [p.audio_frames - b for p, b in zip(peers, before, strict=True)]
    reports = [await p.rtcp_report() for p in peers]
    rtts = [r for p in peers for r in p.dc_rtts]
    details: dict[str, Any] = {"frames_received": got, "server_receiver_reports": reports}
    results = []
    upstream = all(r is not None for r in reports)
    if len(peers) > 1:
        if min(got) > 0:
            results.append(CheckResult("media", "pass", f"audio both ways through the SFU: "
                                       f"{got[0]} and {got[1]} frames in {seconds:g} s",
                                       figure=f"{min(got)} frames", details=details))
        else:
            side = "the first participant hears nothing" if got[0] == 0 else \
                "the second participant hears nothing"
            results.append(CheckResult("media", "fail", f"audio does not flow both ways: {side}"
                                       + ("" if upstream else "; no receiver report from the "
                                          "server either"), figure="no audio",
                                       fix="ICE and DTLS work but media does not: a stateful "
                                       "firewall timing out UDP, or the SFU not forwarding "
                                       "(read its log)", details=details))
    else:
        if upstream:
            results.append(CheckResult("media", "pass", "the server acknowledges our audio "
                                       "(RTCP receiver report)", figure=f"lost "
                                       f"{reports[0]['packets_lost']}", details=details))  # type: ignore[index]
        else:
            results.append(CheckResult("media", "warn", "no RTCP receiver report for our audio "
                                       f"within {seconds:g} s", figure="no report",
                                       details=details))
    rr = [r["rtt_ms"] for r in reports if r and r.get("rtt_ms") is not None]
    if rtts or rr:
        value = statistics.median(rtts) * 1000 if rtts else statistics.median(rr)
        source = "calls-dc ping/pong" if rtts else "RTCP"
        results.append(CheckResult("rtt", "pass", f"round trip to the SFU ({source})",
                                   figure=f"{value:.1f} ms",
                                   details={"dc_rtt_ms": [round(r * 1000, 1) for r in rtts],
                                            "rtcp_rtt_ms": rr}))
    else:
        results.append(CheckResult("rtt", "warn", "no round trip measured (no pong on calls-dc, "
                                   "no RTCP RTT)", figure="unknown"))
    return results


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
