"""The RTCP seams of the forwarding core: authenticated RTCP handed to a slow-path handler,
RTCP sent from an endpoint with its outbound key, sender-report timestamp mapping."""
from __future__ import annotations

import struct

import pytest

from forward_harness import Harness, counts
from mediad._forward import Endpoint
from rtp import build_rtcp_receiver_report, build_rtp


def test_authenticated_rtcp_reaches_the_handler_decrypted(harness: Harness) -> None:
    seen: list[tuple[Endpoint, bytes]] = []
    harness.forwarder.set_rtcp_handler(lambda endpoint, packet: seen.append((endpoint, packet)))
    a = harness.participant(name="a")
    report = build_rtcp_receiver_report(77)
    good = a.peer.protect_rtcp(report)
    forged = bytearray(good)
    forged[10] ^= 1
    harness.deliver(a.peer, [bytes(forged), good], a.endpoint)

    assert seen == [(a.endpoint, report)]
    stats = counts(a.endpoint)
    assert (stats["rtcp_in"], stats["drops"]["auth_failed"], stats["rtcp_errors"]) == (1, 1, 0)


def test_a_failing_handler_is_counted_and_media_keeps_flowing(harness: Harness) -> None:
    def broken(endpoint: Endpoint, packet: bytes) -> None:
        raise RuntimeError("handler bug")

    harness.forwarder.set_rtcp_handler(broken)
    reported: list[dict[str, object]] = []
    harness.loop.set_exception_handler(lambda _loop, context: reported.append(context))
    publisher, a = harness.participant(), harness.participant()
    publisher.endpoint.add_track(5).subscribe(a.endpoint, 6)
    harness.deliver(publisher.peer, [publisher.peer.protect_rtcp(build_rtcp_receiver_report(5))], publisher.endpoint)
    publisher.peer.send(build_rtp(1, 90, 5, b"after"))
    harness.wait(lambda: len(a.peer.received) == 1, "media after the failed handler")

    assert publisher.endpoint.counters.rtcp_errors == 1
    assert [str(e.get("exception")) for e in reported] == ["handler bug"]


def test_send_rtcp_protects_with_the_outbound_key(harness: Harness) -> None:
    a = harness.participant()
    pli = struct.pack("!BBHII", 0x81, 206, 2, 1, 42)  # RFC 4585 6.3.1 picture loss indication
    assert a.endpoint.send_rtcp(pli)
    harness.wait(lambda: a.peer.drain() > 0 or bool(a.peer.received), "the RTCP packet")

    assert a.peer.rx.unprotect_rtcp(a.peer.received[0].datagram) == pli
    assert a.endpoint.counters.rtcp_out == 1
    with pytest.raises(ValueError):
        a.endpoint.send_rtcp(b"\x81")


def test_send_rtcp_without_a_remote_sends_nothing(harness: Harness) -> None:
    a = harness.participant(latching=True)
    assert not a.endpoint.send_rtcp(build_rtcp_receiver_report(1))
    assert a.endpoint.counters.rtcp_out == 0


def test_map_timestamp_follows_the_subscription_offset(harness: Harness) -> None:
    publisher, a = harness.participant(), harness.participant()
    track = publisher.endpoint.add_track(9)
    sub = track.subscribe(a.endpoint, 10)
    assert sub.map_timestamp(1000) is None
    publisher.peer.send(build_rtp(100, 5000, 9, b"one"))
    harness.wait(lambda: len(a.peer.received) == 1, "the first packet")
    assert sub.map_timestamp(8000) == 8000  # the first packet maps with offset 0

    track.set_ssrc(19)  # a restart rebases the mapping
    publisher.peer.send(build_rtp(7, 123456, 19, b"two"))
    harness.wait(lambda: len(a.peer.received) == 2, "the packet after the restart")
    out_ts = struct.unpack("!I", a.peer.plain[1][4:8])[0]
    assert sub.map_timestamp(123456) == out_ts
    assert sub.map_timestamp(123456 + 900) == (out_ts + 900) & 0xFFFFFFFF


def test_a_handler_removing_the_track_mid_batch_is_safe(harness: Harness) -> None:
    publisher, a = harness.participant(), harness.participant()
    track = publisher.endpoint.add_track(5)
    track.subscribe(a.endpoint, 6)
    harness.forwarder.set_rtcp_handler(lambda endpoint, packet: endpoint.remove_track(endpoint.tracks[0]))
    del track  # the endpoint holds the only reference the handler drops

    # Queued before the loop runs, so one batch: media, the RTCP that removes its track, media.
    publisher.peer.send(build_rtp(1, 90, 5, b"before"))
    publisher.peer.send_raw(publisher.peer.protect_rtcp(build_rtcp_receiver_report(5)))
    publisher.peer.send(build_rtp(2, 180, 5, b"after"))
    harness.settle(publisher.endpoint, 3)

    stats = counts(publisher.endpoint)
    assert (stats["packets_in"], stats["rtcp_in"], stats["drops"]["unknown_ssrc"]) == (1, 1, 1)
    assert publisher.endpoint.tracks == [] and a.endpoint.subscriptions == []
    assert a.endpoint.counters.packets_out == 0
