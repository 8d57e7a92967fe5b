"""mediad/webrtc.py: the handshakes of WebRTC endpoints beside the hot path, on a real
forwarding core endpoint (loopback sockets) with a fake clock. STUN and DTLS come from test
sockets through the core's first-byte demultiplexing; a pyOpenSSL client plays the
browser's DTLS. Then the session's state (new -> checking -> connected -> closed) is tested
differentially against a small readable model, over random sequences of checks, handshakes,
garbage and time passing."""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charter.endpoints import WebRtcTransport
from forward_harness import Harness, processed, udp_socket
from mediad import _forward
from mediad.dtls import Certificate
from mediad.ice import CONSENT_SECONDS, IceLite
from mediad.webrtc import WebRtcTransports
from rtp import build_rtp, receiver_session, sender_session
from webrtc_client import DtlsClient, binding_request

SUITE = "AES_CM_128_HMAC_SHA1_80"
DAEMON = Certificate.generate()
BROWSER = Certificate.generate("browser")
IMPOSTOR = Certificate.generate("impostor")
LOCAL_UFRAG, LOCAL_PWD, REMOTE_UFRAG = "dmn1", "daemonpassword0123456789", "brws"
USERNAME = f"{LOCAL_UFRAG}:{REMOTE_UFRAG}"
START = 1000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class Browser:
    """A test socket standing for a browser's ICE candidate."""

    def __init__(self) -> None:
        self.sock = udp_socket()
        self.sock.setblocking(False)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def received(self) -> list[bytes]:
        """What has arrived since the last call (loopback delivers as the daemon sends)."""
        got = []
        while True:
            try:
                got.append(self.sock.recv(65536))
            except BlockingIOError:
                return got


@dataclass
class World:
    harness: Harness
    transports: WebRtcTransports
    clock: Clock
    endpoint: _forward.Endpoint
    closed: list[tuple[str, str]] = field(default_factory=list)
    connected: list[str] = field(default_factory=list)
    browsers: list[Browser] = field(default_factory=list)

    def browser(self) -> Browser:
        browser = Browser()
        self.browsers.append(browser)
        return browser

    @property
    def target(self) -> tuple[str, int]:
        address = self.endpoint.local_address
        assert address is not None
        return address

    def send(self, browser: Browser, datagrams: list[bytes]) -> list[bytes]:
        """Send from `browser` through the core; once the endpoint took them all, what came back."""
        before = processed(self.endpoint)
        for datagram in datagrams:
            browser.sock.sendto(datagram, self.target)
        self.harness.settle(self.endpoint, before + len(datagrams))
        return browser.received()

    def arriving(self, browser: Browser, what: str) -> list[bytes]:
        """Run the loop until something reaches `browser`; what did."""
        got: list[bytes] = []

        def arrived() -> bool:
            got.extend(browser.received())
            return bool(got)

        self.harness.wait(arrived, what)
        return got

    def check(self, browser: Browser, *, use_candidate: bool = True, key: bytes = LOCAL_PWD.encode()) -> list[bytes]:
        return self.send(browser, [binding_request(USERNAME, key, use_candidate=use_candidate)])

    def handshake(self, browser: Browser, client: DtlsClient) -> None:
        """Carry the client's flights and the daemon's answers until both ends stop."""
        replies: list[bytes] = []
        for _ in range(10):
            flight = client.step(replies)
            if not flight:
                return
            replies = self.send(browser, flight)

    def run(self, call: Callable[[], object]) -> None:
        """Run the loop until `call()` returns (it must run on the loop, as the daemon's calls do)."""
        async def on_the_loop() -> None:
            call()

        self.harness.loop.run_until_complete(on_the_loop())

    def close(self) -> None:
        for browser in self.browsers:
            browser.sock.close()


def make_world(harness: Harness) -> World:
    clock = Clock()
    closed: list[tuple[str, str]] = []
    connected: list[str] = []
    transports = WebRtcTransports(
        DAEMON, lambda endpoint, reason: closed.append((endpoint.name, reason)),
        on_connected=lambda endpoint: connected.append(endpoint.name), clock=clock,
    )
    harness.forwarder.set_handshake_handler(transports.handle)
    endpoint = harness.forwarder.create_endpoint(udp_socket(), name="browser", latch=False, handshakes=True)
    transports.open(endpoint, WebRtcTransport(LOCAL_UFRAG, LOCAL_PWD, REMOTE_UFRAG, (BROWSER.fingerprint,)))
    return World(harness, transports, clock, endpoint, closed, connected)


@pytest.fixture
def world(harness: Harness) -> Iterator[World]:
    made = make_world(harness)
    yield made
    made.close()


