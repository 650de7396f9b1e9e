"""ICE consent freshness (RFC 7675) for every server-side session, driven by one timer.

Why not aioice's own: aioice runs consent per connection, as an asyncio task
that sleeps ~5 s and then runs a full STUN transaction object (a future, a
timeout handle, a wrapper coroutine) per check. An idle joined session cost
the server ~180 µs of CPU per second that way (bench/consent.py), 0.2 of a
core for 1000 sessions, and on a loop busy with a join storm those per-task
wake-ups ran late. Here one task keeps a heap of due times for all sessions,
wakes at most once per `tick`, and sends each due check as one datagram on
the session's own path (the shared UDP socket, the IPv6 socket or the ICE-TCP
connection the selected pair uses). Answers come back through that path's
transaction table, the same table aioice's own checks use, so the mux needs
no new routing.

What RFC 7675 asks, and where it is kept:
- §5.1: a Binding request on the selected pair every `interval` (5 s),
  randomised to 0.8-1.2 times, each with a new transaction id and the ICE
  attributes of a connectivity check (USERNAME, PRIORITY, the role and its
  tie-breaker: aioice's public `Connection.build_request`), signed with the
  peer's password and fingerprinted (RFC 8489 §14.5, §14.7). Each check is
  one datagram, as aioice sends them (retransmissions=0): a lost one is
  covered by the next; about six in a row must go unanswered before expiry.
- §5.1: consent is granted only by a success response that carries a valid
  MESSAGE-INTEGRITY (the peer's password, RFC 8445 §7.2.5.2 / RFC 8489
  §9.1.4) and comes from the address the request was sent to. An answer to
  any of the last few outstanding checks counts.
- §5.1: consent expires `timeout` (30 s) after the last success. The
  connection is then closed, as aioice does on expiry: its nominated pair is
  cleared so no media is sent, aiortc reports the connection failed/closed
  and the server removes the session as before.
- Media or STUN the peer sends us grants nothing: the peer's own consent
  checks (answered by aioice) say it wants *our* replies, not our media.

With the C ingress (rtc/_iceanswer.c), a session whose nominated pair is on
the shared IPv4 socket has both kinds of consent STUN handled where the
datagram is read, without waking the event loop: the peer's checks are
answered there, and the answers to our checks are verified there (the same
rules: the transaction id of a check we sent, from the address it went to,
authentic with the peer's password) and noted in the ingress session, which
this scheduler reads before it decides on the session (`take_from_ingress`).
Everything else still comes through the transaction table.
"""

from __future__ import annotations

import asyncio
import heapq
import ipaddress
import itertools
import logging
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from aioice import stun
from aioice.candidate import candidate_priority

log = logging.getLogger("callsctl_sfu.rtc.consent")

Address = tuple[str, int]
# RFC 7675 §5.1: the check interval (randomised 0.8-1.2) and how long consent lasts.
CONSENT_INTERVAL_S = 5.0
CONSENT_TIMEOUT_S = 30.0
# The scheduler's granularity: checks due within one tick go out in the same wake-up.
TICK_S = 0.1
# Outstanding checks remembered per session (30 s / 5 s, and one late one).
MAX_PENDING = 7


@dataclass
class RoundTrip:
    """The latest round trip of an answered consent check (operators' RTT fallback)."""

    last_s: float | None = None
    samples: int = 0

    def record(self, seconds: float) -> None:
        self.last_s = seconds
        self.samples += 1


@dataclass
class ConsentStats:
    """Counters for GET /stats "consent"."""

    sessions: int = 0
    checks_sent: int = 0
    checks_answered: int = 0
    expired: int = 0
    wake_ups: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _same_address(got: Address, sent_to: Address) -> bool:
    """Whether an answer came from where the check went (RFC 7675 §5.1).

    Equal tuples are the rule; otherwise compare the addresses themselves,
    since a candidate's text form (an IPv6 address written differently, a
    scope suffix) need not be the one recvfrom reports.
    """
    if got == sent_to:
        return True
    if got[1] != sent_to[1]:
        return False
    try:
        return ipaddress.ip_address(got[0].split("%", 1)[0]) == \
            ipaddress.ip_address(sent_to[0].split("%", 1)[0])
    except ValueError:
        return False


