"""What kind of server is on the other end: callsctl, rtcd, or Mattermost with the Calls plugin.

The verdicts of `check rtc` depend on it. callsctl's media port answers a
bare STUN Binding request (no USERNAME), so silence there means the packet
did not arrive. Mattermost's rtcd and the Calls plugin's integrated SFU are
built on pion: their single-port mux (pion/ice udp_mux.go, tcp_mux.go) routes
a STUN message only by the ufrag in its USERNAME and drops, without a word,
any that names no live session. Silence from them proves nothing; only a
real session (`check rtcd`, `check webrtc --mattermost`) can.

How each kind is told apart, from what it serves without credentials:

- callsctl: GET /version answers `{"version": ..., "ice": {...}}`
  (callsctl_sfu/api/routes.py).
- rtcd: GET /version answers `{"buildVersion", "buildHash", "goVersion", ...}`
  and GET /system `{"cpu_load": ...}` (mattermost/rtcd service/version.go,
  service/system.go; both registered without authentication in
  service/service.go).
- Mattermost: GET /api/v4/system/ping answers `{"status": "OK", ...}`; the
  Calls plugin's public GET /plugins/com.mattermost.calls/version answers
  `{"version", "build", "rtcd_version"?}` (mattermost-plugin-calls
  server/api_router.go, server/api.go handleGetVersion,
  server/public/version.go). An rtcd_version means calls run on rtcd; its
  absence, on the plugin's integrated SFU. A 404 there means the plugin is
  not installed or disabled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from callsctl.check.rtc import RtcProbe

Kind = Literal["callsctl", "rtcd", "mattermost", "unknown"]
PLUGIN_ID = "com.mattermost.calls"


@dataclass
class ServerKind:
    """The detected kind and what it said about itself."""

    kind: Kind
    version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def is_pion(self) -> bool:
        """rtcd and the Calls plugin's SFU: bare STUN probes are dropped by design."""
        return self.kind in ("rtcd", "mattermost")

    @property
    def label(self) -> str:
        if self.kind == "callsctl":
            return f"callsctl {self.version or '?'}"
        if self.kind == "rtcd":
            return f"rtcd {self.version or '?'} (pion)"
        if self.kind == "mattermost":
            plugin = self.details.get("calls_plugin")
            if not plugin:
                return f"Mattermost {self.version or '?'} without an active Calls plugin"
            rtcd = self.details.get("rtcd_version")
            sfu = f"rtcd {rtcd}" if rtcd else "the plugin's integrated SFU"
            return f"Mattermost {self.version or '?'}, Calls plugin {plugin} on {sfu} (pion)"
        return "an unknown server"


def detect(probe: RtcProbe) -> ServerKind:
    """Ask the API port the unauthenticated questions above; never raises."""
    info = probe.api("/version")
    body = info.body if info.status == 200 and isinstance(info.body, dict) else None
    if body is not None and ("buildVersion" in body or "goVersion" in body):
        system = probe.api("/system")
        details: dict[str, Any] = {"version_info": body}
        if system.status == 200 and isinstance(system.body, dict):
            details["cpu_load"] = system.body.get("cpu_load")
        return ServerKind("rtcd", str(body.get("buildVersion") or "") or None, details)
    if body is not None and "version" in body and ("ice" in body or "udp_port" in body):
        return ServerKind("callsctl", str(body["version"]))
    ping = probe.api("/api/v4/system/ping")
    if ping.status == 200 and isinstance(ping.body, dict) and \
            str(ping.body.get("status", "")).upper() == "OK":
        details = {"ping": ping.body}
        plugin = probe.api(f"/plugins/{PLUGIN_ID}/version")
        if plugin.status == 200 and isinstance(plugin.body, dict):
            details["calls_plugin"] = plugin.body.get("version")
            details["rtcd_version"] = plugin.body.get("rtcd_version") or None
        else:
            details["calls_plugin"] = None
            details["calls_plugin_status"] = plugin.status
        version = ping.body.get("version") or ping.body.get("ServerVersion")
        return ServerKind("mattermost", str(version) if version else None, details)
    if body is not None and "version" in body:
        return ServerKind("callsctl", str(body["version"]))
    return ServerKind("unknown")
