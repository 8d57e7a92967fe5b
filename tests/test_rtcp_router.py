"""mediad.rtcp_router on a real Forwarder with loopback sockets: sender reports translated
per subscription, receiver figures and round-trip times from report blocks, key-frame
requests mapped to the publisher and rate-limited, malformed RTCP counted."""

from __future__ import annotations

import struct
import time

import pylibsrtp
import pytest

from forward_harness import Harness, Participant, Peer, counts
from mediad import rtcp
from mediad._forward import Subscription
from mediad.rtcp_router import KEY_FRAME_INTERVAL, MAX_RETRANSMISSIONS_PER_NACK, RtcpRouter
from rtp import build_rtp, receiver_session

TRACK_SSRC = 0x1111
SUB_SSRC = 0x2222
NTP = 0xE8000000_40000000


def rtcp_received(peer: Peer) -> list[rtcp.RtcpPacket]:
    """Every RTCP packet the peer received, decrypted with its key (a fresh session, so that
    calling this again does not look like a replay)."""
    session = receiver_session(peer.recv_suite, peer.recv_key)
    packets: list[rtcp.RtcpPacket] = []
    for received in peer.received:
        if 192 <= received.datagram[1] <= 223:
            packets += rtcp.parse_compound(session.unprotect_rtcp(received.datagram))
    return packets