class SessionConsent:
    """One session's consent state; also the transaction-table entry of its checks.

    The mux's demultiplexer hands a STUN answer to `response_received` of
    whatever its path's `transactions` holds under the transaction id, as it
    does for aioice's own transactions.
    """

    __slots__ = ("scheduler", "connection", "key", "last_success", "next_check", "pending",
                 "round_trip", "active", "ingress", "ingress_taken")

    def __init__(self, scheduler: ConsentScheduler, connection: Any, now: float) -> None:
        self.scheduler = scheduler
        self.connection = connection
        self.key = str(connection.remote_password).encode("utf8")
        self.last_success = now  # ICE just succeeded: consent is fresh (RFC 7675 §5.1)
        self.next_check = now + scheduler.jittered_interval()
        # transaction id -> (sent at, to address, the path's protocol), oldest first.
        self.pending: dict[bytes, tuple[float, Address, Any]] = {}
        self.round_trip = RoundTrip()
        self.active = True
        # The C ingress session that also takes answers (rtc/_iceanswer.c), and how many
        # of its answers this session has counted.
        self.ingress: Any = None
        self.ingress_taken = 0

    def response_received(self, message: stun.Message, addr: Address) -> None:
        """An answer to one of our checks: consent when it is an authenticated success."""
        entry = self.pending.get(message.transaction_id)
        if entry is None or not self.active:
            return
        sent_at, to, _protocol = entry
        if message.message_class != stun.Class.RESPONSE or not _same_address(addr, to):
            return  # an error response or a stranger's answer grants nothing
        try:
            authentic = message.check_message_integrity(self.key)
        except Exception:  # noqa: BLE001 - malformed attributes: not authentic
            authentic = False
        if not authentic:
            return
        self._forget(message.transaction_id)
        now = self.scheduler.now()
        self.last_success = now
        self.round_trip.record(now - sent_at)
        self.scheduler.stats.checks_answered += 1

    def send_check(self, now: float) -> None:
        """Send one consent check on the selected pair, remembered for its answer.

        On the shared IPv4 socket with the C ingress, the ingress builds, signs and
        sends it and takes its answer (rtc/_iceanswer.c); otherwise aioice's codec
        builds it and the answer comes through the path's transaction table.
        """
        from callsctl_sfu.rtc import aiortc_bridge  # loaded with the first session

        pair = aiortc_bridge.nominated_pair(self.connection)
        if pair is None:
            return
        protocol, addr = pair.protocol, pair.remote_addr
        # The C ingress reads the IPv4 socket only; other paths have no ingress session.
        ingress = getattr(protocol, "ingress_session", None) if ":" not in addr[0] else None
        if ingress is not None:
            if ingress is not self.ingress:
                self.take_from_ingress()
                self.ingress, self.ingress_taken = ingress, ingress.consent_answers_taken
            if self._send_from_ingress(ingress, protocol, addr, now):
                return
        request = self.connection.build_request(pair, nominate=False)
        request.add_message_integrity(self.key)  # also adds FINGERPRINT
        tid = request.transaction_id
        self.pending[tid] = (now, addr, protocol)
        protocol.transactions[tid] = self
        while len(self.pending) > MAX_PENDING:
            self._forget(next(iter(self.pending)))
        if ingress is not None:
            ingress.expect_answer(tid, now, addr)  # the reader thread may take the answer
        try:
            protocol.send_stun(request, addr)
        except Exception as exc:  # noqa: BLE001 - a closing path; the next check tells
            log.debug("consent check to %s:%d not sent: %s", addr[0], addr[1], exc)
        self.scheduler.stats.checks_sent += 1

    def _send_from_ingress(self, ingress: Any, protocol: Any, addr: Address, now: float) -> bool:
        """The C ingress sends the check on the IPv4 socket; False if it cannot now."""
        mux = protocol.mux  # a session's protocol on the mux (only those have an ingress)
        fd = mux.fanout_fd()  # -1: asyncio holds queued datagrams, which go first
        if fd < 0:
            return False
        octets = ingress.send_check(os.urandom(12), now, addr, fd, getattr(protocol, "source", None)
                                    if mux.pktinfo else None)
        if not octets:
            return False
        mux.count_stun_sent(1, octets)
        self.scheduler.stats.checks_sent += 1
        return True

    def take_from_ingress(self) -> None:
        """Count the answers the C ingress took since last time; consent if it took any."""
        ingress = self.ingress
        if ingress is None:
            return
        taken = ingress.consent_answers_taken
        if taken == self.ingress_taken:
            return
        self.scheduler.stats.checks_answered += taken - self.ingress_taken
        self.ingress_taken = taken
        if ingress.consent_at > self.last_success:
            self.last_success = ingress.consent_at
            self.round_trip.record(ingress.consent_round_trip)

    def _forget(self, tid: bytes) -> None:
        entry = self.pending.pop(tid, None)
        if entry is not None:
            transactions = entry[2].transactions
            if transactions.get(tid) is self:
                del transactions[tid]

    def stop(self) -> None:
        self.active = False
        for tid in list(self.pending):
            self._forget(tid)


