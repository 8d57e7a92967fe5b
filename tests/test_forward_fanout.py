"""One publisher's packets reach every subscriber, re-keyed for each, byte-identical but for
sequence number, timestamp and SSRC."""
from __future__ import annotations

import dataclasses

import pytest

from forward_harness import Harness, Participant, counts
from rtp import SUITES, authenticates, build_rtp, header_fields, one_byte_extension, parse_rtp

PUBLISHER_SSRC = 0x1234ABCD
FIRST_SEQ = 40000
FIRST_TS = 3_000_000_000


def publisher_packets(ssrc: int = PUBLISHER_SSRC, first_seq: int = FIRST_SEQ) -> list[bytes]:
    """Packets exercising every header field the forwarder must carry over unchanged."""
    extension = one_byte_extension([(1, b"\x30"), (3, b"\x01\x02\x03"), (14, bytes(range(16)))])
    shapes = [
        dict(payload=b"plain payload"),
        dict(payload=b"marker", marker=True),
        dict(payload=b"csrcs", csrcs=[0xCAFEBABE, 0x00000001]),
        dict(payload=b"extension", extension=extension),
        dict(payload=b"everything", marker=True, csrcs=[7, 8, 9], extension=extension, padding=7),
        dict(payload=b"padding only", padding=1),
        dict(payload=b"", payload_type=111),
        dict(payload=bytes(range(256)) * 4 + b"large", payload_type=100),
        dict(payload=b"x" * 15, csrcs=list(range(1, 16))),
        dict(payload=b"\x00\xff" * 100, extension=one_byte_extension([(2, b"\xaa\xbb")]), padding=255),
    ]
    return [
        build_rtp(first_seq + i, FIRST_TS + 3000 * i, ssrc, **shape)  # type: ignore[arg-type]
        for i, shape in enumerate(shapes)
    ]


def fan_out(harness: Harness, publisher: Participant, subscribers: list[Participant]) -> list[bytes]:
    track = publisher.endpoint.add_track(PUBLISHER_SSRC)
    for i, subscriber in enumerate(subscribers):
        track.subscribe(subscriber.endpoint, 0x50000000 + i)
    packets = publisher_packets()
    for packet in packets:
        publisher.peer.send(packet)
    harness.settle(publisher.endpoint, len(packets))
    harness.wait(
        lambda: all(len(s.peer.received) >= len(packets) for s in subscribers),
        f"{len(packets)} packets at each of {len(subscribers)} subscribers",
    )
    return packets


def check_forwarded(sent: list[bytes], subscriber: Participant, ssrc: int) -> None:
    received = subscriber.peer.received
    assert len(received) == len(sent)
    for packet in received:
        # From the subscriber endpoint's own socket, protected with its own key.
        assert packet.source == subscriber.endpoint.local_address
    plain = subscriber.peer.plain
    for original, out in zip(sent, plain, strict=False):
        seq, ts, _ = header_fields(original)
        assert header_fields(out) == (seq, ts, ssrc)  # the first packet maps with offset 0
        assert out[:2] == original[:2]
        assert out[12:] == original[12:]
        assert parse_rtp(out) == dataclasses.replace(parse_rtp(original), ssrc=ssrc)


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("count", [1, 3, 10])
def test_publisher_reaches_every_subscriber(harness: Harness, suite: str, count: int) -> None:
    publisher = harness.participant(suite, name="publisher")
    subscribers = [harness.participant(suite, name=f"subscriber{i}") for i in range(count)]
    sent = fan_out(harness, publisher, subscribers)

    for i, subscriber in enumerate(subscribers):
        check_forwarded(sent, subscriber, 0x50000000 + i)
        # Each subscriber's packets authenticate with its key only.
        for packet in subscriber.peer.received:
            for other in subscribers:
                if other is not subscriber:
                    assert not authenticates(suite, other.tx_key, packet.datagram)
            assert not authenticates(suite, publisher.rx_key, packet.datagram)
            assert not authenticates(suite, publisher.tx_key, packet.datagram)
    # Two subscribers never receive the same bytes.
    datagrams = [p.datagram for s in subscribers for p in s.peer.received]
    assert len(set(datagrams)) == len(datagrams)

    stats = counts(publisher.endpoint)
    assert stats["packets_in"] == len(sent)
    assert stats["bytes_in"] == sum(map(len, sent))
    assert sum(stats["drops"].values()) == 0
    for subscriber in subscribers:
        assert subscriber.endpoint.counters.packets_out == len(sent)
        assert subscriber.endpoint.counters.bytes_out == sum(len(p.datagram) for p in subscriber.peer.received)


