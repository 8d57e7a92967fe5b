"""What the daemon tells each publisher about what it receives from it, once a second.

The daemon is the receiver of every published stream, so it reports as one (RFC 3550 6.4.2):
a receiver report per publishing endpoint with a block per track (fraction lost since the
last report, cumulative loss, extended highest sequence number, interarrival jitter, and
LSR/DLSR against the publisher's last sender report, from which the publisher measures its
round-trip time). A browser also gets a REMB (draft-alvestrand-rmcat-remb) for its video
tracks: without feedback Chrome keeps its video at its 300 kbit/s start rate, and it sends
up to what the REMB allows. Charter does not estimate the path's capacity itself: the REMB
is the configured `publish_bitrate` per video track (loopback and LAN paths carry it;
receivers' losses are repaired with NACK and RTX).

A track with a route waiting for a key frame (a browser that just subscribed) has its
publisher asked for one again each second until the route has it: a request or its key
frame can be lost, and the waiting receiver gets nothing to complain about.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from mediad import _forward, rtcp
from mediad.rtcp_router import RtcpRouter

log = logging.getLogger("mediad.rtcp")

REPORT_INTERVAL = 1.0
"""Seconds between reports (RFC 3550 6.2 allows more often for a receiver with few sources;
Chrome's bandwidth estimate wants feedback at least every few seconds)."""
MAX_BLOCKS = 31
"""Report blocks one RR holds (its 5-bit count)."""


class PublisherReports:
    """Sends the reports; `router` gives the sender SSRC, the last SRs and the counters
    (rr_sent, remb_sent, report_not_sent in Stats.rtcp)."""

    def __init__(
        self, router: RtcpRouter, publish_bitrate: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.router = router
        self.publish_bitrate = publish_bitrate
        """Bits per second a browser may send per video track (its REMB); 0: no REMB."""
        self.clock = clock
        self._last: dict[_forward.Track, tuple[int, int]] = {}
        """(packets expected, packets received) of each track at its last report."""

    def report(self, endpoints: Iterable[_forward.Endpoint]) -> int:
        """One report to every publishing endpoint that can be reached; how many were sent."""
        now = self.clock()
        last: dict[_forward.Track, tuple[int, int]] = {}
        sent = 0
        for endpoint in endpoints:
            if endpoint.closed or not endpoint.keyed or endpoint.remote is None:
                continue
            for track in endpoint.tracks:
                if any(s.waiting_for_key_frame and not s.paused and s.active for s in track.subscriptions):
                    self.router.counts["key_frame_rerequested"] += 1
                    self.router.request_key_frame(track, now)
            blocks = []
            for track in endpoint.tracks[:MAX_BLOCKS]:
                block = self._block(track, now, last)
                if block is not None:
                    blocks.append(block)
            if not blocks:
                continue
            packet = bytes(rtcp.ReceiverReport(self.router.ssrc, tuple(blocks)))
            video = tuple(t.ssrc for t in endpoint.tracks if t.kind == "video")
            remb = bool(endpoint.handshakes and video and self.publish_bitrate)
            if remb:
                packet += bytes(rtcp.Remb(self.router.ssrc, self.publish_bitrate * len(video), video))
            if endpoint.send_rtcp(packet):
                sent += 1
                self.router.counts["rr_sent"] += 1
                self.router.counts["remb_sent"] += remb
            else:
                self.router.counts["report_not_sent"] += 1
        self._last = last  # tracks gone since are forgotten
        return sent

    def _block(
        self, track: _forward.Track, now: float, last: dict[_forward.Track, tuple[int, int]]
    ) -> rtcp.ReportBlock | None:
        highest = track.highest_seq
        if highest is None:
            return None  # nothing received yet: nothing to report
        expected, received = track.expected, track.received
        last[track] = (expected, received)
        expected_before, received_before = self._last.get(track, (0, 0))
        # RFC 3550 A.3: the fraction lost in the interval, in 1/256; duplicates make it 0.
        expected_interval = expected - expected_before
        lost_interval = expected_interval - (received - received_before)
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        cumulative = max(-(1 << 23), min((1 << 23) - 1, expected - received))
        lsr, dlsr = self.router.last_sender_report(track, now)
        return rtcp.ReportBlock(track.ssrc, fraction, cumulative, highest & 0xFFFFFFFF, track.jitter, lsr, dlsr)

    async def run(self, endpoints: Callable[[], Iterable[_forward.Endpoint]]) -> None:
        """Report every REPORT_INTERVAL until cancelled."""
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            try:
                self.report(endpoints())
            except Exception:  # noqa: BLE001 - one bad round must not end the reports
                log.exception("publisher reports failed")