class ConsentScheduler:
    """Consent freshness of many ICE connections from one asyncio task.

    The server's media socket has one for every session; the load generator one
    for all its participants (they are the controlling side there).

    `interval`, `timeout` and `tick` are injectable so tests can watch a
    consent expire in seconds; the server uses RFC 7675's 5 s and 30 s.
    """

    def __init__(self, interval: float = CONSENT_INTERVAL_S, timeout: float = CONSENT_TIMEOUT_S,
                 tick: float = TICK_S, rng: Callable[[], float] = random.random) -> None:
        self.interval = interval
        self.timeout = timeout
        self.tick = tick
        self._rng = rng
        self.stats = ConsentStats()
        self._sessions: dict[int, SessionConsent] = {}  # id(connection) -> state
        self._heap: list[tuple[float, int, SessionConsent]] = []
        self._order = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def jittered_interval(self) -> float:
        """RFC 7675 §5.1: the interval times a uniform random 0.8-1.2."""
        return self.interval * (0.8 + 0.4 * self._rng())

    # -- sessions ------------------------------------------------------------------

    def add(self, connection: Any) -> None:
        """Start checking a connection that has just completed ICE."""
        if self._closed or id(connection) in self._sessions:
            return
        session = SessionConsent(self, connection, self.now())
        self._sessions[id(connection)] = session
        self.stats.sessions = len(self._sessions)
        self._push(session)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="ice-consent")

    def discard(self, connection: Any) -> None:
        """Stop checking a connection (it is closing); its heap entry lapses."""
        session = self._sessions.pop(id(connection), None)
        if session is not None:
            session.stop()
            self.stats.sessions = len(self._sessions)

    def round_trip(self, connection: Any) -> RoundTrip | None:
        """The consent checks' round trip of a connection, None if not checked here."""
        session = self._sessions.get(id(connection))
        if session is None:
            return None
        session.take_from_ingress()
        return session.round_trip

    def close(self) -> None:
        """Stop the timer (the media socket is closing); nothing is checked any more."""
        self._closed = True
        for session in list(self._sessions.values()):
            session.stop()
        self._sessions.clear()
        self._heap.clear()
        if self._task is not None:
            self._task.cancel()

    def stats_now(self) -> dict[str, int]:
        """The counters, with the answers the C ingress took since the sessions' last turn."""
        for session in self._sessions.values():
            session.take_from_ingress()
        return self.stats.as_dict()

    # -- the timer -----------------------------------------------------------------

    def _push(self, session: SessionConsent) -> None:
        at = min(session.next_check, session.last_success + self.timeout)
        heapq.heappush(self._heap, (at, next(self._order), session))

    async def _run(self) -> None:
        while self._sessions:
            now = self.now()
            self.run_due(now)
            self.stats.wake_ups += 1
            # Never sleep past a tenth of the interval: a session added meanwhile
            # is due no earlier than 0.8 x interval after it was added.
            ceiling = max(self.tick, self.interval / 10)
            until = self._heap[0][0] - now if self._heap else ceiling
            await asyncio.sleep(min(max(until, self.tick), ceiling))

    def run_due(self, now: float) -> None:
        """Send every check due by `now` and expire every consent that has lapsed."""
        heap = self._heap
        if heap:  # a session means the media stack is loaded (rtc/medialoader.py)
            from callsctl_sfu.rtc import aiortc_bridge
        while heap and heap[0][0] <= now:
            _at, _order, session = heapq.heappop(heap)
            if not session.active:
                continue
            try:
                session.take_from_ingress()
                if aiortc_bridge.nominated_pair(session.connection) is None:
                    self.discard(session.connection)  # closed meanwhile (aioice clears it)
                    continue
                if now - session.last_success >= self.timeout:
                    self._expire(session)
                    continue
                if now >= session.next_check:
                    session.next_check = now + self.jittered_interval()
                    session.send_check(now)
            except Exception as exc:  # noqa: BLE001 - one session never stops the others' checks
                log.warning("consent check for %s failed: %s: %s",
                            getattr(session.connection, "local_username", "?"),
                            type(exc).__name__, exc)
            self._push(session)

    def _expire(self, session: SessionConsent) -> None:
        """RFC 7675 §5.1: no consent: stop sending, as aioice does, by closing the agent."""
        self.stats.expired += 1
        connection = session.connection
        self.discard(connection)
        log.info("ICE consent expired for %s (no answer to consent checks for %g s)",
                 connection.local_username, self.timeout)
        task = asyncio.get_running_loop().create_task(_close(connection))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


async def _close(connection: Any) -> None:
    """Close an agent whose consent expired; a failure to close is not the caller's."""
    try:
        await connection.close()
    except Exception as exc:  # noqa: BLE001 - nothing awaits this task to hear about it
        log.debug("closing %s after consent expiry: %s", connection.local_username, exc)


def hand_to_ingress(connection: Any, ingress_session: Any) -> None:
    """Let the C ingress handle this connection's consent STUN on its nominated pair.

    It answers the peer's checks as aioice would (USERNAME "ours:theirs", our
    password) unless the request carries the attribute of our own role (a
    conflict aioice must resolve), and takes the answers to the checks
    `SessionConsent.send_check` names (the peer's password). The nominated-pair
    dict is aioice's live one, so a renomination moves the C answering with it.
    """
    from callsctl_sfu.rtc import aiortc_bridge

    local, remote = connection.local_username, connection.remote_username
    if not remote or connection.remote_password is None:
        return  # not connected yet: aioice answers
    ingress_session.set_ice(
        username=f"{local}:{remote}".encode(),
        local_key=str(connection.local_password).encode("utf8"),
        remote_key=str(connection.remote_password).encode("utf8"),
        controlling=bool(connection.ice_controlling),
        nominated=aiortc_bridge.nominated_pairs(connection),
        check_username=f"{remote}:{local}".encode(),
        tie_breaker=aiortc_bridge.tie_breaker(connection),
        priority=candidate_priority(1, "prflx"))  # what aioice's build_request puts