def test_dtls_before_ice_is_counted_and_answered_with_nothing(world: World) -> None:
    stranger = world.browser()
    (hello,) = DtlsClient(BROWSER).step()
    assert world.send(stranger, [hello]) == []
    assert world.transports.counts == {"dtls_unknown_address": 1}
    # Another address passing ICE does not let this one in.
    browser = world.browser()
    assert len(world.check(browser)) == 1
    assert world.send(stranger, [hello, b"\x17\xfe\xfd" + bytes(10)]) == []
    assert world.transports.counts["dtls_unknown_address"] == 3
    assert world.transports.state("browser") == "checking" and world.endpoint.remote == browser.address
    assert not world.endpoint.keyed and world.closed == []


def test_bad_stun_is_answered_with_nothing_and_counted(world: World) -> None:
    browser = world.browser()
    assert world.send(browser, [binding_request(f"{LOCAL_UFRAG}:other", LOCAL_PWD.encode())]) == []
    assert world.check(browser, key=b"another password entirely") == []
    good = binding_request(USERNAME, LOCAL_PWD.encode())
    assert world.send(browser, [good[:-1] + bytes([good[-1] ^ 0xFF])]) == []
    assert world.transports.counts == {"stun_bad_ufrag": 1, "stun_bad_integrity": 1, "stun_bad_fingerprint": 1}
    assert world.transports.state("browser") == "new" and world.endpoint.remote is None


def test_ice_then_dtls_keys_the_endpoint_and_media_flows_both_ways(world: World) -> None:
    browser = world.browser()
    (answer,) = world.check(browser, use_candidate=True)
    assert answer[:2] == b"\x01\x01"  # a Binding success response (checked in full in test_ice.py)
    assert world.endpoint.remote == browser.address and world.transports.state("browser") == "checking"
    client = DtlsClient(BROWSER)
    world.handshake(browser, client)
    assert client.done and world.endpoint.keyed and world.endpoint.remote == browser.address
    assert world.transports.state("browser") == "connected" and world.connected == ["browser"]
    stats = world.transports.stats()
    assert stats["handshakes_completed"] == 1 and stats["endpoints_connected"] == 1 and stats["stun_checks"] == 1
    assert world.closed == []

    # The keys are the browser's: what it protects is forwarded, what it gets it decrypts.
    browser_tx, browser_rx = client.srtp_keys()
    viewer = world.harness.participant()
    world.endpoint.add_track(5).subscribe(viewer.endpoint, 50)
    browser.sock.sendto(sender_session(SUITE, browser_tx).protect(build_rtp(1, 0, 5, b"from the browser")),
                        world.target)
    world.harness.wait(lambda: len(viewer.peer.received) == 1, "the browser's media forwarded")
    assert viewer.peer.plain[0].endswith(b"from the browser")
    publisher = world.harness.participant()
    publisher.endpoint.add_track(9).subscribe(world.endpoint, 90)
    publisher.peer.send(build_rtp(1, 0, 9, b"to the browser"))
    got = world.arriving(browser, "media reaching the browser")
    assert receiver_session(SUITE, browser_rx).unprotect(got[0]).endswith(b"to the browser")


@pytest.mark.parametrize("nominated", [True, False], ids=["nominated", "checked only"])
def test_the_daemons_flight_is_retransmitted_to_the_dtls_client(world: World, nominated: bool) -> None:
    browser = world.browser()
    world.check(browser, use_candidate=nominated)
    client = DtlsClient(BROWSER)
    flight = world.send(browser, client.step())
    assert flight and not world.endpoint.keyed
    # The flight is lost: OpenSSL's timer (1 s at first, on the real clock) sends it again,
    # to where the ClientHello came from whether or not ICE nominated that address yet.
    again = world.arriving(browser, "the flight again")
    assert [len(d) for d in again] == [len(d) for d in flight]
    replies = again
    for _ in range(5):
        if world.endpoint.keyed:
            break
        replies = world.send(browser, client.step(replies))
    assert world.endpoint.keyed and world.endpoint.remote == browser.address
    assert world.transports.state("browser") == "connected"


