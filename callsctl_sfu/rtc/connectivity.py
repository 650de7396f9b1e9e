"""What clients are told to connect to, and the extra sockets that make it reachable.

Opened once at startup, after the IPv4 UDP media socket (server.py), this:

1. opens the optional paths: ICE-TCP (one listening socket, rtc/icetcp.py) and
   IPv6 UDP (a second, v6-only UDP socket on the same port number — chosen over
   one dual-stack socket so the IPv4 socket, its buffers and its hot path stay
   exactly as they are, and IPv4 peers never appear as ::ffff: mapped addresses);
2. decides the advertised address, in this order (the seed deployment guide's
   rules for rtcd):
   - `ice_host_override` (IP, or host name resolved now) — the operator knows;
   - else the public address a STUN server reports for the media socket
     (`stun_server`, at most 3 s, once). When it differs from the local
     address the server is behind NAT: it advertises the local address as a
     host candidate AND the public one as a server-reflexive candidate
     (related address = the local one), as rtcd does. Clients on the same
     network reach the first, everyone else the second, and ICE picks what
     works; advertising only the public address would break clients inside
     the NAT whose router does not hairpin;
   - else the bind address, or the first non-loopback interface address.
   Discovery is skipped when the server is bound to loopback and the STUN
   server is not on loopback: such a socket cannot reach it, and nobody
   outside can reach the server anyway;
3. applies `ice_host_port_override` (one port, or the entry for one of this
   host's addresses) to the port of the address clients outside use — the
   override, the STUN-discovered address, or the only address there is — for
   UDP and TCP alike (port forwards and load balancers map both);
4. gives the UDP mux the candidate list every session advertises.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

from callsctl_sfu.config import ServeConfig
from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.iceconfig import parse_host_port, parse_ice_servers, parse_port_override
from callsctl_sfu.rtc import pktinfo
from callsctl_sfu.rtc.hostaddrs import interface_addresses
from callsctl_sfu.rtc.icetcp import TcpMux
from callsctl_sfu.rtc.mux import CandidateSpec, UdpMux
from callsctl_sfu.rtc.publicaddr import DISCOVERY_TIMEOUT, Discovery, discover_public_address

log = logging.getLogger("callsctl_sfu.rtc.connectivity")


class ConnectivityError(CallsctlError, RuntimeError):
    """A connectivity setting cannot be honoured; the message is one line with the fix."""
    code = "bad_connectivity"


def size_udp_buffers(sock: socket.socket, size: int) -> list[OSError]:
    """Ask for `size` bytes of receive and send buffer on a media UDP socket.

    The one place both media sockets are sized (the IPv4 one in server.py, the
    IPv6 one here). Returns the failures; the kernel may also grant less than
    asked without failing, which the caller checks with what it reads back.
    """
    errors: list[OSError] = []
    if size <= 0:
        return errors
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError as exc:
            errors.append(exc)
    return errors


@dataclass(frozen=True)
class Advertised:
    """The address clients outside should reach, and why it was chosen."""

    host: str
    port: int
    source: str  # override | stun | bind | interface | loopback
    tcp_port: int | None = None


@dataclass
class Connectivity:
    """The optional media paths and the advertised candidates of a running server."""

    config: ServeConfig
    mux: UdpMux
    udp_port: int
    advertised: Advertised = field(default_factory=lambda: Advertised("127.0.0.1", 0, "loopback"))
    tcp: TcpMux | None = None
    tcp_port: int | None = None
    ipv6_hosts: list[str] = field(default_factory=list)
    discovery: Discovery | None = None
    specs: list[CandidateSpec] = field(default_factory=list)
    udp_buffer_size: int = 0  # the server's udp_buffer_size (0: the kernel's default)

    @classmethod
    async def open(cls, config: ServeConfig, mux: UdpMux, udp_port: int,
                   udp_buffer_size: int = 0) -> Connectivity:
        """Open the extra sockets and compute the candidates; closes what it opened on error.

        udp_buffer_size is passed in rather than read from config: the server reads
        it once and sizes every media UDP socket (IPv4 there, IPv6 here) with it.
        """
        self = cls(config, mux, udp_port, udp_buffer_size=udp_buffer_size)
        try:
            await self._open()
        except BaseException:
            self.close()
            raise
        return self

    async def _open(self) -> None:
        config = self.config
        bind = ipaddress.ip_address(config.bind)
        if config.enable_ipv6:
            if bind.version == 6:
                raise ConnectivityError("enable_ipv6 needs an IPv4 bind address: bind 0.0.0.0 "
                                        "(or 127.0.0.1) and IPv6 is added on :: (or ::1)")
            await self._open_ipv6_udp("::1" if bind.is_loopback else "::")
        if config.ice_tcp:
            await self._open_tcp(bind.is_loopback)
        self.advertised = await self._choose_advertised()
        self.specs = self._candidate_specs()
        _warn_about_ice_servers(config)
        self.mux.candidate_specs = self.specs
        self.mux.advertised = (self.advertised.host, self.advertised.port)

    # -- sockets ------------------------------------------------------------------------

    async def _open_ipv6_udp(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        sock: socket.socket | None = None
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # server.py already warned if the kernel caps the IPv4 socket's buffers.
            size_udp_buffers(sock, self.udp_buffer_size)
            sock.bind((host, self.udp_port))
            sock.setblocking(False)
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise ConnectivityError(_bind_problem("UDP (IPv6)", host, self.udp_port, exc,
                                                  "--udp-port, or leave out --enable-ipv6")
                                    ) from None
        await loop.create_datagram_endpoint(lambda: _Ipv6Intake(self.mux), sock=sock)
        self.ipv6_hosts = _ipv6_addresses(host)
        if not self.ipv6_hosts:
            log.warning("enable_ipv6: no global or unique-local IPv6 address on this host; "
                        "no IPv6 candidates are advertised")

    async def _open_tcp(self, loopback: bool) -> None:
        config = self.config
        tcp = TcpMux(self.mux)
        self.tcp = tcp
        port = config.tcp_port or self.udp_port
        try:
            try:
                self.tcp_port = await tcp.listen(config.bind, port)
            except OSError as exc:
                if config.tcp_port or config.udp_port or exc.errno != errno.EADDRINUSE:
                    raise
                # udp_port 0 picked a number TCP does not have free: any free one will do.
                self.tcp_port = await tcp.listen(config.bind, 0)
            if config.enable_ipv6:
                await tcp.listen("::1" if loopback else "::", self.tcp_port)
        except OSError as exc:
            raise ConnectivityError(_bind_problem(
                "TCP", config.bind, port, exc, "--tcp-port, or turn ICE-TCP off with "
                "--ice-tcp off")) from None
        self.mux.tcp = tcp

    # -- advertised address ------------------------------------------------------------

    async def _choose_advertised(self) -> Advertised:
        config = self.config
        local_host, local_source = local_address(config.bind)
        if config.ice_host_override:
            host = await _resolve_override(config.ice_host_override)
            chosen = Advertised(host, self.udp_port, "override", self.tcp_port)
            why = f"ice_host_override {config.ice_host_override}"
        else:
            chosen = Advertised(local_host, self.udp_port, local_source, self.tcp_port)
            why = {"bind": "the bind address", "interface": "the first interface address",
                   "loopback": "no other address"}[local_source]
            discovery = await self._discover(local_host)
            if discovery is not None and discovery.address is not None:
                chosen = Advertised(discovery.address[0], self.udp_port, "stun", self.tcp_port)
                why = f"public address of the media socket according to {discovery.server}"
            elif discovery is not None:
                why += f"; STUN discovery via {discovery.server} failed: {discovery.error}"
        chosen = self._apply_port_override(chosen, local_host)
        tcp = f", tcp {chosen.tcp_port}" if chosen.tcp_port else ""
        log.info("advertising %s udp %d%s (%s: %s)", chosen.host, chosen.port, tcp,
                 chosen.source, why)
        if chosen.source == "stun" and chosen.host != local_host:
            log.info("behind NAT: also advertising the local address %s as a host candidate",
                     local_host)
        return chosen

    async def _discover(self, local_host: str) -> Discovery | None:
        text = self.config.stun_server.strip()
        if not text:
            return None
        host, port = parse_host_port(text)
        if ipaddress.ip_address(self.config.bind).is_loopback and not _is_loopback(host):
            log.info("bound to loopback: not asking %s for a public address", text)
            return None
        self.discovery = await discover_public_address(self.mux, host, port, DISCOVERY_TIMEOUT)
        if self.discovery.address is None:
            log.warning("STUN discovery via %s failed (%s): advertising %s; set "
                        "ice_host_override if clients cannot reach it", self.discovery.server,
                        self.discovery.error, local_host)
        return self.discovery

    def _apply_port_override(self, chosen: Advertised, local_host: str) -> Advertised:
        override = parse_port_override(self.config.ice_host_port_override)
        if not override:
            return chosen
        local_ips = _local_ips(self.config.bind)
        port = override.port_for(local_ips)
        if port is None:
            raise ConnectivityError(
                f"ice_host_port_override={self.config.ice_host_port_override!r} has no entry "
                f"for this host's addresses ({', '.join(local_ips) or local_host}): add "
                "LOCAL_IP/PORT for one of them")
        log.info("ice_host_port_override: advertising port %d instead of udp %d%s", port,
                 chosen.port, f" / tcp {chosen.tcp_port}" if chosen.tcp_port else "")
        return Advertised(chosen.host, port, chosen.source, port if chosen.tcp_port else None)

    def _candidate_specs(self) -> list[CandidateSpec]:
        adv = self.advertised
        local_host, _source = local_address(self.config.bind)
        specs: list[CandidateSpec] = []
        behind_nat = adv.source == "stun" and adv.host != local_host
        if behind_nat:
            specs.append(CandidateSpec("udp", "host", local_host, self.udp_port))
            specs.append(CandidateSpec("udp", "srflx", adv.host, adv.port,
                                       (local_host, self.udp_port)))
        else:
            specs.append(CandidateSpec("udp", "host", adv.host, adv.port))
        if self.tcp_port is not None and adv.tcp_port is not None:
            if behind_nat:
                specs.append(CandidateSpec("tcp", "host", local_host, self.tcp_port))
                specs.append(CandidateSpec("tcp", "srflx", adv.host, adv.tcp_port,
                                           (local_host, self.tcp_port)))
            else:
                specs.append(CandidateSpec("tcp", "host", adv.host, adv.tcp_port))
        for host in self.ipv6_hosts:
            specs.append(CandidateSpec("udp", "host", host, self.udp_port))
            if self.tcp_port is not None:
                specs.append(CandidateSpec("tcp", "host", host, self.tcp_port))
        return specs

    # -- reporting and shutdown ----------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The `ice` section of /version: what clients are told, and how it was decided."""
        adv = self.advertised
        discovery = self.discovery
        return {
            "host": adv.host, "udp_port": adv.port, "tcp_port": adv.tcp_port,
            "source": adv.source,
            "candidates": [f"{s.transport} {s.type} {_hostport(s.host, s.port)}"
                           for s in self.specs],
            "stun": None if discovery is None else {
                "server": discovery.server,
                "address": _hostport(*discovery.address) if discovery.address else None,
                "error": discovery.error or None},
            "ipv6": bool(self.config.enable_ipv6),
        }

    def stats(self) -> dict[str, Any]:
        return {"ice_tcp": self.tcp.info() if self.tcp is not None else None}

    def close(self) -> None:
        if self.tcp is not None:
            self.tcp.close()
            self.mux.tcp = None
        if self.mux.transport6 is not None:
            self.mux.transport6.close()
            self.mux.transport6 = None


