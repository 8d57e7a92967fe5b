"""The RTCP slow path through the real processes: a new video subscription asks the
publisher for a key frame, a publisher's sender report reaches the viewer translated, and
the viewer's receiver report shows up in the daemon's stats with a round-trip time."""

from __future__ import annotations

import base64
import random
import socket
import time
from collections.abc import Iterator

import pytest

from charter.v1 import controller_pb2 as pb
from charter.v1 import media_pb2, mediad_pb2
from mediad import rtcp
from participants import Peer, exchange
from processes import Cluster, cluster, conference_stub, mediad_stub
from rtp import receiver_session
from waits import wait_until


@pytest.fixture(scope="module")
def charter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("rtcp"), daemons=1) as running:
        yield running


def rtcp_from_daemon(peer: Peer, timeout: float = 20.0) -> list[rtcp.RtcpPacket]:
    """Wait for the next RTCP datagram on the peer's socket (skipping RTP, and the receiver
    reports the daemon sends every publisher each second); its packets, decrypted with the
    peer's receive key."""
    assert peer.session is not None
    session = receiver_session(media_pb2.SrtpSuite.Name(peer.session.suite), base64.b64decode(peer.session.receive_key))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            datagram = peer.sock.recv(4096)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        if 192 <= datagram[1] <= 223:
            packets = rtcp.parse_compound(session.unprotect_rtcp(datagram))
            if not all(isinstance(p, rtcp.ReceiverReport) for p in packets):
                return packets
    raise AssertionError(f"no RTCP reached {peer.participant_id} in {timeout:.0f} s")


def send_rtcp(peer: Peer, packet: rtcp.RtcpPacket) -> None:
    assert peer.session is not None and peer._tx is not None
    address = (peer.session.media_address.ip, peer.session.media_address.port)
    peer.sock.sendto(peer._tx.protect_rtcp(bytes(packet)), address)


def test_key_frame_request_sender_report_and_rtt(charter: Cluster) -> None:
    api = conference_stub(charter.controller)
    conference = api.CreateConference(pb.CreateConferenceRequest(), timeout=10)
    daemon = mediad_stub(charter.daemon(conference.daemon_id))
    track_ssrc = random.randrange(1, 2**32)
    publisher = Peer("rtcp-publisher", [track_ssrc])
    viewer = Peer("rtcp-viewer", [])
    publisher.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

    def stats() -> mediad_pb2.Stats:
        return daemon.GetStats(mediad_pb2.GetStatsRequest(conference_id=conference.conference_id), timeout=10)

    try:
        publisher.joined(api.Join(publisher.join_request(conference.conference_id), timeout=10).participant)
        publisher.send_round()  # the daemon latches onto the publisher's address
        wait_until(lambda: any(e.counters.packets_in for e in stats().endpoints), what="the publisher's first packet")

        # A new video subscription: the publisher is asked for a key frame.
        viewer.joined(
            api.Join(viewer.join_request(conference.conference_id, give_address=True), timeout=10).participant
        )
        (subscription,) = viewer.session.subscriptions
        (pli,) = rtcp_from_daemon(publisher)
        assert isinstance(pli, rtcp.PictureLossIndication) and pli.media_ssrc == track_ssrc

        exchange([publisher, viewer], lambda: sum(viewer.counts().values()) >= 3)

        # The publisher's sender report reaches the viewer under the viewer's SSRC.
        ntp = rtcp.ntp_now()
        sent = time.monotonic()
        send_rtcp(publisher, rtcp.SenderReport(track_ssrc, ntp, 123456, 10, 1000))
        reports = [p for p in rtcp_from_daemon(viewer) if isinstance(p, rtcp.SenderReport)]
        assert [(r.ssrc, r.ntp_timestamp) for r in reports] == [(subscription.ssrc, ntp)]
        received = time.monotonic()

        # The viewer answers at once (DLSR 0): the daemon measures the time its SR took there and back.
        block = rtcp.ReportBlock(
            subscription.ssrc, fraction_lost=128, packets_lost=5, jitter=90, lsr=rtcp.ntp_middle(ntp), dlsr=0
        )
        answered = time.monotonic()
        send_rtcp(viewer, rtcp.ReceiverReport(random.randrange(1, 2**32), (block,)))

        def route() -> mediad_pb2.SubscriptionStats:
            (endpoint,) = [e for e in stats().endpoints if e.subscriptions]
            (sub,) = endpoint.subscriptions
            return sub

        wait_until(lambda: route().receiver_reports == 1, what="the receiver report in GetStats")
        seen = time.monotonic()
        sub = route()
        assert sub.subscription.ssrc == subscription.ssrc
        assert (sub.fraction_lost, sub.packets_lost, sub.jitter_ms) == (0.5, 5, pytest.approx(1.0))
        # Between the viewer's hold and the whole exchange the test saw, to NTP short resolution.
        assert (answered - received) * 1000 - 0.1 <= sub.rtt_ms <= (seen - sent) * 1000 + 0.1
        current = stats()
        counts = current.rtcp
        # The PLI (and each second a receiver report) to the publisher, the SR to the viewer.
        out = {e.endpoint_id.rsplit("/", 1)[1]: e.counters.rtcp_out for e in current.endpoints}
        assert out["rtcp-viewer"] == 1 and out["rtcp-publisher"] == 1 + counts["rr_sent"]
        assert counts["sr_sent"] == 1 and counts["rtt_measured"] == 1 and counts["key_frame_forwarded"] >= 1
    finally:
        api.EndConference(pb.EndConferenceRequest(conference_id=conference.conference_id), timeout=10)
        publisher.close()
        viewer.close()