def test_a_certificate_that_is_not_the_offers_closes_the_endpoint_with_a_warning(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    browser = world.browser()
    world.check(browser)
    with caplog.at_level(logging.INFO, logger="mediad.webrtc"):
        world.handshake(browser, DtlsClient(IMPOSTOR))
        world.harness.wait(lambda: bool(world.closed), "the endpoint closed through on_close")
    assert world.closed == [("browser", "dtls failed")]
    assert world.transports.counts["dtls_fingerprint_mismatch"] == 1
    assert world.transports.state("browser") == "closed" and not world.endpoint.keyed
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.name == "mediad.webrtc" and warning.getMessage() == "DTLS handshake failed: closing the endpoint"
    assert warning.endpoint_id == "browser"  # type: ignore[attr-defined]
    assert "certificate does not match the fingerprint" in warning.reason  # type: ignore[attr-defined]
    # A closed session takes nothing more: no answer to a valid check, no second close.
    assert world.check(browser) == []
    assert world.transports.counts["no_session"] == 1 and world.closed == [("browser", "dtls failed")]


def test_consent_expires_without_valid_checks(world: World) -> None:
    browser = world.browser()
    world.check(browser)
    world.handshake(browser, DtlsClient(BROWSER))
    assert world.endpoint.keyed
    world.clock.now = START + 20
    world.check(browser, use_candidate=False)  # consent renewed at +20
    world.clock.now = START + 20 + CONSENT_SECONDS
    world.run(lambda: world.transports.check_consent() == 0 or pytest.fail("expired too early"))
    world.check(browser, key=b"a check that does not verify")  # renews nothing
    world.clock.now = START + 20 + CONSENT_SECONDS + 0.5
    expired: list[int] = []
    world.run(lambda: expired.append(world.transports.check_consent()))
    world.harness.wait(lambda: bool(world.closed), "the endpoint closed through on_close")
    assert expired == [1] and world.closed == [("browser", "consent expired")]
    assert world.transports.counts["consent_expired"] == 1 and world.transports.state("browser") == "closed"
    world.run(lambda: expired.append(world.transports.check_consent()))
    assert expired == [1, 0], "a closed session expires once"


def test_an_endpoint_no_browser_ever_checks_expires_from_when_it_opened(world: World) -> None:
    world.clock.now = START + CONSENT_SECONDS + 1
    world.run(world.transports.check_consent)
    world.harness.wait(lambda: bool(world.closed), "the endpoint closed through on_close")
    assert world.closed == [("browser", "consent expired")]


def test_a_strangers_flood_does_not_starve_the_browsers_consent_checks(world: World) -> None:
    """The nominated remote has a token bucket of its own: a stranger who floods the port
    with DTLS-looking datagrams cannot make the browser's consent expire."""
    browser, stranger = world.browser(), world.browser()
    world.check(browser)
    world.handshake(browser, DtlsClient(BROWSER))
    assert world.endpoint.keyed and world.endpoint.remote == browser.address
    # All queued before the core reads any (the loop is not running): 32 batches of 32, the
    # browser's check last, in one batch with 31 of the flood.
    flood = [b"\x17\xfe\xfd" + i.to_bytes(8, "big") + b"\x00\x10" + bytes(16) for i in range(1023)]
    before = processed(world.endpoint)
    for datagram in flood:
        stranger.sock.sendto(datagram, world.target)
    browser.sock.sendto(binding_request(USERNAME, LOCAL_PWD.encode()), world.target)
    world.harness.settle(world.endpoint, before + len(flood) + 1)
    assert world.endpoint.counters.dropped("handshake_flood") > 0
    assert len(browser.received()) == 1, "the browser's consent check was answered"


def test_a_bug_in_the_slow_path_is_counted_where_stats_show_it(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug in ICE")

    monkeypatch.setattr(IceLite, "handle", broken)
    world.browser().sock.sendto(binding_request(USERNAME, LOCAL_PWD.encode()), world.target)
    for _ in range(2500):  # the loop reports the exception: wait without failing on it
        world.harness.loop.run_until_complete(asyncio.sleep(0.002))
        if world.endpoint.counters.handshake_errors:
            break
    assert world.endpoint.counters.handshake_errors == 1 and world.transports.stats()["handler_errors"] == 1
    assert [e["message"] for e in world.harness.errors] == ["handshake handler failed"]
    world.harness.errors.clear()


# --- the session's state, differentially against a model ----------------------------------


@dataclass
class SessionModel:
    """What one endpoint's handshake session should do: the readable reference."""

    opened: float
    state: str = "new"
    validated: set[str] = field(default_factory=set)
    nominated: str | None = None
    remote: str | None = None
    last_check: float | None = None
    keyed: bool = False
    closes: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def check(self, source: str, valid: bool, use_candidate: bool, now: float) -> bool:
        """A connectivity check: whether it is answered."""
        if self.state == "closed":
            self.counts["no_session"] += 1
            return False
        if not valid:
            self.counts["stun_bad_integrity"] += 1
            return False
        self.counts["stun_checks"] += 1
        self.last_check = now
        self.validated.add(source)
        if use_candidate and source != self.nominated:
            self.nominated = self.remote = source
            if self.state == "new":
                self.state = "checking"
        return True

    def handshake(self, source: str, certificate_matches: bool) -> None:
        """A whole DTLS handshake from `source` (its ClientHello first)."""
        if self.state == "closed":
            self.counts["no_session"] += 1
        elif source not in self.validated:
            self.counts["dtls_unknown_address"] += 1
        elif self.state == "connected":
            pass  # keyed once: a new handshake changes nothing
        elif not certificate_matches:
            self.counts["dtls_fingerprint_mismatch"] += 1
            self.close("dtls failed")
        else:
            self.counts["handshakes_completed"] += 1
            self.state, self.keyed = "connected", True
            self.remote = self.remote or source

    def garbage(self, source: str) -> None:
        """A DTLS-looking datagram that is no record OpenSSL takes."""
        if self.state == "closed":
            self.counts["no_session"] += 1
        elif source not in self.validated:
            self.counts["dtls_unknown_address"] += 1

    def consent(self, now: float, timeout: float = CONSENT_SECONDS) -> None:
        if self.state != "closed" and now - (self.opened if self.last_check is None else self.last_check) > timeout:
            self.counts["consent_expired"] += 1
            self.close("consent expired")

    def close(self, reason: str) -> None:
        self.state = "closed"
        self.closes.append(reason)


SOURCES = ("a", "b")
EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("check"), st.sampled_from(SOURCES), st.booleans(), st.booleans()),
        st.tuples(st.just("handshake"), st.sampled_from(SOURCES), st.booleans()),
        st.tuples(st.just("garbage"), st.sampled_from(SOURCES)),
        st.tuples(st.just("wait"), st.sampled_from([5.0, 15.0, CONSENT_SECONDS, CONSENT_SECONDS + 1])),
    ),
    max_size=12,
)