class _Ipv6Intake(asyncio.DatagramProtocol):
    """Feeds the IPv6 socket's datagrams into the same mux as the IPv4 socket's.

    Bound to ::, with the packet info on (rtc/pktinfo.py), it is read with recvmsg
    (each datagram's destination, what the session is sent from) instead of
    asyncio's reader, as the IPv4 socket is without the C ingress
    (UdpMux.read_with_recvmsg).
    """

    def __init__(self, mux: UdpMux) -> None:
        self.mux = mux
        self.datagram_received = mux.handle_datagram  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.mux.transport6 = transport  # type: ignore[assignment]
        sock = getattr(transport, "_sock", None)
        if isinstance(sock, socket.socket) and pktinfo.enable(sock):
            self.mux.pktinfo6 = True
            asyncio.get_running_loop().call_soon(self._read_with_recvmsg, sock)

    def _read_with_recvmsg(self, sock: socket.socket) -> None:
        if not self.mux.read_with_recvmsg(sock, self.mux.transport6):
            self.mux.pktinfo6 = False

    def error_received(self, exc: Exception) -> None:
        self.mux.error_received(exc)


def _warn_about_ice_servers(config: ServeConfig) -> None:
    """Say at startup what would otherwise only show as clients failing to use TURN."""
    servers = parse_ice_servers(config.ice_servers)
    turn = [s for s in servers if s.is_turn]
    bare = [s for s in turn if s.username is None and s.credential is None]
    if bare and not config.turn_static_auth_secret:
        log.warning("ice_servers has TURN URIs without credentials and turn_static_auth_secret "
                    "is empty: clients cannot authenticate to %s", ", ".join(bare[0].urls))
    if config.turn_static_auth_secret and not bare:
        log.warning("turn_static_auth_secret is set but ice_servers has no turn: URI to "
                    "give credentials for")
    if turn:
        log.info("clients get ICE servers %s (TURN credentials valid %d min)",
                 ", ".join(u for s in servers for u in s.urls),
                 config.turn_credentials_expiration_minutes)