class Conference:
    """A publisher with one video track, a subscriber receiving it, a bystander."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.router = RtcpRouter()
        harness.forwarder.set_rtcp_handler(self.router.handle)
        self.publisher = harness.participant(name="publisher")
        self.subscriber = harness.participant(name="subscriber")
        self.bystander = harness.participant(name="bystander")
        self.track = self.publisher.endpoint.add_track(TRACK_SSRC, clock_rate=90000)
        self.subscription: Subscription = self.track.subscribe(self.subscriber.endpoint, SUB_SSRC)

    def forward_one(self, seq: int = 1, timestamp: int = 5000) -> int:
        """Forward one RTP packet; its outgoing timestamp."""
        before = len(self.subscriber.peer.received)
        self.publisher.peer.send(build_rtp(seq, timestamp, TRACK_SSRC, b"media"))
        self.harness.wait(lambda: len(self.subscriber.peer.received) > before, "the media packet")
        return int(struct.unpack_from("!I", self.subscriber.peer.received[-1].plain or b"", 4)[0])

    def send_rtcp(self, participant: Participant, packet: bytes) -> None:
        before = self.router.counts["packets"]
        participant.peer.send_raw(participant.peer.protect_rtcp(packet))
        self.harness.wait(lambda: self.router.counts["packets"] > before, "the router to take the packet")

    def sender_report(self, rtp_timestamp: int) -> rtcp.SenderReport:
        """Send an SR from the publisher; the one the subscriber receives."""
        before = len(rtcp_received(self.subscriber.peer))
        self.send_rtcp(self.publisher, bytes(rtcp.SenderReport(TRACK_SSRC, NTP, rtp_timestamp, 50, 40000)))
        self.harness.wait(lambda: len(rtcp_received(self.subscriber.peer)) > before, "the translated SR")
        report = rtcp_received(self.subscriber.peer)[-1]
        assert isinstance(report, rtcp.SenderReport)
        return report


@pytest.fixture
def conference(harness: Harness) -> Conference:
    return Conference(harness)


def test_sender_report_is_translated_for_the_subscription(conference: Conference) -> None:
    out_ts = conference.forward_one(timestamp=5000)
    report = conference.sender_report(5000 + 900)

    stats = counts(conference.subscription)
    assert (report.ssrc, report.ntp_timestamp, report.rtp_timestamp) == (SUB_SSRC, NTP, (out_ts + 900) & 0xFFFFFFFF)
    assert report.packet_count == stats["packets"] == 1
    assert report.octet_count == stats["bytes"] - 12
    # Protected with the subscriber's outbound key and no other.
    datagram = next(r.datagram for r in conference.subscriber.peer.received if r.datagram[1] == 200)
    for other in (conference.bystander, conference.publisher):
        with pytest.raises(pylibsrtp.Error):
            receiver_session(other.tx_suite, other.tx_key).unprotect_rtcp(datagram)
    assert not rtcp_received(conference.bystander.peer)
    assert not rtcp_received(conference.publisher.peer)


def test_no_sender_report_before_media_was_forwarded(conference: Conference) -> None:
    conference.send_rtcp(conference.publisher, bytes(rtcp.SenderReport(TRACK_SSRC, NTP, 1, 0, 0)))
    conference.harness.drain()
    assert conference.router.counts["sr"] == 1
    assert conference.router.counts["sr_sent"] == 0
    assert not rtcp_received(conference.subscriber.peer)


def first_report_at(conference: Conference, peer: Peer) -> rtcp.SenderReport:
    conference.harness.wait(lambda: peer.drain() >= 0 and any(isinstance(p, rtcp.SenderReport)
                                                              for p in rtcp_received(peer)), "a sender report")
    (report,) = [p for p in rtcp_received(peer) if isinstance(p, rtcp.SenderReport)]
    return report


def same_instant(report: rtcp.SenderReport, ntp: int, rtp_timestamp: int) -> bool:
    """Whether `report` tells the instant (ntp, rtp_timestamp) tells, moved on alike on both
    clocks (90 kHz; a tick of rounding)."""
    seconds = ((report.ntp_timestamp - ntp) & 0xFFFFFFFFFFFFFFFF) / (1 << 32)
    ticks = (report.rtp_timestamp - rtp_timestamp) & 0xFFFFFFFF
    return seconds >= 0 and abs(ticks - seconds * 90000) <= 1


def test_a_route_gets_a_sender_report_with_its_first_packets(conference: Conference) -> None:
    # The publisher's SR came before anything was forwarded (ffmpeg sends its first with its
    # first packet): the route gets it, brought up to date, once it has forwarded one.
    conference.send_rtcp(conference.publisher, bytes(rtcp.SenderReport(TRACK_SSRC, NTP, 4100, 0, 0)))
    assert conference.router.counts["sr_sent"] == 0
    out_ts = conference.forward_one(timestamp=5000)
    report = first_report_at(conference, conference.subscriber.peer)
    assert report.ssrc == SUB_SSRC and report.packet_count == 1
    assert same_instant(report, NTP, (out_ts - 900) & 0xFFFFFFFF), (report, out_ts)
    assert conference.router.counts["sr_first_sent"] == 1


def test_a_late_route_gets_a_sender_report_without_waiting_for_the_publishers_next(
        conference: Conference) -> None:
    conference.forward_one(seq=1, timestamp=5000)
    conference.sender_report(5000)
    late = conference.harness.participant(name="late")
    route = conference.track.subscribe(late.endpoint, 0x3333)
    conference.harness.loop.call_soon(conference.router.first_report, route)  # as the daemon does for a new route
    before = len(late.peer.received)
    conference.publisher.peer.send(build_rtp(2, 5000 + 3000, TRACK_SSRC, b"media"))
    conference.harness.wait(lambda: late.peer.drain() >= 0 and len(late.peer.received) > before, "its first packet")
    out_ts = int(struct.unpack_from("!I", late.peer.received[-1].plain or b"", 4)[0])
    report = first_report_at(conference, late.peer)
    assert report.ssrc == 0x3333 and report.packet_count == 1
    assert same_instant(report, NTP, (out_ts - 3000) & 0xFFFFFFFF), (report, out_ts)


def test_round_trip_time_from_lsr_and_dlsr(conference: Conference) -> None:
    harness = conference.harness
    conference.forward_one()
    started = time.monotonic()  # before the router sent its SR
    report = conference.sender_report(5000)
    received = time.monotonic()  # after the subscriber got it
    # The subscriber holds the SR a while and says it held it 0.1 s.
    harness.wait(lambda: time.monotonic() > received + 0.25, "the hold time")
    dlsr = round(0.1 * 65536)
    block = rtcp.ReportBlock(
        SUB_SSRC, fraction_lost=64, packets_lost=3, jitter=900, lsr=rtcp.ntp_middle(report.ntp_timestamp), dlsr=dlsr
    )
    answered = time.monotonic()  # before the router gets the RR
    conference.subscriber.peer.send_raw(
        conference.subscriber.peer.protect_rtcp(bytes(rtcp.ReceiverReport(77, (block,))))
    )
    harness.wait(lambda: conference.router.counts["rtt_measured"] == 1, "the RTT")
    seen = time.monotonic()  # after the router measured

    figures = conference.router.figures(conference.subscription)
    assert figures is not None and figures.rtt_ms is not None
    # The router held its SR between `received - started` and `seen - answered` less than
    # `seen - started`: the RTT is that time less DLSR, to NTP short resolution (15 us).
    resolution = 2 / 65536
    low = (answered - received - dlsr / 65536 - resolution) * 1000
    high = (seen - started - dlsr / 65536 + resolution) * 1000
    assert low <= figures.rtt_ms <= high
    assert (figures.fraction_lost, figures.packets_lost, figures.jitter, figures.reports) == (0.25, 3, 900, 1)
    assert figures.jitter_ms == pytest.approx(10.0)
    assert conference.router.figures_by_key() == {("subscriber", SUB_SSRC): figures}


def test_report_without_a_matching_sr_has_figures_but_no_rtt(conference: Conference) -> None:
    block = rtcp.ReportBlock(SUB_SSRC, fraction_lost=0, packets_lost=0, jitter=48, lsr=0x12345678, dlsr=10)
    conference.send_rtcp(conference.subscriber, bytes(rtcp.ReceiverReport(77, (block, rtcp.ReportBlock(999)))))

    figures = conference.router.figures(conference.subscription)
    assert figures is not None
    assert (figures.reports, figures.rtt_ms) == (1, None)
    assert conference.router.counts["report_unknown_ssrc"] == 1
    # A report from another endpoint about the same SSRC is not this subscription's.
    conference.send_rtcp(conference.bystander, bytes(rtcp.ReceiverReport(78, (block,))))
    assert figures.reports == 1


def test_pli_reaches_the_publisher_mapped_and_rate_limited(conference: Conference) -> None:
    harness, router = conference.harness, conference.router
    conference.send_rtcp(conference.subscriber, bytes(rtcp.PictureLossIndication(77, SUB_SSRC)))
    harness.wait(lambda: bool(rtcp_received(conference.publisher.peer)), "the PLI at the publisher")
    first = time.monotonic()
    for _ in range(3):
        conference.send_rtcp(conference.subscriber, bytes(rtcp.PictureLossIndication(77, SUB_SSRC)))
    conference.send_rtcp(conference.subscriber, bytes(rtcp.FullIntraRequest(77, ((SUB_SSRC, 1),))))
    harness.drain()

    [pli] = rtcp_received(conference.publisher.peer)
    assert pli == rtcp.PictureLossIndication(router.ssrc, TRACK_SSRC)
    assert (router.counts["key_frame_forwarded"], router.counts["key_frame_suppressed"]) == (1, 4)
    assert not rtcp_received(conference.bystander.peer)

    # Once the interval is over, the next request goes through.
    harness.wait(lambda: time.monotonic() > first + KEY_FRAME_INTERVAL + 0.05, "the end of the interval")
    conference.send_rtcp(conference.subscriber, bytes(rtcp.PictureLossIndication(77, SUB_SSRC)))
    harness.wait(lambda: len(rtcp_received(conference.publisher.peer)) == 2, "the second PLI")
    assert router.counts["key_frame_forwarded"] == 2


def test_pli_about_an_unknown_ssrc_goes_nowhere(conference: Conference) -> None:
    conference.send_rtcp(conference.subscriber, bytes(rtcp.PictureLossIndication(77, TRACK_SSRC)))
    conference.harness.drain()
    assert conference.router.counts["key_frame_unknown_ssrc"] == 1
    assert not rtcp_received(conference.publisher.peer)


def test_malformed_and_unrouted_rtcp_is_counted_without_errors(conference: Conference) -> None:
    router = conference.router
    conference.send_rtcp(conference.subscriber, b"\x81\xc9\x00\x07\x00\x00\x00\x01")  # length past the end
    conference.send_rtcp(conference.subscriber, b"\x80\xc9\x00\x01\x00\x00\x00\x01\x80")  # trailing byte
    conference.send_rtcp(conference.subscriber, bytes(rtcp.GenericNack(77, SUB_SSRC, (1, 2))))
    conference.send_rtcp(conference.subscriber, bytes(rtcp.OtherPacket(rtcp.BYE, 1, struct.pack("!I", 77))))
    # Media and reports keep working after them.
    conference.send_rtcp(conference.subscriber, bytes(rtcp.ReceiverReport(77, (rtcp.ReportBlock(SUB_SSRC),))))

    assert (router.counts["malformed"], router.counts["nack"], router.counts["bye"]) == (2, 1, 1)
    assert router.figures(conference.subscription) is not None
    assert conference.subscriber.endpoint.counters.rtcp_errors == 0
    assert not rtcp_received(conference.publisher.peer)


def test_nack_is_answered_from_the_cache(conference: Conference) -> None:
    harness, router = conference.harness, conference.router
    track = conference.publisher.endpoint.add_track(0x3333, cache_packets=16)
    subscription = track.subscribe(conference.subscriber.endpoint, 0x4444)
    peer = conference.subscriber.peer
    before = len(peer.received)
    for seq in (40, 41, 42):
        conference.publisher.peer.send(build_rtp(seq, seq * 3000, 0x3333, b"frame %d" % seq))
    harness.wait(lambda: len(peer.received) == before + 3, "three packets")
    sent = [r.plain for r in peer.received[before:]]
    lost = struct.unpack_from("!H", sent[1] or b"", 2)[0]
    never_sent = (lost + 10) & 0xFFFF

    conference.send_rtcp(conference.subscriber, bytes(rtcp.GenericNack(77, 0x4444, (lost, never_sent))))
    harness.wait(lambda: len(peer.received) == before + 4, "the retransmission")

    again = receiver_session(peer.recv_suite, peer.recv_key).unprotect(peer.received[-1].datagram)
    assert again == sent[1]
    assert (router.counts["retransmitted"], router.counts["retransmit_missed"]) == (1, 1)
    assert subscription.retransmitted == 1
    assert not rtcp_received(conference.publisher.peer)  # answered here, not sent on


def test_a_nack_the_cache_cannot_answer_goes_on_to_the_publisher_in_its_numbers(conference: Conference) -> None:
    harness, router = conference.harness, conference.router
    track = conference.publisher.endpoint.add_track(0x3333, cache_packets=16)
    track.subscribe(conference.subscriber.endpoint, 0x4444)
    peer = conference.subscriber.peer
    before = len(peer.received)
    for seq in (40, 41, 43):  # 42 never reached the daemon
        conference.publisher.peer.send(build_rtp(seq, seq * 3000, 0x3333, b"frame %d" % seq))
    harness.wait(lambda: len(peer.received) == before + 3, "three packets")
    second = struct.unpack_from("!H", peer.received[before + 1].plain or b"", 2)[0]
    gap = (second + 1) & 0xFFFF

    conference.send_rtcp(conference.subscriber, bytes(rtcp.GenericNack(77, 0x4444, (gap,))))
    harness.wait(lambda: bool(rtcp_received(conference.publisher.peer)), "the NACK at the publisher")
    assert rtcp_received(conference.publisher.peer) == [rtcp.GenericNack(router.ssrc, 0x3333, (42,))]
    assert (router.counts["retransmit_missed"], router.counts["nack_forwarded"]) == (1, 1)
    # Asked again at once (another receiver, or the same one): not passed on twice.
    conference.send_rtcp(conference.subscriber, bytes(rtcp.GenericNack(77, 0x4444, (gap,))))
    assert router.counts["nack_not_repeated"] == 1 and router.counts["nack_forwarded"] == 1
    # The publisher sends it again: the route forwards it with the number it was missing.
    conference.publisher.peer.send(build_rtp(42, 42 * 3000, 0x3333, b"frame 42"))
    harness.wait(lambda: len(peer.received) == before + 4, "the repaired packet")
    repaired = peer.received[-1].plain or b""
    assert struct.unpack_from("!H", repaired, 2)[0] == gap and repaired.endswith(b"frame 42")


def test_one_nack_cannot_ask_for_unbounded_work(conference: Conference) -> None:
    router = conference.router
    conference.forward_one(seq=1)
    lost = tuple(range(100, 100 + MAX_RETRANSMISSIONS_PER_NACK + 36))
    conference.send_rtcp(conference.subscriber, bytes(rtcp.GenericNack(77, SUB_SSRC, lost)))

    assert router.counts["retransmit_refused"] == 36
    assert router.counts["retransmit_missed"] == MAX_RETRANSMISSIONS_PER_NACK


def test_nack_on_an_rtx_route_is_answered_on_the_rtx_stream(conference: Conference) -> None:
    harness, router = conference.harness, conference.router
    track = conference.publisher.endpoint.add_track(0x3333, cache_packets=16)
    subscription = track.subscribe(conference.subscriber.endpoint, 0x4444, rtx_ssrc=0x4445, rtx_payload_type=97)
    peer = conference.subscriber.peer
    before = len(peer.received)
    for seq in (40, 41):
        conference.publisher.peer.send(build_rtp(seq, seq * 3000, 0x3333, b"frame %d" % seq))
    harness.wait(lambda: len(peer.received) == before + 2, "two packets")
    lost = struct.unpack_from("!H", peer.received[-1].plain or b"", 2)[0]

    conference.send_rtcp(conference.subscriber, bytes(rtcp.GenericNack(77, 0x4444, (lost,))))
    harness.wait(lambda: len(peer.received) == before + 3, "the retransmission")

    rtx = peer.received[-1].plain or b""
    assert struct.unpack_from("!I", rtx, 8)[0] == 0x4445 and rtx[12:14] == struct.pack("!H", lost)
    assert (router.counts["retransmitted"], subscription.rtx_sent) == (1, 1)


def test_reports_and_nacks_about_an_rtx_stream_are_counted_and_dropped(conference: Conference) -> None:
    harness, router = conference.harness, conference.router
    track = conference.publisher.endpoint.add_track(0x3333, cache_packets=16)
    subscription = track.subscribe(conference.subscriber.endpoint, 0x4444, rtx_ssrc=0x4445, rtx_payload_type=97)
    conference.publisher.peer.send(build_rtp(40, 3000, 0x3333, b"frame"))
    harness.wait(lambda: subscription.packets == 1, "a packet")
    rtx_block = rtcp.ReportBlock(0x4445, fraction_lost=128, packets_lost=3, jitter=9, lsr=0, dlsr=0)

    conference.send_rtcp(conference.subscriber, bytes(rtcp.ReceiverReport(77, (rtx_block,))))
    conference.send_rtcp(conference.subscriber, bytes(rtcp.GenericNack(77, 0x4445, (1, 2, 3))))
    # Media and reports about the media SSRC go on as before.
    conference.send_rtcp(conference.subscriber, bytes(rtcp.ReceiverReport(77, (rtcp.ReportBlock(0x4444),))))

    assert (router.counts["report_rtx"], router.counts["nack_rtx"]) == (1, 1)
    assert (router.counts["report_unknown_ssrc"], router.counts["nack_unknown_ssrc"]) == (0, 0)
    assert (subscription.retransmitted, subscription.retransmit_misses) == (0, 0)
    figures = router.figures(subscription)
    assert figures is not None and figures.reports == 1 and figures.fraction_lost == 0
    assert conference.subscriber.endpoint.counters.rtcp_errors == 0
