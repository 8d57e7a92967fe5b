"""Hostile traffic: every bad datagram is dropped and counted under its reason while good
packets sent around it keep flowing; latching follows authenticated packets only."""
from __future__ import annotations

import os
import struct
from collections.abc import Callable

import pytest

from forward_harness import Harness, counts, new_key
from mediad._forward import DROP_REASONS
from rtp import (
    SRTCP_TRAILER_LENGTHS,
    SUITES,
    TAG_LENGTHS,
    build_rtcp_receiver_report,
    build_rtp,
    header_fields,
    sender_session,
)

TRACK_SSRC = 0x600DF00D
OUT_SSRC = 0x0000BEEF


class Scene:
    """A publisher with one track, forwarded to one subscriber."""

    def __init__(self, harness: Harness, suite: str) -> None:
        self.harness = harness
        self.suite = suite
        self.tag = TAG_LENGTHS[suite]
        self.publisher = harness.participant(suite, name="publisher")
        self.subscriber = harness.participant(suite, name="subscriber")
        self.track = self.publisher.endpoint.add_track(TRACK_SSRC)
        self.subscription = self.track.subscribe(self.subscriber.endpoint, OUT_SSRC)
        self.seq = 1000
        self.accepted: list[bytes] = []
        self.good_payloads: list[bytes] = []

    def fresh_seq(self) -> int:
        self.seq += 1
        return self.seq

    def plain(self, ssrc: int = TRACK_SSRC, payload: bytes = b"payload bytes", **fields: object) -> bytes:
        seq = self.fresh_seq()
        return build_rtp(seq, 90 * seq, ssrc, payload, **fields)  # type: ignore[arg-type]

    def protected(self, **fields: object) -> bytes:
        return self.publisher.peer.protect(self.plain(**fields))  # type: ignore[arg-type]

    def good(self) -> bytes:
        payload = b"good %d" % len(self.good_payloads)
        datagram = self.protected(payload=payload)
        self.accepted.append(datagram)
        self.good_payloads.append(payload)
        return datagram


