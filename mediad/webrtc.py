"""The handshakes of WebRTC endpoints, beside the hot path: the forwarding core hands every
STUN and DTLS datagram of an endpoint made with `handshakes` to `WebRtcTransports.handle`
(RFC 7983 first byte: 0-3 STUN, 20-63 DTLS). STUN goes to the endpoint's ICE-lite responder,
DTLS (only from an address that passed ICE) to its DTLS server; once the handshake is done
the core endpoint gets its SRTP keys and forwards like any other. An endpoint whose browser
stops its consent checks, or whose handshake fails, is closed through `on_close`.

Every bad datagram is dropped and counted by name (`counts`, Stats.webrtc)."""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from charter.endpoints import WebRtcTransport
from mediad import _forward
from mediad.dtls import Certificate, DtlsError, DtlsServer
from mediad.ice import CONSENT_SECONDS, IceLite

log = logging.getLogger("mediad.webrtc")

CONSENT_INTERVAL = 1.0
"""Seconds between consent checks of every endpoint."""
DTLS_BUDGET = 0.0005
"""Seconds of DTLS work per turn of the event loop: in practice one step, as a handshake
step costs about 1 ms (ECDSA and ECDH). Fifty browsers arriving at once held the loop for
25-60 ms in one turn and the media sockets overflowed (2.4 % of 50k packets/s lost, p99
25 ms, bench/webrtc.py); queued, one step a turn, the media sockets are read between steps
(no loss, p99 1.8 ms) and handshakes complete as fast (about 1,000/s)."""
MAX_QUEUED = 4096
"""DTLS datagrams waiting at most (the core's token buckets keep a flood far below this)."""


