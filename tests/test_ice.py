"""mediad/ice.py: the ICE-lite responder of a WebRTC endpoint, fed STUN built with aioice's
`stun` module. A valid check is answered (and the answer checked here by hand, against RFC
5389, not with aioice); every other datagram is dropped under a named counter, and nothing a
peer sends raises."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import zlib
from collections import Counter

import pytest
from aioice import stun
from hypothesis import given, settings
from hypothesis import strategies as st

from mediad.ice import CONSENT_SECONDS, IceLite
from webrtc_client import binding_request

LOCAL_UFRAG, LOCAL_PWD = "dmn1", "daemonpassword0123456789"
REMOTE_UFRAG = "brws"
BROWSER = ("127.0.0.1", 50001)
OTHER = ("127.0.0.1", 50002)
COOKIE = 0x2112A442


def responder() -> IceLite:
    return IceLite(LOCAL_UFRAG, LOCAL_PWD, REMOTE_UFRAG, Counter())


def check(
    *,
    username: str | None = f"{LOCAL_UFRAG}:{REMOTE_UFRAG}",
    key: bytes | None = LOCAL_PWD.encode(),
    use_candidate: bool = False,
    fingerprint: bool = True,
    message_class: stun.Class = stun.Class.REQUEST,
    method: stun.Method = stun.Method.BINDING,
) -> bytes:
    return binding_request(username, key, use_candidate=use_candidate, fingerprint=fingerprint,
                           message_class=message_class, method=method)


def attributes(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, offset of the attribute, value) of each attribute, read by hand."""
    found, position = [], 20
    while position < len(data):
        kind, length = struct.unpack_from("!HH", data, position)
        found.append((kind, position, data[position + 4:position + 4 + length]))
        position += 4 + length + (-length % 4)
    assert position == len(data), "attributes run past the message"
    return found


def verify_answer(reply: bytes, request: bytes, source: tuple[str, int]) -> None:
    """A Binding success response (RFC 5389) to `request`: its XOR-MAPPED-ADDRESS is
    `source`, MESSAGE-INTEGRITY verifies with the daemon's password and FINGERPRINT is the
    last attribute and right (RFC 5389 15.4, 15.5)."""
    message_type, length, cookie = struct.unpack_from("!HHI", reply)
    assert (message_type, cookie, length) == (0x0101, COOKIE, len(reply) - 20)
    assert reply[8:20] == request[8:20], "the answer carries the request's transaction id"
    found = attributes(reply)
    kinds = [kind for kind, _, _ in found]
    assert kinds[-2:] == [0x0008, 0x8028], f"MESSAGE-INTEGRITY then FINGERPRINT last: {kinds}"
    values = {kind: (offset, value) for kind, offset, value in found}
    # XOR-MAPPED-ADDRESS: family 1 (IPv4), port and address XORed with the magic cookie.
    _, mapped = values[0x0020]
    family, port = mapped[1], struct.unpack("!H", mapped[2:4])[0] ^ (COOKIE >> 16)
    address = str(ipaddress.IPv4Address(struct.unpack("!I", mapped[4:8])[0] ^ COOKIE))
    assert (family, address, port) == (1, *source)
    # MESSAGE-INTEGRITY: HMAC-SHA1 over the message up to it, the length field counting it.
    offset, integrity = values[0x0008]
    covered = reply[:2] + struct.pack("!H", offset + 24 - 20) + reply[4:offset]
    assert integrity == hmac.new(LOCAL_PWD.encode(), covered, hashlib.sha1).digest()
    # FINGERPRINT: CRC-32 of the message before it, XOR 0x5354554E.
    offset, crc = values[0x8028]
    assert struct.unpack("!I", crc)[0] == zlib.crc32(reply[:offset]) ^ 0x5354554E


def test_a_valid_check_is_answered_with_the_source_address_integrity_and_fingerprint() -> None:
    ice = responder()
    request = check()
    outcome = ice.handle(request, BROWSER, now=5.0)
    assert outcome.reply is not None and not outcome.nominated
    verify_answer(outcome.reply, request, BROWSER)
    assert ice.counts == {"stun_checks": 1}
    assert ice.validated == {BROWSER} and ice.nominated is None and ice.last_check == 5.0