def local_address(bind: str) -> tuple[str, str]:
    """This host's address for clients on its own network: bind, interface or loopback."""
    address = ipaddress.ip_address(bind)
    if not address.is_unspecified:
        return bind, "bind"
    for family, item in interface_addresses():
        if family == socket.AF_INET and not ipaddress.ip_address(item).is_loopback:
            return item, "interface"
    return "127.0.0.1", "loopback"


def _local_ips(bind: str) -> list[str]:
    """Addresses an ice_host_port_override map may name for this host, bind address first."""
    ips: list[str] = []
    if not ipaddress.ip_address(bind).is_unspecified:
        ips.append(bind)
    for _family, address in interface_addresses():
        if address not in ips:
            ips.append(address)
    return ips


def _ipv6_addresses(bound: str) -> list[str]:
    """IPv6 host candidates: ::1 for a loopback server, else global and unique-local ones.

    Link-local addresses are left out: they need a scope id no remote peer can use.
    """
    if bound == "::1":
        return ["::1"]
    found = []
    for family, item in interface_addresses():
        if family != socket.AF_INET6:
            continue
        address = ipaddress.ip_address(item)
        if address.is_loopback or address.is_link_local or address.is_multicast:
            continue
        if str(address) not in found:
            found.append(str(address))
    return found


async def _resolve_override(value: str) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        if address.version == 6:
            raise ConnectivityError(f"ice_host_override {value!r} is IPv6: give the IPv4 "
                                    "address clients reach (IPv6 candidates come from "
                                    "enable_ipv6)")
        return value
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(value, None, family=socket.AF_INET),
                                       10)
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConnectivityError(f"ice_host_override {value!r} does not resolve ({reason}); "
                                "give an IP address instead") from None
    if not infos:
        raise ConnectivityError(f"ice_host_override {value!r} has no IPv4 address; give an "
                                "IP address instead")
    return str(infos[0][4][0])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind_problem(kind: str, host: str, port: int, exc: OSError, alternatives: str) -> str:
    where = f"{kind} port {port} on {host}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where} is already in use (another callsctl serve?): stop that process or " \
               f"choose another {alternatives}"
    if exc.errno == errno.EACCES:
        return f"no permission to bind {where}: use a port above 1023 or grant " \
               "CAP_NET_BIND_SERVICE"
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL):
        return f"cannot bind {where}: {host} is not an address of this host"
    return f"cannot bind {where}: {exc.strerror or exc}"
