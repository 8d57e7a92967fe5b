"""What the daemon tells publishers about what it receives: a track's reception statistics in
the forwarding core (RFC 3550 A.1 sequence numbers, A.3 loss, A.8 jitter), and the receiver
reports and REMB that mediad/publisher_reports.py builds from them, decrypted by the
publisher's peer with its own key."""
from __future__ import annotations

from forward_harness import DEFAULT_SUITE, Harness, Participant, new_key, udp_socket
from mediad import rtcp
from mediad.publisher_reports import PublisherReports
from mediad.rtcp_router import RtcpRouter
from rtp import build_rtp

SSRC = 0x5150


def send(harness: Harness, publisher: Participant, seqs: list[int], timestamps: list[int] | None = None) -> None:
    stamps = timestamps or [3000 * i for i in range(len(seqs))]
    packets = [publisher.peer.protect(build_rtp(s, t, SSRC)) for s, t in zip(seqs, stamps, strict=True)]
    harness.deliver(publisher.peer, packets, publisher.endpoint)


def test_reception_statistics_count_loss_across_a_wrap(harness: Harness) -> None:
    publisher = harness.participant()
    track = publisher.endpoint.add_track(SSRC)
    assert (track.highest_seq, track.expected, track.received) == (None, 0, 0)
    # 65530 .. 65535, 0 .. 9 with 65533 and 4 lost, and 2 arriving late (after 5).
    seqs = [65530, 65531, 65532, 65534, 65535, 0, 1, 3, 5, 2, 6, 7, 8, 9]
    send(harness, publisher, seqs)
    assert track.highest_seq == 65536 + 9
    assert track.expected == 16 and track.received == 14


def test_a_restart_of_the_sequence_starts_the_statistics_again(harness: Harness) -> None:
    publisher = harness.participant()
    track = publisher.endpoint.add_track(SSRC)
    send(harness, publisher, [100, 101, 102])
    # One packet far ahead is taken as stray; a second in sequence after it confirms a restart.
    send(harness, publisher, [40000], [9000])
    assert track.highest_seq == 102
    send(harness, publisher, [40001, 40002], [12000, 15000])
    assert (track.highest_seq, track.expected, track.received) == (40002, 2, 2)


def test_jitter_follows_uneven_arrival(harness: Harness) -> None:
    publisher = harness.participant()
    track = publisher.endpoint.add_track(SSRC, clock_rate=90000)
    # Timestamps a second apart, sent at once: each packet is ~1 s early against the last one.
    send(harness, publisher, list(range(10)), [90000 * i for i in range(10)])
    assert track.jitter > 90000 // 4  # RFC 3550 A.8: 1/16 of the difference per packet


def reports_to(harness: Harness, publisher: Participant) -> list[rtcp.RtcpPacket]:
    harness.wait(lambda: any(r.datagram[1] in (rtcp.RR, 200) for r in publisher.peer.received), "a report")
    datagram = next(r.datagram for r in publisher.peer.received if r.datagram[1] in (rtcp.RR, 200))
    return rtcp.parse_compound(publisher.peer.rx.unprotect_rtcp(datagram))