def test_nomination_latches_on_the_nominating_address() -> None:
    ice = responder()
    assert ice.handle(check(use_candidate=True), BROWSER, 1.0).nominated
    assert ice.nominated == BROWSER
    # Later checks, with or without USE-CANDIDATE, keep it and say nothing new.
    for use_candidate in (False, True):
        outcome = ice.handle(check(use_candidate=use_candidate), BROWSER, 2.0)
        assert outcome.reply is not None and not outcome.nominated
        assert ice.nominated == BROWSER
    # A check from another validated address without USE-CANDIDATE does not move it.
    assert not ice.handle(check(), OTHER, 3.0).nominated
    assert ice.nominated == BROWSER and ice.validated == {BROWSER, OTHER}
    # The controlling agent nominating another pair moves it (the newest nomination wins).
    assert ice.handle(check(use_candidate=True), OTHER, 4.0).nominated
    assert ice.nominated == OTHER
    assert ice.counts == {"stun_checks": 5}


def refingerprint(data: bytes) -> bytes:
    """The message with its (last) FINGERPRINT made right again after a change."""
    return data[:-4] + struct.pack("!I", zlib.crc32(data[:-8]) ^ 0x5354554E)


def corrupt_integrity(data: bytes) -> bytes:
    """The check with one byte of its MESSAGE-INTEGRITY changed (FINGERPRINT still right)."""
    (offset,) = [offset for kind, offset, _ in attributes(data) if kind == 0x0008]
    flipped = bytearray(data)
    flipped[offset + 4] ^= 0xFF
    return refingerprint(bytes(flipped))


def truncated_attribute() -> bytes:
    """A Binding request whose PRIORITY attribute has 3 bytes (aioice raises struct.error)."""
    body = struct.pack("!HH", 0x0024, 3) + b"abc\x00"
    return struct.pack("!HHI12s", 0x0001, len(body), COOKIE, b"t" * 12) + body


DROPPED = [
    ("wrong ufrag: the daemon's", check(username=f"nope:{REMOTE_UFRAG}"), "stun_bad_ufrag"),
    ("wrong ufrag: the browser's", check(username=f"{LOCAL_UFRAG}:nope"), "stun_bad_ufrag"),
    ("ufrags swapped", check(username=f"{REMOTE_UFRAG}:{LOCAL_UFRAG}"), "stun_bad_ufrag"),
    ("no USERNAME", check(username=None), "stun_bad_ufrag"),
    ("integrity keyed with another password", check(key=b"someone elses password!!"), "stun_bad_integrity"),
    ("integrity keyed with the browser's ufrag", check(key=REMOTE_UFRAG.encode()), "stun_bad_integrity"),
    ("integrity changed in flight", corrupt_integrity(check()), "stun_bad_integrity"),
    ("no MESSAGE-INTEGRITY", check(key=None), "stun_bad_integrity"),
    ("no FINGERPRINT", check(fingerprint=False), "stun_bad_fingerprint"),
    ("bad FINGERPRINT", check()[:-1] + bytes([check()[-1] ^ 1]), "stun_bad_fingerprint"),
    ("FINGERPRINT of a changed message", check()[:-4] + struct.pack("!I", 12345), "stun_bad_fingerprint"),
    ("truncated", check()[:-7], "stun_malformed"),
    ("header only, length says more", check()[:20], "stun_malformed"),
    ("shorter than a header", b"\x00\x01\x00\x00\x21\x12", "stun_malformed"),
    ("one byte", b"\x01", "stun_malformed"),
    ("garbage", b"\x03" + bytes(range(200, 255)) * 3, "stun_malformed"),
    ("unknown method", refingerprint(b"\x00\x3f" + check()[2:]), "stun_malformed"),
    ("attribute of the wrong length", truncated_attribute(), "stun_malformed"),
    ("an indication (a keepalive)", check(message_class=stun.Class.INDICATION), "stun_ignored"),
    ("a success response", check(message_class=stun.Class.RESPONSE), "stun_ignored"),
    ("an error response", check(message_class=stun.Class.ERROR), "stun_ignored"),
    ("another method's request", check(method=stun.Method.ALLOCATE), "stun_ignored"),
]