@pytest.mark.parametrize("publisher_suite", SUITES)
def test_subscribers_with_other_suites_than_the_publisher(harness: Harness, publisher_suite: str) -> None:
    publisher = harness.participant(publisher_suite)
    subscribers = [harness.participant(suite) for suite in SUITES]
    sent = fan_out(harness, publisher, subscribers)
    for i, subscriber in enumerate(subscribers):
        check_forwarded(sent, subscriber, 0x50000000 + i)


def test_endpoint_with_different_suites_per_direction(harness: Harness) -> None:
    publisher = harness.participant("AEAD_AES_128_GCM", tx_suite="AES_CM_128_HMAC_SHA1_32")
    subscriber = harness.participant("AES_CM_128_HMAC_SHA1_80", tx_suite="AEAD_AES_128_GCM")
    sent = fan_out(harness, publisher, [subscriber])
    check_forwarded(sent, subscriber, 0x50000000)
    assert all(not authenticates("AES_CM_128_HMAC_SHA1_80", subscriber.rx_key, p.datagram)
               for p in subscriber.peer.received)


def test_two_tracks_of_one_publisher_keep_their_streams_apart(harness: Harness) -> None:
    publisher = harness.participant()
    subscriber = harness.participant()
    audio = publisher.endpoint.add_track(0xA0D10, clock_rate=48000, kind="audio")
    video = publisher.endpoint.add_track(0x71DE0, kind="video")
    audio.subscribe(subscriber.endpoint, 111)
    video.subscribe(subscriber.endpoint, 222)
    audio_packets = [build_rtp(500 + i, 960 * i, 0xA0D10, b"opus%d" % i, payload_type=111) for i in range(6)]
    video_packets = [build_rtp(9000 + i, 3000 * i, 0x71DE0, b"vp8-%d" % i) for i in range(6)]
    for a, v in zip(audio_packets, video_packets, strict=False):
        publisher.peer.send(a)
        publisher.peer.send(v)
    harness.settle(publisher.endpoint, 12)
    harness.wait(lambda: len(subscriber.peer.received) == 12, "12 packets at the subscriber")
    by_ssrc: dict[int, list[bytes]] = {}
    for out in subscriber.peer.plain:
        by_ssrc.setdefault(header_fields(out)[2], []).append(out)
    assert [p[12:] for p in by_ssrc[111]] == [p[12:] for p in audio_packets]
    assert [p[12:] for p in by_ssrc[222]] == [p[12:] for p in video_packets]
    assert [header_fields(p)[:2] for p in by_ssrc[111]] == [header_fields(p)[:2] for p in audio_packets]
    assert [header_fields(p)[:2] for p in by_ssrc[222]] == [header_fields(p)[:2] for p in video_packets]
    assert audio.packets == 6 and video.packets == 6


def test_subscribers_of_several_publishers(harness: Harness) -> None:
    """Every participant publishes and receives every other one (a small meeting)."""
    people = [harness.participant(name=f"p{i}") for i in range(4)]
    tracks = [p.endpoint.add_track(1000 + i) for i, p in enumerate(people)]
    for i, track in enumerate(tracks):
        for j, person in enumerate(people):
            if i != j:
                track.subscribe(person.endpoint, 10 * j + i)
    for round_ in range(5):
        for i, person in enumerate(people):
            person.peer.send(build_rtp(100 + round_, 3000 * round_, 1000 + i, b"from %d round %d" % (i, round_)))
    for person in people:
        harness.settle(person.endpoint, 5)
    harness.wait(lambda: all(len(p.peer.received) == 15 for p in people), "15 packets at everyone")
    for j, person in enumerate(people):
        got = {(header_fields(p)[2], p[12:]) for p in person.peer.plain}
        expected = {(10 * j + i, b"from %d round %d" % (i, r)) for i in range(4) if i != j for r in range(5)}
        assert got == expected