def test_a_publisher_gets_a_receiver_report_of_each_track(harness: Harness) -> None:
    now = [9.5]
    router = RtcpRouter(clock=lambda: now[0])
    publisher = harness.participant()
    publisher.endpoint.add_track(SSRC, kind="video")
    publisher.endpoint.add_track(SSRC + 1, kind="audio")  # sends nothing: nothing to report
    send(harness, publisher, [0, 1, 3, 4])  # 2 lost
    # The publisher's sender report comes at 9.5 s, the report goes at 10 s: LSR and DLSR
    # (0.5 s) let the publisher measure its round trip (RFC 3550 6.4.1).
    sr = rtcp.SenderReport(SSRC, 0x0001_2345_6789_0000, 9000, 4, 400)
    router.handle(publisher.endpoint, bytes(sr))
    now[0] = 10.0
    reports = PublisherReports(router, publish_bitrate=1_000_000, clock=lambda: now[0])
    assert reports.report([publisher.endpoint]) == 1
    (rr,) = reports_to(harness, publisher)
    assert isinstance(rr, rtcp.ReceiverReport) and rr.ssrc == router.ssrc
    (block,) = rr.reports
    assert (block.ssrc, block.highest_seq, block.packets_lost, block.fraction_lost) == (SSRC, 4, 1, 256 // 5)
    assert block.lsr == rtcp.ntp_middle(sr.ntp_timestamp) and block.dlsr == 65536 // 2
    assert router.counts["rr_sent"] == 1 and router.counts["remb_sent"] == 0  # an SDES endpoint: no REMB


def test_the_fraction_lost_is_of_the_last_interval(harness: Harness) -> None:
    router = RtcpRouter()
    publisher = harness.participant()
    publisher.endpoint.add_track(SSRC)
    reports = PublisherReports(router, publish_bitrate=0)
    send(harness, publisher, [0, 2, 4, 6])  # 3 of 7 lost
    reports.report([publisher.endpoint])
    (first,) = reports_to(harness, publisher)
    publisher.peer.received.clear()
    send(harness, publisher, [7, 8, 9, 10], [30000, 33000, 36000, 39000])  # none lost since
    reports.report([publisher.endpoint])
    (second,) = reports_to(harness, publisher)
    assert isinstance(first, rtcp.ReceiverReport) and isinstance(second, rtcp.ReceiverReport)
    assert (first.reports[0].fraction_lost, first.reports[0].packets_lost) == (3 * 256 // 7, 3)
    assert (second.reports[0].fraction_lost, second.reports[0].packets_lost) == (0, 3)


def test_a_browser_also_gets_a_remb_for_its_video(harness: Harness) -> None:
    router = RtcpRouter()
    # A browser's endpoint: handshakes on, keyed after DTLS, its remote set by ICE.
    endpoint = harness.forwarder.create_endpoint(udp_socket(), name="browser", latch=False, handshakes=True)
    rx_key, tx_key = new_key(DEFAULT_SUITE), new_key(DEFAULT_SUITE)
    endpoint.set_keys(rx_suite=DEFAULT_SUITE, rx_key=rx_key, tx_suite=DEFAULT_SUITE, tx_key=tx_key)
    assert endpoint.local_address is not None
    peer = harness.peer(endpoint.local_address, DEFAULT_SUITE, rx_key, DEFAULT_SUITE, tx_key)
    endpoint.set_remote(peer.address, latch=False)
    endpoint.add_track(SSRC, kind="video")
    endpoint.add_track(SSRC + 1, kind="audio")
    harness.deliver(peer, [peer.protect(build_rtp(0, 0, SSRC)), peer.protect(build_rtp(0, 0, SSRC + 1))], endpoint)
    reports = PublisherReports(router, publish_bitrate=2_000_000)
    assert reports.report([endpoint]) == 1
    harness.wait(lambda: bool(peer.received), "the report")
    rr, remb = rtcp.parse_compound(peer.rx.unprotect_rtcp(peer.received[0].datagram))
    assert isinstance(rr, rtcp.ReceiverReport) and len(rr.reports) == 2
    assert isinstance(remb, rtcp.Remb) and remb.ssrcs == (SSRC,)
    assert 1_990_000 < remb.bitrate <= 2_000_000
    assert router.counts["remb_sent"] == 1


def test_nothing_goes_to_an_endpoint_without_keys_or_address(harness: Harness) -> None:
    endpoint = harness.forwarder.create_endpoint(udp_socket(), name="new", latch=False, handshakes=True)
    endpoint.add_track(SSRC)
    assert PublisherReports(RtcpRouter(), publish_bitrate=1).report([endpoint]) == 0
