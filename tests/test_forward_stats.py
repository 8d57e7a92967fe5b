"""Endpoint, track, subscription and forwarder stats: the documented keys, plausible counts."""
from __future__ import annotations

import time

from forward_harness import Harness, counts
from mediad._forward import DROP_REASONS
from rtp import build_rtcp_receiver_report, build_rtp, header_fields

ENDPOINT_KEYS = {"packets_in", "bytes_in", "packets_out", "bytes_out", "rtcp_in", "last_activity", "drops"}
TRACK_KEYS = {"packets", "bytes", "last_activity", "subscriptions"}
SUBSCRIPTION_KEYS = {
    "packets",
    "bytes",
    "dropped_paused",
    "dropped_no_remote",
    "dropped_stale",
    "dropped_waiting_key_frame",
    "send_errors",
    "retransmitted",
    "rtx_sent",
    "retransmit_misses",
    "last_activity",
    "last_seq",
    "last_timestamp",
}
TOTAL_KEYS = ("packets_in", "bytes_in", "packets_out", "bytes_out", "rtcp_in", "rtcp_out", "rtcp_errors")


def test_drop_reasons_are_the_documented_ones() -> None:
    assert DROP_REASONS == (
        "too_short", "oversize", "bad_version", "stun", "dtls", "malformed",
        "unknown_ssrc", "auth_failed", "replayed", "srtp_error", "not_keyed", "handshake_flood",
    )


def test_stats_have_the_documented_keys_and_start_at_zero(harness: Harness) -> None:
    publisher = harness.participant()
    a = harness.participant()
    track = publisher.endpoint.add_track(42, clock_rate=48000, kind="audio", name="mic")
    sub = track.subscribe(a.endpoint, 7)
    assert (track.ssrc, track.clock_rate, track.kind, track.name) == (42, 48000, "audio", "mic")
    assert track.endpoint is publisher.endpoint and sub.track is track and sub.target is a.endpoint
    assert sub.ssrc == 7 and sub.active and not sub.paused
    assert publisher.endpoint.tracks == [track] and a.endpoint.subscriptions == [sub]

    for endpoint in (publisher.endpoint, a.endpoint):
        stats = counts(endpoint)
        assert ENDPOINT_KEYS <= stats.keys()
        assert set(stats["drops"]) == set(DROP_REASONS)
        assert all(stats[key] == 0 for key in TOTAL_KEYS)
        assert sum(stats["drops"].values()) == 0
        assert stats["last_activity"] == 0.0
    stats = counts(track)
    assert TRACK_KEYS <= stats.keys()
    assert (stats["packets"], stats["bytes"], stats["last_activity"], stats["subscriptions"]) == (0, 0, 0.0, 1)
    stats = counts(sub)
    assert SUBSCRIPTION_KEYS <= stats.keys()
    assert all(stats[k] == 0 for k in SUBSCRIPTION_KEYS - {"last_seq", "last_timestamp"})
    totals = counts(harness.forwarder)
    assert all(totals[key] == 0 for key in TOTAL_KEYS)
    assert totals["drops"] == dict.fromkeys(DROP_REASONS, 0)


def test_counts_after_traffic(harness: Harness) -> None:
    publisher = harness.participant(name="publisher")
    a, b = harness.participant(name="a"), harness.participant(name="b", latching=True)
    track = publisher.endpoint.add_track(42)
    sub_a = track.subscribe(a.endpoint, 7)
    sub_b = track.subscribe(b.endpoint, 8)
    packets = [build_rtp(10 + i, 900 * i, 42, b"p" * (50 * i)) for i in range(6)]
    before = time.monotonic()
    for packet in packets:
        publisher.peer.send(packet)
    sub_a.pause()
    harness.settle(publisher.endpoint, 6)
    sub_a.resume()
    report = publisher.peer.protect_rtcp(build_rtcp_receiver_report(42))
    garbage = [b"\x00\x01", b"\x16\xfe\xfd", b"\x80"]
    harness.deliver(publisher.peer, [report, *garbage], publisher.endpoint)
    last = build_rtp(16, 900 * 6, 42, b"last")
    publisher.peer.send(last)
    harness.settle(publisher.endpoint, 11)
    harness.wait(lambda: len(a.peer.received) == 1, "the last packet at a")
    after = time.monotonic()

    stats = counts(publisher.endpoint)
    assert stats["packets_in"] == 7
    assert stats["bytes_in"] == sum(map(len, packets)) + len(last)
    assert stats["rtcp_in"] == 1
    assert stats["drops"] == {**dict.fromkeys(DROP_REASONS, 0), "stun": 1, "dtls": 1, "too_short": 1}
    assert stats["packets_out"] == 0 and stats["bytes_out"] == 0
    assert before <= stats["last_activity"] <= after

    stats = counts(track)
    assert (stats["packets"], stats["bytes"], stats["subscriptions"]) == (7, sum(map(len, packets)) + len(last), 2)
    assert before <= stats["last_activity"] <= after

    # a was paused for the first six, then got the last one.
    stats = counts(sub_a)
    assert (stats["packets"], stats["dropped_paused"], stats["dropped_no_remote"]) == (1, 6, 0)
    assert stats["bytes"] == len(a.peer.received[0].datagram) == a.endpoint.counters.bytes_out
    assert (stats["last_seq"], stats["last_timestamp"]) == header_fields(a.peer.plain[0])[:2]
    assert before <= stats["last_activity"] <= after
    assert a.endpoint.counters.packets_out == 1
    # b has no remote: nothing sent, everything counted.
    stats = counts(sub_b)
    assert (stats["packets"], stats["bytes"], stats["dropped_no_remote"], stats["send_errors"]) == (0, 0, 7, 0)
    assert b.endpoint.counters.packets_out == 0 and len(b.peer.received) == 0

    totals = counts(harness.forwarder)
    endpoints = [counts(e) for e in harness.forwarder.endpoints]
    assert len(endpoints) == 3
    for key in TOTAL_KEYS:
        assert totals[key] == sum(e[key] for e in endpoints), key
    for reason in DROP_REASONS:
        assert totals["drops"][reason] == sum(e["drops"][reason] for e in endpoints), reason


def test_forwarder_totals_keep_what_closed_endpoints_did(harness: Harness) -> None:
    publisher = harness.participant(name="publisher")
    a = harness.participant(name="a")
    track = publisher.endpoint.add_track(42)
    track.subscribe(a.endpoint, 7)
    for seq in range(3):
        publisher.peer.send(build_rtp(seq, 900 * seq, 42, b"x" * 20))
    harness.settle(publisher.endpoint, 3)
    harness.deliver(publisher.peer, [b"\x00\x01"], publisher.endpoint)
    harness.wait(lambda: len(a.peer.received) == 3, "three packets at a")
    assert a.endpoint.send_rtcp(build_rtcp_receiver_report(7))
    before = counts(harness.forwarder)

    publisher.endpoint.close()
    a.endpoint.close()

    after = counts(harness.forwarder)
    assert after["endpoints"] == before["endpoints"] - 2
    assert (after["packets_in"], after["packets_out"], after["rtcp_out"], after["drops"]["stun"]) == (3, 3, 1, 1)
    for key in TOTAL_KEYS:
        assert after[key] == before[key], key
    assert after["drops"] == before["drops"]