@dataclass
class Session:
    """One WebRTC endpoint's transport: ICE, DTLS and its state."""

    endpoint: _forward.Endpoint
    ice: IceLite
    dtls: DtlsServer
    opened: float
    state: str = "new"
    """"new" (no check yet), "checking" (ICE chose an address, DTLS under way), "connected" (keyed), "closed"."""
    handshake_started: float = 0.0
    dtls_from: tuple[str, int] | None = None
    """Where the browser's last DTLS datagram came from: where a retransmitted flight goes
    (ICE may not have nominated that address yet)."""
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class WebRtcTransports:
    def __init__(
        self,
        certificate: Certificate,
        on_close: Callable[[_forward.Endpoint, str], None],
        *,
        on_connected: Callable[[_forward.Endpoint], None] = lambda endpoint: None,
        consent_timeout: float = CONSENT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.certificate = certificate
        self.on_close = on_close
        self.on_connected = on_connected
        """Called once an endpoint is keyed (its browser can now be asked for key frames)."""
        self.consent_timeout = consent_timeout
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.longest_step = 0.0
        """The longest the loop spent in one DTLS step, in seconds (how long a handshake can
        delay forwarding for other endpoints)."""
        self._sessions: dict[str, Session] = {}
        self._queue: deque[tuple[Session, bytes, tuple[str, int]]] = deque()
        """DTLS datagrams from validated addresses, handled DTLS_BUDGET at a time."""
        self._draining: asyncio.Handle | None = None

    def open(self, endpoint: _forward.Endpoint, transport: WebRtcTransport) -> None:
        ice = IceLite(transport.ice_ufrag, transport.ice_pwd, transport.remote_ice_ufrag, self.counts)
        dtls = DtlsServer(self.certificate, transport.remote_fingerprints)
        self._sessions[endpoint.name] = Session(endpoint, ice, dtls, self.clock())

    def forget(self, endpoint_id: str) -> None:
        session = self._sessions.pop(endpoint_id, None)
        if session is not None:
            session.state = "closed"
            if session.timer is not None:
                session.timer.cancel()

    def state(self, endpoint_id: str) -> str:
        session = self._sessions.get(endpoint_id)
        return session.state if session is not None else ""

    def stats(self) -> dict[str, int]:
        figures = {name: count for name, count in self.counts.items() if count}
        figures["dtls_longest_step_us"] = int(self.longest_step * 1e6)
        figures["endpoints_connected"] = sum(s.state == "connected" for s in self._sessions.values())
        return figures

    # --- the core's handshake handler ----------------------------------------------------

    def handle(self, endpoint: _forward.Endpoint, data: bytes, address: tuple[str, int]) -> None:
        session = self._sessions.get(endpoint.name)
        if session is None or session.state == "closed":
            self.counts["no_session"] += 1
            return
        try:
            if data[0] < 4:
                self._stun(session, data, address)
            else:
                self._dtls(session, data, address)
        except Exception:
            # A bug, not bad input (that is dropped and counted by name): counted here so that
            # Stats.webrtc shows it, and raised on for the core to count and report with its traceback.
            self.counts["handler_errors"] += 1
            raise

    def _stun(self, session: Session, data: bytes, address: tuple[str, int]) -> None:
        outcome = session.ice.handle(data, address, self.clock())
        if outcome.reply is None:
            return
        session.endpoint.send_datagram(outcome.reply, address)
        if outcome.nominated:
            session.endpoint.set_remote(address, latch=False)
            log.info("ICE nominated",
                     extra={"endpoint_id": session.endpoint.name, "remote": f"{address[0]}:{address[1]}"})
            if session.state == "new":
                session.state = "checking"

    def _dtls(self, session: Session, data: bytes, address: tuple[str, int]) -> None:
        if address not in session.ice.validated:
            self.counts["dtls_unknown_address"] += 1
            return
        if len(self._queue) >= MAX_QUEUED:
            self.counts["dtls_queue_full"] += 1
            return
        self._queue.append((session, data, address))
        if self._draining is None:
            self._draining = asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        """DTLS steps for at most DTLS_BUDGET (one at least), the rest on the next turn, after
        the loop has served the sockets that became readable meanwhile."""
        self._draining = None
        deadline = time.perf_counter() + DTLS_BUDGET
        while self._queue:
            session, data, address = self._queue.popleft()
            if session.state != "closed":
                try:
                    self._dtls_step(session, data, address)
                except Exception as error:  # noqa: BLE001 - a bug: counted and reported, the rest go on
                    self.counts["handler_errors"] += 1
                    asyncio.get_running_loop().call_exception_handler(
                        {"message": "DTLS step failed", "exception": error})
            if time.perf_counter() >= deadline:
                break
        if self._queue:
            self._draining = asyncio.get_running_loop().call_soon(self._drain)

    def _dtls_step(self, session: Session, data: bytes, address: tuple[str, int]) -> None:
        if not session.handshake_started:
            session.handshake_started = self.clock()
        session.dtls_from = address
        started = time.perf_counter()
        try:
            replies = session.dtls.feed(data)
        except DtlsError as error:
            self._step_took(started)
            mismatch = "fingerprint" in str(error)
            self.counts["dtls_fingerprint_mismatch" if mismatch else "dtls_failed"] += 1
            log.warning("DTLS handshake failed: closing the endpoint",
                        extra={"endpoint_id": session.endpoint.name, "reason": str(error)})
            self._close(session, "dtls failed")
            return
        self._step_took(started)
        for reply in replies:
            session.endpoint.send_datagram(reply, address)
        keys = session.dtls.keys
        if keys is not None and session.state != "connected":
            session.endpoint.set_keys(rx_suite=keys.suite.value, rx_key=keys.rx_key,
                                      tx_suite=keys.suite.value, tx_key=keys.tx_key)
            if session.endpoint.remote is None:
                session.endpoint.set_remote(address, latch=False)
            session.state = "connected"
            self.counts["handshakes_completed"] += 1
            self.on_connected(session.endpoint)
            log.info("DTLS-SRTP connected", extra={
                "endpoint_id": session.endpoint.name, "suite": keys.suite.value,
                "handshake_ms": round(1000 * (self.clock() - session.handshake_started), 1),
            })
        if session.dtls.closed:
            self.counts["dtls_closed"] += 1
            log.info("the browser closed its DTLS connection", extra={"endpoint_id": session.endpoint.name})
            self._close(session, "dtls closed")
            return
        self._arm_timer(session)

    def _step_took(self, started: float) -> None:
        self.longest_step = max(self.longest_step, time.perf_counter() - started)

    def _arm_timer(self, session: Session) -> None:
        """DTLS retransmits its flight itself when the browser's answer was lost."""
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        delay = session.dtls.timeout()
        if delay is None:
            return
        session.timer = asyncio.get_running_loop().call_later(max(delay, 0.01), self._retransmit, session)

    def _retransmit(self, session: Session) -> None:
        session.timer = None
        if session.state == "closed" or session.endpoint.closed or session.dtls_from is None:
            return
        for datagram in session.dtls.retransmit():
            session.endpoint.send_datagram(datagram, session.dtls_from)
        self._arm_timer(session)

    def _close(self, session: Session, reason: str) -> None:
        # Not from inside the core's read callback: the endpoint closes on the next turn of the loop.
        if session.state == "closed":
            return
        session.state = "closed"
        asyncio.get_running_loop().call_soon(self.on_close, session.endpoint, reason)

    # --- consent -------------------------------------------------------------------------

    def check_consent(self) -> int:
        """Close every endpoint whose browser sent no valid check for consent_timeout; how many."""
        now = self.clock()
        expired = [s for s in self._sessions.values()
                   if s.state != "closed" and s.ice.consent_expired(now, s.opened, self.consent_timeout)]
        for session in expired:
            self.counts["consent_expired"] += 1
            log.warning("ICE consent expired: closing the endpoint",
                        extra={"endpoint_id": session.endpoint.name, "seconds": self.consent_timeout})
            self._close(session, "consent expired")
        return len(expired)

    async def watch_consent(self) -> None:
        while True:
            await asyncio.sleep(CONSENT_INTERVAL)
            self.check_consent()