@pytest.mark.parametrize(("datagram", "counter"), [(d, c) for _, d, c in DROPPED], ids=[n for n, _, _ in DROPPED])
def test_bad_stun_is_dropped_with_its_counter(datagram: bytes, counter: str) -> None:
    ice = responder()
    outcome = ice.handle(datagram, BROWSER, now=1.0)
    assert outcome.reply is None and not outcome.nominated
    assert ice.counts == {counter: 1}
    # Nothing that failed validates the address, nominates it or renews consent.
    assert ice.validated == set() and ice.nominated is None and ice.last_check is None


def test_a_bad_check_with_use_candidate_nominates_nothing() -> None:
    ice = responder()
    ice.handle(check(use_candidate=True), BROWSER, 1.0)
    outcome = ice.handle(check(use_candidate=True, key=b"not the daemon's password"), OTHER, 2.0)
    assert outcome.reply is None and ice.nominated == BROWSER and ice.validated == {BROWSER}
    assert ice.last_check == 1.0


def test_consent_expires_consent_timeout_after_the_last_valid_check() -> None:
    ice = responder()
    opened = 100.0
    # No check yet: counted from when the endpoint opened.
    assert not ice.consent_expired(opened + CONSENT_SECONDS, opened)
    assert ice.consent_expired(opened + CONSENT_SECONDS + 0.001, opened)
    ice.handle(check(), BROWSER, now=120.0)
    assert not ice.consent_expired(150.0, opened)
    assert ice.consent_expired(150.001, opened)
    # A bad check renews nothing; a valid one does.
    ice.handle(check(key=b"wrong password, wrong!"), BROWSER, now=149.0)
    assert ice.consent_expired(150.001, opened)
    ice.handle(check(), BROWSER, now=149.0)
    assert not ice.consent_expired(179.0, opened)
    assert ice.consent_expired(179.5, opened, timeout=30.0) and not ice.consent_expired(179.5, opened, timeout=31.0)


def test_a_check_at_clock_zero_counts_as_a_check() -> None:
    # A clock that starts at 0 (a test's fake clock): the check at 0.0 is a check, not "none yet".
    ice = responder()
    ice.handle(check(), BROWSER, now=0.0)
    assert ice.last_check == 0.0
    assert not ice.consent_expired(20.0, opened=-20.0)


ATTRIBUTE_TYPES = sorted(stun.ATTRIBUTES_BY_TYPE) + [0x0000, 0x7FFF, 0xC001]


@st.composite
def stun_like(draw: st.DrawFn) -> bytes:
    """A STUN header with random type, cookie and attributes of random lengths (the length
    field right or wrong)."""
    message_type = draw(st.integers(0, 0x3FFF))
    cookie = draw(st.sampled_from([COOKIE, 0, draw(st.integers(0, 2**32 - 1))]))
    body = b""
    for _ in range(draw(st.integers(0, 6))):
        value = draw(st.binary(max_size=40))
        kind = draw(st.sampled_from(ATTRIBUTE_TYPES))
        body += struct.pack("!HH", kind, len(value)) + value + bytes(-len(value) % 4)
    length = draw(st.sampled_from([len(body), draw(st.integers(0, 0xFFFF))]))
    return struct.pack("!HHI12s", message_type, length, cookie, draw(st.binary(min_size=12, max_size=12))) + body


@settings(max_examples=300, deadline=None)
@given(st.one_of(stun_like(), st.binary(max_size=300).map(lambda b: b"\x00" + b)))
def test_nothing_a_peer_sends_raises_and_every_datagram_is_counted_once(datagram: bytes) -> None:
    ice = responder()
    outcome = ice.handle(datagram, BROWSER, now=1.0)
    assert sum(ice.counts.values()) == 1
    assert (outcome.reply is not None) == (ice.counts["stun_checks"] == 1)