def replay(world: World, events: list[tuple[object, ...]]) -> None:
    model = SessionModel(opened=world.clock.now)
    browsers = {name: world.browser() for name in SOURCES}
    names = {b.address: name for name, b in browsers.items()}
    for event in events:
        kind, *args = event
        if kind == "check":
            source, valid, use_candidate = str(args[0]), bool(args[1]), bool(args[2])
            key = LOCAL_PWD.encode() if valid else b"not the daemon's password"
            answers = world.check(browsers[source], key=key, use_candidate=use_candidate)
            assert len(answers) == int(model.check(source, valid, use_candidate, world.clock.now)), event
        elif kind == "handshake":
            source, matches = str(args[0]), bool(args[1])
            world.handshake(browsers[source], DtlsClient(BROWSER if matches else IMPOSTOR))
            model.handshake(source, matches)
        elif kind == "garbage":
            source = str(args[0])
            world.send(browsers[source], [b"\x17\xfe\xfd" + bytes(10)])
            model.garbage(source)
        else:
            world.clock.now += float(str(args[0]))
            world.run(world.transports.check_consent)
            model.consent(world.clock.now)
        world.harness.loop.run_until_complete(asyncio.sleep(0))  # on_close runs on the next turn
        remote = world.endpoint.remote
        assert (
            world.transports.state("browser"), names.get(remote) if remote else None, world.endpoint.keyed,
            [reason for _, reason in world.closed], +world.transports.counts,
        ) == (model.state, model.remote, model.keyed, model.closes, +model.counts), f"after {event}"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS)
def test_the_session_follows_the_model(events: list[tuple[object, ...]]) -> None:
    harness = Harness(uvloop.new_event_loop())
    world = make_world(harness)
    try:
        replay(world, events)
        harness.check_errors()
    finally:
        world.close()
        harness.close()


@pytest.mark.parametrize(
    "events",
    [
        # The paths worth naming, whatever hypothesis draws.
        [("check", "a", True, True), ("handshake", "a", True), ("handshake", "b", True), ("wait", 31.0)],
        [("check", "a", True, False), ("handshake", "a", True), ("check", "b", True, True)],
        [("handshake", "a", True), ("check", "a", False, True), ("garbage", "a"), ("check", "a", True, True),
         ("garbage", "a"), ("handshake", "a", False), ("check", "a", True, True), ("garbage", "b")],
        [("check", "a", True, True), ("check", "b", True, True), ("handshake", "a", True), ("wait", 15.0),
         ("check", "b", True, False), ("wait", 30.0), ("wait", 1.0)],
    ],
    ids=["connected then expired", "no nomination: DTLS's address", "refused then closed", "renominated"],
)
def test_named_paths_follow_the_model(world: World, events: list[tuple[object, ...]]) -> None:
    replay(world, events)