def flip(datagram: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(datagram)
    out[index] ^= 1 << bit
    return bytes(out)


def csrc_past_end(s: Scene) -> bytes:
    plain = bytearray(s.plain(payload=b"12345678"))
    plain[0] = 0x80 | 15  # 15 CSRCs (60 bytes) announced, 8 bytes of payload follow
    return bytes(plain) + b"\x00" * s.tag


def extension_past_end(s: Scene) -> bytes:
    plain = bytearray(s.plain(extension=b"\x10\xaa\x00\x00", payload=b"abcd"))
    struct.pack_into("!H", plain, 14, 0x0100)  # 1024 bytes of extension announced
    return bytes(plain) + b"\x00" * s.tag


def wrong_key(s: Scene, ssrc: int = TRACK_SSRC) -> bytes:
    return sender_session(s.suite, new_key(s.suite)).protect(s.plain(ssrc=ssrc))


def tiny_rtcp(s: Scene) -> bytes:
    return build_rtcp_receiver_report(TRACK_SSRC)[:8] + b"\x00" * 2


def rtcp_without_full_trailer(s: Scene) -> bytes:
    # 8 bytes of RTCP and one byte less than the SRTCP index and tag.
    return build_rtcp_receiver_report(TRACK_SSRC) + b"\x00" * (SRTCP_TRAILER_LENGTHS[s.suite] - 1)


def rtcp_wrong_key(s: Scene) -> bytes:
    return sender_session(s.suite, new_key(s.suite)).protect_rtcp(build_rtcp_receiver_report(TRACK_SSRC))


def stun_binding_request(s: Scene) -> bytes:
    return struct.pack("!HHI", 0x0001, 0, 0x2112A442) + os.urandom(12)


def dtls_client_hello(s: Scene) -> bytes:
    return bytes([22, 0xFE, 0xFD]) + bytes(8) + struct.pack("!H", 40) + bytes([1]) + os.urandom(39)


def with_first_byte(value: int) -> Callable[[Scene], bytes]:
    def build(s: Scene) -> bytes:
        return bytes([value]) + s.protected()[1:]

    return build


CASES: dict[str, tuple[Callable[[Scene], bytes], str]] = {
    "three bytes": (lambda s: b"\x80\x60\x00", "too_short"),
    "eleven-byte header": (lambda s: s.plain()[:11], "too_short"),
    "header without a full tag": (lambda s: s.plain(payload=b"")[:12] + b"\x00" * (s.tag - 1), "too_short"),
    "CSRC count past the end": (csrc_past_end, "malformed"),
    "extension length past the end": (extension_past_end, "malformed"),
    "version 1": (with_first_byte(0x40), "bad_version"),
    "version 3": (with_first_byte(0xC0), "bad_version"),
    "version 0 in the ZRTP range": (with_first_byte(16), "bad_version"),
    "first byte 255": (with_first_byte(255), "bad_version"),
    "STUN binding request": (stun_binding_request, "stun"),
    "first byte 3": (with_first_byte(3), "stun"),
    "DTLS client hello": (dtls_client_hello, "dtls"),
    "first byte 20": (with_first_byte(20), "dtls"),
    "first byte 63": (with_first_byte(63), "dtls"),
    "wrong key": (wrong_key, "auth_failed"),
    "payload bit flipped": (lambda s: flip(s.protected(payload=b"0123456789"), 14), "auth_failed"),
    "tag bit flipped": (lambda s: flip(s.protected(), -1, 7), "auth_failed"),
    "timestamp bit flipped": (lambda s: flip(s.protected(), 7, 3), "auth_failed"),
    "replayed": (lambda s: s.accepted[0], "replayed"),
    "unknown SSRC": (lambda s: s.protected(ssrc=0x0BAD0BAD), "unknown_ssrc"),
    # Looked up before decryption: no crypto is spent on it, whatever its key.
    "unknown SSRC with a wrong key": (lambda s: wrong_key(s, ssrc=0x0BAD0BAD), "unknown_ssrc"),
    "oversize, 3000 bytes": (lambda s: s.protected(payload=b"o" * 3000), "oversize"),
    "oversize by one byte": (lambda s: s.protected(payload=b"o" * (2049 - 12 - s.tag)), "oversize"),
    "RTCP shorter than its trailer": (tiny_rtcp, "too_short"),
    "RTCP one byte short of its trailer": (rtcp_without_full_trailer, "too_short"),
    "RTCP with a wrong key": (rtcp_wrong_key, "auth_failed"),
}


def expected_drops(reason: str, count: int) -> dict[str, int]:
    return {r: (count if r == reason else 0) for r in DROP_REASONS}


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("case", CASES)
def test_bad_datagram_is_dropped_and_counted(harness: Harness, suite: str, case: str) -> None:
    build, reason = CASES[case]
    scene = Scene(harness, suite)
    peer = scene.publisher.peer
    datagrams = [scene.good(), build(scene), scene.good(), build(scene), scene.good()]
    harness.deliver(peer, datagrams, scene.publisher.endpoint)
    # Bad ones first in a batch of their own, then a good one alone.
    harness.deliver(peer, [build(scene)], scene.publisher.endpoint)
    harness.deliver(peer, [scene.good()], scene.publisher.endpoint)

    stats = counts(scene.publisher.endpoint)
    assert stats["drops"] == expected_drops(reason, 3)
    assert stats["packets_in"] == 4
    assert stats["rtcp_in"] == 0
    harness.wait(lambda: len(scene.subscriber.peer.received) == 4, "the good packets at the subscriber")
    plain = scene.subscriber.peer.plain
    assert [p[12:] for p in plain] == scene.good_payloads
    assert [header_fields(p)[2] for p in plain] == [OUT_SSRC] * 4
    assert scene.track.packets == 4
    assert scene.subscription.packets == 4
    # Nothing was forwarded to or counted at the subscriber's endpoint as input.
    assert scene.subscriber.endpoint.counters.packets_in == 0


def test_largest_accepted_datagram_is_forwarded(harness: Harness) -> None:
    scene = Scene(harness, "AES_CM_128_HMAC_SHA1_80")
    datagram = scene.protected(payload=b"m" * (2048 - 12 - scene.tag))
    assert len(datagram) == 2048
    harness.deliver(scene.publisher.peer, [datagram], scene.publisher.endpoint)
    harness.wait(lambda: len(scene.subscriber.peer.received) == 1, "the 2048-byte packet forwarded")
    assert scene.subscriber.peer.plain[0][12:] == b"m" * (2048 - 12 - scene.tag)
    assert counts(scene.publisher.endpoint)["drops"] == expected_drops("oversize", 0)


@pytest.mark.parametrize("suite", SUITES)
def test_authenticated_rtcp_is_counted_not_forwarded(harness: Harness, suite: str) -> None:
    scene = Scene(harness, suite)
    peer = scene.publisher.peer
    report = peer.protect_rtcp(build_rtcp_receiver_report(TRACK_SSRC))
    harness.deliver(peer, [scene.good(), report, scene.good(), report], scene.publisher.endpoint)
    stats = counts(scene.publisher.endpoint)
    assert stats["rtcp_in"] == 1
    assert stats["drops"] == expected_drops("replayed", 1)
    harness.wait(lambda: len(scene.subscriber.peer.received) == 2, "the RTP packets forwarded")
    assert [p[12:] for p in scene.subscriber.peer.plain] == scene.good_payloads


def test_flood_of_garbage_does_not_stall_other_endpoints(harness: Harness) -> None:
    victim = Scene(harness, "AES_CM_128_HMAC_SHA1_80")
    bystander = Scene(harness, "AEAD_AES_128_GCM")
    attacker = harness.extra_peer(victim.publisher, send_key=new_key("AES_CM_128_HMAC_SHA1_80"))
    for _round in range(10):
        for i in range(50):
            attacker.send_raw(bytes([0x80 | (i % 16), 0x60]) + os.urandom(10 + 7 * i))
        bystander.publisher.peer.send_raw(bystander.good())
        victim.publisher.peer.send_raw(victim.good())
    harness.wait(
        lambda: len(bystander.subscriber.peer.received) == 10 and len(victim.subscriber.peer.received) == 10,
        "every good packet at both subscribers",
    )
    harness.settle(victim.publisher.endpoint, 510)
    assert victim.publisher.endpoint.counters.packets_in == 10
    assert sum(counts(bystander.publisher.endpoint)["drops"].values()) == 0


# --- latching --------------------------------------------------------------------------------

def test_latching_follows_authenticated_packets_only(harness: Harness) -> None:
    publisher = harness.participant(name="publisher")
    track = publisher.endpoint.add_track(TRACK_SSRC)
    latcher = harness.participant(latching=True, name="latcher")
    latcher.endpoint.add_track(0x1A7C4)
    subscription = track.subscribe(latcher.endpoint, OUT_SSRC)
    assert latcher.endpoint.remote is None
    assert latcher.endpoint.latching

    seq = iter(range(100, 10000))

    def forward(count: int) -> None:
        publisher_before = publisher.endpoint.counters.packets_in
        for _ in range(count):
            publisher.peer.send(build_rtp(next(seq), 0, TRACK_SSRC, b"media"))
        harness.wait(
            lambda: publisher.endpoint.counters.packets_in == publisher_before + count,
            f"{count} packets accepted from the publisher",
        )
        harness.drain()

    # Before any authenticated packet: nowhere to send.
    forward(3)
    assert subscription.dropped_no_remote == 3
    assert subscription.packets == 0

    attacker = harness.extra_peer(latcher, send_key=new_key(latcher.rx_suite))
    genuine = harness.extra_peer(latcher)
    own_seq = iter(range(7000, 8000))

    def own(peer_seq: int, ssrc: int = 0x1A7C4) -> bytes:
        return build_rtp(peer_seq, 0, ssrc, b"from the latcher's side")

    # Fails authentication: wrong key, flipped tag, unknown SSRC with the right key, RTCP with a wrong key.
    bad = [
        attacker.protect(own(next(own_seq))),
        flip(genuine.protect(own(next(own_seq))), -1),
        genuine.protect(own(next(own_seq), ssrc=0xDEAD)),
        attacker.protect_rtcp(build_rtcp_receiver_report(5)),
    ]
    harness.deliver(attacker, bad, latcher.endpoint)
    assert latcher.endpoint.remote is None
    forward(1)
    assert subscription.dropped_no_remote == 4

    # The first authenticated packet latches.
    accepted = genuine.protect(own(next(own_seq)))
    harness.deliver(genuine, [accepted], latcher.endpoint)
    assert latcher.endpoint.remote == genuine.address
    assert latcher.endpoint.latching
    forward(2)
    assert len(genuine.received) == 2
    assert all(r.source == latcher.endpoint.local_address for r in genuine.received)
    assert len(attacker.received) == 0 and len(latcher.peer.received) == 0

    # Neither a forgery nor a replay of the accepted packet from elsewhere moves it.
    harness.deliver(attacker, [attacker.protect(own(next(own_seq))), accepted], latcher.endpoint)
    assert latcher.endpoint.counters.dropped("replayed") == 1
    assert latcher.endpoint.remote == genuine.address
    forward(1)
    assert len(genuine.received) == 3 and len(attacker.received) == 0

    # A later authenticated packet from a new address (NAT rebinding) moves it; so does SRTCP.
    rebound = harness.extra_peer(latcher)
    harness.deliver(rebound, [rebound.protect(own(next(own_seq)))], latcher.endpoint)
    assert latcher.endpoint.remote == rebound.address
    forward(1)
    assert len(rebound.received) == 1 and len(genuine.received) == 3
    harness.deliver(genuine, [genuine.protect_rtcp(build_rtcp_receiver_report(0x1A7C4))], latcher.endpoint)
    assert latcher.endpoint.remote == genuine.address
    forward(1)
    assert len(genuine.received) == 4 and len(rebound.received) == 1
    assert [len(p) for p in genuine.plain] == [len(p) for p in rebound.plain] * 4
    stats = counts(latcher.endpoint)
    assert stats["packets_in"] == 2 and stats["rtcp_in"] == 1
    assert stats["drops"]["auth_failed"] == 4 and stats["drops"]["unknown_ssrc"] == 1


def test_fixed_remote_never_changes(harness: Harness) -> None:
    publisher = harness.participant(name="publisher")
    track = publisher.endpoint.add_track(TRACK_SSRC)
    fixed = harness.participant(name="fixed")
    fixed.endpoint.add_track(0xF1)
    track.subscribe(fixed.endpoint, OUT_SSRC)
    assert fixed.endpoint.remote == fixed.peer.address
    assert not fixed.endpoint.latching

    other = harness.extra_peer(fixed)
    harness.deliver(
        other,
        [other.protect(build_rtp(1, 0, 0xF1, b"x")), other.protect_rtcp(build_rtcp_receiver_report(0xF1))],
        fixed.endpoint,
    )
    assert fixed.endpoint.counters.packets_in == 1 and fixed.endpoint.counters.rtcp_in == 1
    assert fixed.endpoint.remote == fixed.peer.address
    publisher.peer.send(build_rtp(50, 0, TRACK_SSRC, b"y"))
    harness.wait(lambda: len(fixed.peer.received) == 1, "the packet at the fixed remote")
    assert len(other.received) == 0

    # set_remote(None) latches again; set_remote(address) fixes it anew.
    fixed.endpoint.set_remote(None)
    assert fixed.endpoint.remote is None and fixed.endpoint.latching
    harness.deliver(other, [other.protect(build_rtp(2, 0, 0xF1, b"x"))], fixed.endpoint)
    assert fixed.endpoint.remote == other.address
    fixed.endpoint.set_remote(fixed.peer.address)
    assert not fixed.endpoint.latching
    harness.deliver(other, [other.protect(build_rtp(3, 0, 0xF1, b"x"))], fixed.endpoint)
    assert fixed.endpoint.remote == fixed.peer.address


@pytest.mark.parametrize("padding_byte", [0, 200])
def test_authenticated_packet_with_bad_padding_is_accounted_once(harness: Harness, padding_byte: int) -> None:
    """The contract leaves this open: forwarded byte-identical or dropped as malformed, but
    counted exactly once, and the stream flows on."""
    scene = Scene(harness, "AES_CM_128_HMAC_SHA1_80")
    plain = bytearray(scene.plain(payload=b"abc", padding=1))
    plain[-1] = padding_byte  # padding count 0, or past the payload
    bad = scene.publisher.peer.protect(bytes(plain))
    harness.deliver(scene.publisher.peer, [scene.good(), bad, scene.good()], scene.publisher.endpoint)
    stats = counts(scene.publisher.endpoint)
    assert stats["packets_in"] + stats["drops"]["malformed"] == 3
    assert sum(stats["drops"].values()) == stats["drops"]["malformed"]
    harness.wait(lambda: len(scene.subscriber.peer.received) == stats["packets_in"], "the forwarded packets")
    assert [p[12:] for p in scene.subscriber.peer.plain if p[12:] != bytes(plain[12:])] == scene.good_payloads
