"""NACK answering from the track's plaintext retransmission cache (Subscription.retransmit).

A retransmission repeats the lost packet's sequence number, so only a receiver that really
lost the original accepts it (its SRTP replay window never saw that index): the tests decrypt
retransmissions with a fresh session of the viewer's key, as such a receiver would."""
from __future__ import annotations

import pylibsrtp
import pytest

from forward_harness import Harness, Participant, counts
from mediad._forward import Subscription, Track
from rtp import build_rtp, header_fields, receiver_session


def decrypt_as_if_lost(viewer: Participant, datagram: bytes) -> bytes:
    return receiver_session(viewer.tx_suite, viewer.tx_key).unprotect(datagram)


def stream(harness: Harness, cache_packets: int = 8) -> tuple[Participant, Participant, Track, Subscription]:
    publisher, viewer = harness.participant(name="publisher"), harness.participant(name="viewer")
    track = publisher.endpoint.add_track(5, cache_packets=cache_packets)
    return publisher, viewer, track, track.subscribe(viewer.endpoint, 50)


def send(harness: Harness, publisher: Participant, viewer: Participant, seqs: list[int], ssrc: int = 5) -> None:
    expected = len(viewer.peer.received) + len(seqs)
    for seq in seqs:
        publisher.peer.send(build_rtp(seq, seq * 900, ssrc, b"payload %d" % seq))
    harness.wait(lambda: viewer.peer.drain() >= 0 and len(viewer.peer.received) == expected, f"{expected} packets")


def test_a_nacked_packet_comes_again_identical_and_protected_afresh(harness: Harness) -> None:
    publisher, viewer, track, sub = stream(harness)
    other = harness.participant(name="other")
    other_sub = track.subscribe(other.endpoint, 60)
    send(harness, publisher, viewer, [100, 101, 102])
    harness.wait(lambda: other.peer.drain() >= 0 and len(other.peer.received) == 3, "three packets at other")
    first = viewer.peer.plain[1]

    assert sub.retransmit(header_fields(first)[0])
    harness.wait(lambda: viewer.peer.drain() >= 0 and len(viewer.peer.received) == 4, "the retransmission")

    again = viewer.peer.received[3]
    assert again.plain is None  # the viewer that got the original rejects it as a replay
    assert decrypt_as_if_lost(viewer, again.datagram) == first  # same seq, timestamp, SSRC, payload
    with pytest.raises(pylibsrtp.Error):
        decrypt_as_if_lost(other, again.datagram)  # protected with the viewer's key only
    stats = counts(sub)
    assert (stats["retransmitted"], stats["retransmit_misses"]) == (1, 0)
    assert other_sub.retransmitted == 0
    assert viewer.endpoint.counters.packets_out == 4


def test_packets_not_in_the_cache_are_misses(harness: Harness) -> None:
    publisher, viewer, track, sub = stream(harness, cache_packets=4)
    send(harness, publisher, viewer, list(range(10, 20)))
    out = [header_fields(p)[0] for p in viewer.peer.plain]

    assert not sub.retransmit(out[0])  # evicted: 4 slots, 10 packets
    assert not sub.retransmit((out[-1] + 1) & 0xFFFF)  # not sent yet
    assert sub.retransmit(out[-1])
    assert sub.retransmit_misses == 2
    with pytest.raises(ValueError):
        sub.retransmit(70000)


def test_a_track_without_a_cache_answers_nothing(harness: Harness) -> None:
    publisher, viewer, track, sub = stream(harness, cache_packets=0)
    send(harness, publisher, viewer, [1, 2])
    assert track.cache_packets == 0
    assert not sub.retransmit(header_fields(viewer.peer.plain[0])[0])
    assert sub.retransmit_misses == 1


def test_after_a_restart_only_the_new_mapping_is_answered(harness: Harness) -> None:
    publisher, viewer, track, sub = stream(harness)
    send(harness, publisher, viewer, [1000, 1001])
    before = header_fields(viewer.peer.plain[0])[0]
    track.set_ssrc(6)
    send(harness, publisher, viewer, [7, 8], ssrc=6)
    after = viewer.peer.plain[3]

    assert not sub.retransmit(before)  # the old publisher SSRC's packets map no more
    assert sub.retransmit(header_fields(after)[0])
    harness.wait(lambda: viewer.peer.drain() >= 0 and len(viewer.peer.received) == 5, "the retransmission")
    assert decrypt_as_if_lost(viewer, viewer.peer.received[4].datagram) == after
