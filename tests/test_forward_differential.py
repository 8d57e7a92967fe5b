"""The compiled forwarder against tests/reference_forwarder.py: the same datagrams and
control calls, the same decrypted output at every subscriber. Subscriber E is a route with
a browser's options: its own payload type, no header extensions, from key frames only."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import reference_forwarder as ref
from forward_harness import Harness, Participant, counts, new_key
from rtp import (
    build_rtcp_receiver_report,
    build_rtp,
    header_fields,
    one_byte_extension,
    receiver_session,
    sender_session,
    ts_diff,
)

SSRC_1 = 0x11110000
SSRC_2 = 0x22220000
OUT = {"A": 0xA, "B": 0xB, "C": 0xC, "D": 0xD, "E": 0xE}
SUITES = {
    "publisher": "AES_CM_128_HMAC_SHA1_80",
    "A": "AES_CM_128_HMAC_SHA1_80",
    "B": "AEAD_AES_128_GCM",
    "C": "AES_CM_128_HMAC_SHA1_32",
    "D": "AEAD_AES_128_GCM",
    "E": "AEAD_AES_128_GCM",
}
E_OPTIONS: dict[str, Any] = {"payload_type": 101, "strip_extensions": True, "wait_for_key_frame": True}
# VP8 payload descriptors (RFC 7741 4.2) and payload headers: S=1, PID=0 and P=0 start a key
# frame; the others are the middle of a frame.
KEY_FRAME = bytes([0x10, 0x9C])
INTER_FRAME = bytes([0x00, 0x9D])


class Twin:
    """One participant in both forwarders, with the same keys."""

    def __init__(self, harness: Harness, reference: ref.ReferenceForwarder, name: str, latching: bool) -> None:
        self.participant: Participant = harness.participant(SUITES[name], latching=latching, name=name)
        p = self.participant
        self.ref = reference.create_endpoint(
            rx_suite=p.rx_suite,
            rx_key=p.rx_key,
            tx_suite=p.tx_suite,
            tx_key=p.tx_key,
            remote=None if latching else p.peer.address,
            name=name,
        )


class Scenario:
    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.reference = ref.ReferenceForwarder()
        self.publisher = Twin(harness, self.reference, "publisher", latching=False)
        self.subscribers = {
            "A": Twin(harness, self.reference, "A", latching=False),
            "B": Twin(harness, self.reference, "B", latching=False),
            "C": Twin(harness, self.reference, "C", latching=True),
            "D": Twin(harness, self.reference, "D", latching=False),
            "E": Twin(harness, self.reference, "E", latching=False),
        }
        self.track = self.publisher.participant.endpoint.add_track(SSRC_1, codec="VP8")
        self.ref_track = self.publisher.ref.add_track(SSRC_1, codec="VP8")
        self.subscriptions: dict[str, Any] = {}
        self.ref_subscriptions: dict[str, ref.RefSubscription] = {}
        self.ref_sent: list[ref.Sent] = []
        self.sent_plain: dict[int, bytes] = {}
        self.started = time.monotonic()

    def subscribe(self, name: str, paused: bool = False, **options: Any) -> None:
        self.subscriptions[name] = self.track.subscribe(
            self.subscribers[name].participant.endpoint, OUT[name], paused=paused, **options
        )
        self.ref_subscriptions[name] = self.ref_track.subscribe(
            self.subscribers[name].ref, OUT[name], paused=paused, **options
        )

    def deliver(self, twin: Twin, datagrams: list[bytes], peer: Any = None) -> None:
        """The same datagrams to both forwarders, from the same address."""
        peer = peer or twin.participant.peer
        for datagram in datagrams:
            self.ref_sent += self.reference.receive(twin.ref, datagram, peer.address, time.monotonic())
        self.harness.deliver(peer, datagrams, twin.participant.endpoint)

    def packets(self, seqs: list[int], ssrc: int = SSRC_1, ts_base: int = 0) -> None:
        datagrams = []
        for _i, seq in enumerate(seqs):
            plain = build_rtp(
                seq,
                ts_base + 1500 * seq,
                ssrc,
                (KEY_FRAME if seq % 10 == 3 else INTER_FRAME) + b"seq %d ssrc %x" % (seq, ssrc),
                marker=seq % 5 == 0,
                csrcs=[seq] if seq % 3 == 0 else [],
                extension=one_byte_extension([(5, bytes([seq & 0xFF]))]) if seq % 2 else None,
                padding=seq % 4,
            )
            datagrams.append(self.publisher.participant.peer.protect(plain))
        self.deliver(self.publisher, datagrams)

    def sleep(self, seconds: float) -> None:
        self.harness.loop.run_until_complete(asyncio.sleep(seconds))


def run_scenario(s: Scenario) -> None:
    s.subscribe("A")
    s.subscribe("B")
    s.subscribe("C")
    s.subscribe("E", **E_OPTIONS)
    # Up to the sequence wrap, across it, a gap and reordering.
    s.packets(list(range(65520, 65530)))
    s.packets([65530, 65531, 65532, 65533, 65534, 65535, 0, 1, 2])
    s.packets([5, 6, 4, 3, 7])
    # A subscriber added mid-stream starts at offset 0.
    s.subscribe("D")
    s.packets([8, 9, 10])
    # C latches through SRTCP from its peer.
    c = s.subscribers["C"].participant
    s.deliver(s.subscribers["C"], [c.peer.protect_rtcp(build_rtcp_receiver_report(77))])
    s.packets([11, 12, 13])
    # Hostile datagrams: wrong key, replay, unknown SSRC, too short, a STUN-looking one.
    publisher_peer = s.publisher.participant.peer
    forged = sender_session(SUITES["publisher"], new_key(SUITES["publisher"])).protect(build_rtp(14, 0, SSRC_1, b"x"))
    replay = publisher_peer.protect(build_rtp(12, 1500 * 12, SSRC_1, b"seq 12 again"))
    unknown = publisher_peer.protect(build_rtp(14, 0, 0x999, b"who"))
    s.deliver(s.publisher, [forged, replay, unknown, b"\x80\x60", b"\x00\x01\x00\x00"])
    s.packets([15, 16])
    # B pauses: its packets are dropped; after the resume its numbers carry on without a gap.
    # E pauses too, and waits for a key frame again after its resume.
    for name in ("B", "E"):
        s.subscriptions[name].pause()
        s.ref_subscriptions[name].pause()
    s.packets([17, 18, 20])
    for name in ("B", "E"):
        s.subscriptions[name].resume()
        s.ref_subscriptions[name].resume()
    s.sleep(0.02)
    # 19 arrives late: stale for B (it predates B's new mapping), forwarded to the others.
    s.packets([21, 22, 19])
    # A restart beyond MAX_DROPOUT.
    s.packets([5000, 5001], ts_base=777)
    s.track.unsubscribe(s.subscriptions["D"])
    s.ref_track.unsubscribe(s.ref_subscriptions["D"])
    s.packets([5002, 5003], ts_base=777)
    # The publisher restarts with a new SSRC.
    s.track.set_ssrc(SSRC_2)
    s.ref_track.set_ssrc(SSRC_2)
    s.packets([5004], ts_base=777)
    s.sleep(0.02)
    s.packets([300, 301, 303, 302], ssrc=SSRC_2, ts_base=123456)
    # A pause and resume with no time in between still continues without a gap.
    s.subscriptions["A"].pause()
    s.ref_subscriptions["A"].pause()
    s.packets([304], ssrc=SSRC_2, ts_base=123456)
    s.subscriptions["A"].resume()
    s.ref_subscriptions["A"].resume()
    s.packets([305, 306], ssrc=SSRC_2, ts_base=123456)


def decrypt_reference(s: Scenario, name: str) -> list[tuple[bytes, ref.Sent]]:
    p = s.subscribers[name].participant
    session = receiver_session(p.tx_suite, p.tx_key)
    return [
        (session.unprotect(sent.datagram), sent)
        for sent in s.ref_sent
        if sent.endpoint is s.subscribers[name].ref
    ]


def test_compiled_forwarder_matches_the_reference(harness: Harness) -> None:
    s = Scenario(harness)
    run_scenario(s)
    elapsed = time.monotonic() - s.started
    harness.drain()
    assert s.ref_sent, "the reference forwarded nothing"

    for name, twin in s.subscribers.items():
        expected = decrypt_reference(s, name)
        got = twin.participant.peer.plain
        assert len(got) == len(expected), name
        assert [header_fields(p)[0] for p in got] == [header_fields(p)[0] for p, _ in expected], name
        assert [header_fields(p)[2] for p in got] == [OUT[name]] * len(got)
        assert [p[:2] + p[12:] for p in got] == [p[:2] + p[12:] for p, _ in expected], name
        # Timestamps: identical up to the first wall-time rebase; then each segment between
        # rebases is shifted by a constant, and each rebase moves the stream forward from
        # the last packet that advanced it, by at most the time the scenario took.
        shift = 0
        last_advanced: int | None = None
        for out, (want, sent) in zip(got, expected, strict=False):
            core_ts, ref_ts = header_fields(out)[1], header_fields(want)[1]
            if sent.rebased:
                shift = (core_ts - ref_ts) & 0xFFFFFFFF
                assert last_advanced is not None
                assert 1 <= ts_diff(core_ts, last_advanced) <= int(elapsed * 90000) + 1, name
            assert (core_ts - ref_ts) & 0xFFFFFFFF == shift, name
            if sent.advanced:
                last_advanced = core_ts

    # The rebases the reference saw, per subscriber: resume (B, A), restart, source change;
    # E's resume and the restart fall on one packet, the key frame it waited for.
    rebases = {name: sum(sent.rebased for _, sent in decrypt_reference(s, name)) for name in s.subscribers}
    assert rebases == {"A": 3, "B": 3, "C": 2, "D": 1, "E": 2}

    compare_stats(counts(s.publisher.participant.endpoint), s.publisher.ref.stats())
    for name, twin in s.subscribers.items():
        compare_stats(counts(twin.participant.endpoint), twin.ref.stats())
        sub, ref_sub = counts(s.subscriptions[name]), s.ref_subscriptions[name].counters
        for key in ref_sub:
            assert sub[key] == ref_sub[key], (name, key)
    assert s.subscriptions["B"].dropped_stale == 1
    assert s.subscriptions["C"].dropped_no_remote > 0
    assert s.publisher.participant.endpoint.counters.dropped("unknown_ssrc") == 2
    # E: from the first key frame on, again from the first after its resume; its own
    # payload type and no extensions on every packet.
    e = s.subscriptions["E"]
    assert e.dropped_waiting_key_frame == 3 + 6  # 65520-65522; 21, 22, 19, 5000-5002
    e_plain = s.subscribers["E"].participant.peer.plain
    assert {p[1] & 0x7F for p in e_plain} == {101}
    assert not any(p[0] & 0x10 for p in e_plain)


def compare_stats(core: dict[str, Any], reference: dict[str, Any]) -> None:
    for key in ("packets_in", "bytes_in", "packets_out", "bytes_out", "rtcp_in", "drops"):
        assert core[key] == reference[key], (key, core[key], reference[key])
