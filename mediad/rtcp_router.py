"""The RTCP slow path: every authenticated RTCP packet the forwarding core hands over is
routed by SSRC to the track or subscription it concerns.

- Sender reports of a publisher are translated for each subscription of the track (its SSRC,
  its timestamp, its counts, the publisher's NTP time) so that receivers keep lip sync.
- Report blocks a subscriber sends about a subscription become its receiver figures: loss,
  jitter and the round-trip time (RFC 3550 6.4.1) against the SRs this router sent it.
- Key-frame requests (PLI, FIR) go to the publisher under the track's SSRC, at most one per
  track every KEY_FRAME_INTERVAL (one key frame serves every subscriber).
- NACKs are answered from the track's plaintext retransmission cache (the forwarding core
  protects a fresh copy for the subscriber, as an RFC 4588 RTX packet where the route has an
  RTX stream); what is no longer cached is counted as missed.
- Report blocks and NACKs about a route's RTX stream (its rtx_ssrc) are counted and
  dropped: the route's figures and retransmissions are those of its media SSRC.
- SDES, BYE, APP, REMB and other feedback are counted and dropped.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

from mediad import _forward, rtcp

log = logging.getLogger("mediad.rtcp")

KEY_FRAME_INTERVAL = 0.5
TIMER_SLACK = 0.005
"""The event loop's timers may fire this much before their time (uvloop's tick is 1 ms): a
request deferred to the end of an interval is due when it fires, not deferred again."""
MAX_RETRANSMISSIONS_PER_NACK = 64
"""Bounds the work one NACK can ask for (its FCI could name thousands of packets)."""
SENT_REPORTS_KEPT = 16
"""SRs remembered per subscription: a receiver answers one of the last few (RFC 3550 6.4.1)."""
RTP_FIXED_HEADER = 12
NACK_REPEAT = 0.1
"""Seconds before a number asked of a publisher is asked again."""
FIRST_REPORT_WAIT = 0.05
FIRST_REPORT_LOOKS = 100
"""A route that has forwarded nothing yet is looked at every FIRST_REPORT_WAIT s, this many
times (5 s, the longest a fast start waits for its publisher's key frame and more), for its
first sender report."""
OTHER_NAMES = {rtcp.SDES: "sdes", rtcp.BYE: "bye", rtcp.APP: "app", rtcp.RTPFB: "feedback", rtcp.PSFB: "feedback"}


@dataclasses.dataclass
class ReceiverFigures:
    """What a subscriber reported about one subscription sending to it."""

    fraction_lost: float = 0.0
    """Lost between its last two reports, 0..1."""
    packets_lost: int = 0
    """Cumulative (negative with duplicates)."""
    jitter: int = 0
    """Interarrival jitter, RTP timestamp units."""
    jitter_ms: float = 0.0
    rtt_ms: float | None = None
    """The last round-trip time measured; None until a report answers an SR sent from here."""
    reports: int = 0
    last_report: float = 0.0
    """time.monotonic() of the last report; 0.0 if none."""


@dataclasses.dataclass
class _SubscriptionState:
    subscription: _forward.Subscription
    figures: ReceiverFigures = dataclasses.field(default_factory=ReceiverFigures)
    sent: OrderedDict[int, float] = dataclasses.field(default_factory=OrderedDict)
    """LSR of each SR sent to the subscriber -> time.monotonic() it was sent."""


SubscriptionKey = tuple[str, int]
"""(subscriber endpoint name, subscription SSRC)."""


def _is_rtx_ssrc(endpoint: _forward.Endpoint, ssrc: int) -> bool:
    """Whether a route sending to `endpoint` retransmits on `ssrc` (only looked up for an SSRC
    that is no route's: a few routes per endpoint, on the slow path)."""
    return ssrc != 0 and any(s.rtx_ssrc == ssrc for s in endpoint.subscriptions)


class RtcpRouter:
    """Install with `forwarder.set_rtcp_handler(router.handle)`; owns no endpoint."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.ssrc = secrets.randbits(32) or 1
        """Sender SSRC of the feedback this router originates."""
        self.counts: Counter[str] = Counter()
        self._subscriptions: dict[SubscriptionKey, _SubscriptionState] = {}
        self._key_frame_sent: dict[_forward.Track, float] = {}  # time of the last request sent
        self._key_frame_deferred: dict[_forward.Track, asyncio.TimerHandle] = {}
        """Requests merged into one sent when the track's interval ends."""
        self._sender_reports: dict[_forward.Track, tuple[int, float]] = {}
        """Of each publisher's track: the LSR of its last SR and when it came."""
        self._last_sr: dict[_forward.Track, tuple[rtcp.SenderReport, float]] = {}
        """Of each publisher's track: its last SR and when it came (for a new route's first)."""
        self._first_reports: set[_forward.Subscription] = set()
        self._nacked: dict[_forward.Track, dict[int, float]] = {}
        """Of each track: its sequence numbers asked of the publisher, and when."""
        """Routes waiting to forward something, to be sent a sender report as soon as they have."""

    # --- the handler ---------------------------------------------------------------------

    def handle(self, endpoint: _forward.Endpoint, packet: bytes) -> None:
        self.counts["packets"] += 1
        try:
            packets = rtcp.parse_compound(packet)
        except ValueError as error:
            self.counts["malformed"] += 1
            log.debug("malformed RTCP dropped", extra={"endpoint_id": endpoint.name, "error": str(error)})
            return
        now = self.clock()
        for item in packets:
            if isinstance(item, rtcp.SenderReport):
                self.counts["sr"] += 1
                track = endpoint.find_track(item.ssrc)
                if track is not None:
                    self._translate(track, item, now)
                self._report_blocks(endpoint, item.reports, now)
            elif isinstance(item, rtcp.ReceiverReport):
                self.counts["rr"] += 1
                self._report_blocks(endpoint, item.reports, now)
            elif isinstance(item, rtcp.PictureLossIndication):
                self.counts["pli"] += 1
                self._key_frame_from(endpoint, item.media_ssrc, now)
            elif isinstance(item, rtcp.FullIntraRequest):
                self.counts["fir"] += 1
                for ssrc, _ in item.entries:
                    self._key_frame_from(endpoint, ssrc, now)
            elif isinstance(item, rtcp.GenericNack):
                self.counts["nack"] += 1
                self._retransmit(endpoint, item)
            elif isinstance(item, rtcp.Remb):
                # A browser's estimate of what it can receive: Charter forwards one layer, so
                # there is nothing to choose yet; counted.
                self.counts["remb"] += 1
            else:
                self.counts[OTHER_NAMES.get(item.packet_type, "other")] += 1

    # --- sender reports ------------------------------------------------------------------

    def _translate(self, track: _forward.Track, report: rtcp.SenderReport, now: float) -> None:
        lsr = rtcp.ntp_middle(report.ntp_timestamp)
        if len(self._sender_reports) > 4096:  # tracks removed since: their entries go
            self._sender_reports = {t: r for t, r in self._sender_reports.items() if t.endpoint is not None}
        self._sender_reports[track] = (lsr, now)
        if len(self._last_sr) > 4096:
            self._last_sr = {t: r for t, r in self._last_sr.items() if t.endpoint is not None}
        self._last_sr[track] = (report, now)
        for subscription in track.subscriptions:
            if not subscription.active:
                continue
            timestamp = subscription.map_timestamp(report.rtp_timestamp)
            if timestamp is None:
                # Nothing forwarded yet: the receiver could not relate the times. It gets
                # this report, brought up to date, once it has its first packet.
                self.first_report(subscription)
                continue
            self._send_report(subscription, report, timestamp, lsr, now)

    def first_report(self, subscription: _forward.Subscription) -> None:
        """Send a new route a sender report as soon as it has forwarded its first packet,
        from its publisher's last one brought forward to that moment (a receiver relates its
        stream's times to the wall clock from the first; publishers send one every few s)."""
        if subscription in self._first_reports or subscription.map_timestamp(0) is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # called outside the daemon's loop (a test): nothing to look with
        self._first_reports.add(subscription)
        loop.call_later(FIRST_REPORT_WAIT, self._look_for_first, subscription, 1)

    def _look_for_first(self, subscription: _forward.Subscription, looks: int) -> None:
        now = self.clock()
        last = self._last_sr.get(subscription.track)
        if not subscription.active:
            self._first_reports.discard(subscription)
            return
        if last is not None and subscription.map_timestamp(0) is not None:
            self._first_reports.discard(subscription)
            report, received = last
            # The same instant on both clocks, moved on by the time since it came.
            elapsed = max(0.0, now - received)
            ntp = (report.ntp_timestamp + int(elapsed * (1 << 32))) & 0xFFFFFFFFFFFFFFFF
            rtp_timestamp = (report.rtp_timestamp + int(elapsed * subscription.track.clock_rate)) & 0xFFFFFFFF
            timestamp = subscription.map_timestamp(rtp_timestamp)
            if timestamp is not None:
                fresh = rtcp.SenderReport(report.ssrc, ntp, rtp_timestamp, report.packet_count, report.octet_count)
                self._send_report(subscription, fresh, timestamp, rtcp.ntp_middle(ntp), now)
                self.counts["sr_first_sent"] += 1
            return
        if looks >= FIRST_REPORT_LOOKS:
            self._first_reports.discard(subscription)
            return
        asyncio.get_running_loop().call_later(FIRST_REPORT_WAIT, self._look_for_first, subscription, looks + 1)

    def _send_report(self, subscription: _forward.Subscription, report: rtcp.SenderReport, timestamp: int,
                     lsr: int, now: float) -> None:
        """`report` as the route's receiver gets it: its SSRC, `timestamp` (mapped), its counts."""
        packets = subscription.packets
        # Octets of payload (RFC 3550 6.4.1), from the bytes sent less the fixed headers.
        octets = max(0, subscription.bytes - RTP_FIXED_HEADER * packets)
        translated = rtcp.SenderReport(subscription.ssrc, report.ntp_timestamp, timestamp, packets, octets)
        if subscription.target.send_rtcp(bytes(translated)):
            self.counts["sr_sent"] += 1
            sent = self._state(subscription).sent
            sent[lsr] = now
            sent.move_to_end(lsr)
            while len(sent) > SENT_REPORTS_KEPT:
                sent.popitem(last=False)
        else:
            self.counts["sr_not_sent"] += 1

    def last_sender_report(self, track: _forward.Track, now: float) -> tuple[int, int]:
        """LSR and DLSR (1/65536 s) of a report block about `track` (RFC 3550 6.4.1); (0, 0)
        before its publisher's first SR."""
        lsr, received = self._sender_reports.get(track, (0, now))
        return lsr, int((now - received) * 65536) if lsr else 0

    def _defer_key_frame(self, track: _forward.Track, delay: float) -> None:
        if track in self._key_frame_deferred:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # called outside the daemon's loop (a test): nothing to defer to
        self._key_frame_deferred[track] = loop.call_later(delay, self._deferred_key_frame, track)

    def _deferred_key_frame(self, track: _forward.Track) -> None:
        self._key_frame_deferred.pop(track, None)
        if track.endpoint is not None:
            self.counts["key_frame_deferred"] += 1
            self.request_key_frame(track)

    # --- receiver reports ----------------------------------------------------------------

    def _report_blocks(self, endpoint: _forward.Endpoint, blocks: tuple[rtcp.ReportBlock, ...], now: float) -> None:
        for block in blocks:
            subscription = endpoint.find_subscription(block.ssrc)
            if subscription is None:
                self.counts["report_rtx" if _is_rtx_ssrc(endpoint, block.ssrc) else "report_unknown_ssrc"] += 1
                continue
            self.counts["report_blocks"] += 1
            state = self._state(subscription)
            figures = state.figures
            figures.fraction_lost = block.fraction_lost / 256
            figures.packets_lost = block.packets_lost
            figures.jitter = block.jitter
            figures.jitter_ms = 1000.0 * block.jitter / subscription.track.clock_rate
            figures.reports += 1
            figures.last_report = now
            sent_at = state.sent.get(block.lsr) if block.lsr else None
            if sent_at is not None:
                # RFC 3550 6.4.1: A - LSR - DLSR, with the arrival time A in NTP short format
                # on the clock the SR's LSR stands for (the publisher's): LSR + time held here.
                arrival = (block.lsr + round((now - sent_at) * 65536)) & 0xFFFFFFFF
                rtt = (arrival - block.lsr - block.dlsr) & 0xFFFFFFFF
                if rtt < 0x80000000:
                    figures.rtt_ms = 1000.0 * rtcp.short_to_seconds(rtt)
                    self.counts["rtt_measured"] += 1
                else:
                    # DLSR longer than the time since the SR: a receiver clock we cannot use.
                    self.counts["rtt_negative"] += 1

    def figures(self, subscription: _forward.Subscription) -> ReceiverFigures | None:
        """The receiver figures of a subscription; None before its subscriber reported."""
        state = self._subscriptions.get((subscription.target.name, subscription.ssrc))
        if state is None or state.subscription is not subscription or not state.figures.reports:
            return None
        return state.figures

    def figures_by_key(self) -> dict[SubscriptionKey, ReceiverFigures]:
        """Figures of every active subscription with a report, by (endpoint name, SSRC)."""
        self._prune()
        return {k: s.figures for k, s in self._subscriptions.items() if s.figures.reports}

    def _state(self, subscription: _forward.Subscription) -> _SubscriptionState:
        key = (subscription.target.name, subscription.ssrc)
        state = self._subscriptions.get(key)
        if state is None or state.subscription is not subscription:
            if len(self._subscriptions) % 256 == 255:
                self._prune()
            state = self._subscriptions[key] = _SubscriptionState(subscription)
        return state

    def _prune(self) -> None:
        for key in [k for k, s in self._subscriptions.items() if not s.subscription.active]:
            del self._subscriptions[key]

    # --- retransmissions -----------------------------------------------------------------

    def _retransmit(self, endpoint: _forward.Endpoint, nack: rtcp.GenericNack) -> None:
        subscription = endpoint.find_subscription(nack.media_ssrc)
        if subscription is None:
            # RFC 4588 retransmits only the media stream: a NACK about RTX asks for nothing.
            self.counts["nack_rtx" if _is_rtx_ssrc(endpoint, nack.media_ssrc) else "nack_unknown_ssrc"] += 1
            return
        lost = list(dict.fromkeys(nack.lost))
        if len(lost) > MAX_RETRANSMISSIONS_PER_NACK:
            self.counts["retransmit_refused"] += len(lost) - MAX_RETRANSMISSIONS_PER_NACK
            lost = lost[:MAX_RETRANSMISSIONS_PER_NACK]
        missed: list[int] = []
        for sequence in lost:
            if subscription.retransmit(sequence):
                self.counts["retransmitted"] += 1
            else:
                self.counts["retransmit_missed"] += 1
                source = subscription.source_sequence(sequence)
                if source is not None:
                    missed.append(source)
        if missed:
            self._nack_publisher(subscription.track, missed)

    def _nack_publisher(self, track: _forward.Track, sequences: list[int]) -> None:
        """Pass a NACK the cache could not answer on to the publisher, in its numbers (it
        never reached the daemon, or is too old for the cache); a number asked for within
        NACK_REPEAT is not asked again (several receivers missing the same packet)."""
        publisher = track.endpoint
        if publisher is None:
            return
        now = self.clock()
        asked = self._nacked.setdefault(track, {})
        if len(asked) > 1024:
            self._nacked[track] = asked = {s: t for s, t in asked.items() if now - t < NACK_REPEAT}
        if len(self._nacked) > 4096:
            self._nacked = {t: a for t, a in self._nacked.items() if t.endpoint is not None}
        fresh = [s for s in sequences if now - asked.get(s, -NACK_REPEAT) >= NACK_REPEAT]
        if not fresh:
            self.counts["nack_not_repeated"] += 1
            return
        for sequence in fresh:
            asked[sequence] = now
        if publisher.send_rtcp(bytes(rtcp.GenericNack(self.ssrc, track.ssrc, tuple(fresh)))):
            self.counts["nack_forwarded"] += 1
        else:
            self.counts["nack_not_forwarded"] += 1

    # --- key frames ----------------------------------------------------------------------

    def _key_frame_from(self, endpoint: _forward.Endpoint, ssrc: int, now: float) -> None:
        subscription = endpoint.find_subscription(ssrc)
        if subscription is None:
            self.counts["key_frame_unknown_ssrc"] += 1
            return
        self.request_key_frame(subscription.track, now)

    def request_key_frame(self, track: _forward.Track, now: float | None = None) -> bool:
        """Ask the publisher of `track` for a key frame (a PLI, RFC 4585 6.3.1, also for a
        subscriber's FIR: any decoder must support PLI), unless one was asked for less than
        KEY_FRAME_INTERVAL ago; whether it was sent."""
        now = self.clock() if now is None else now
        last = self._key_frame_sent.get(track)
        if last is not None and now - last < KEY_FRAME_INTERVAL - TIMER_SLACK:
            # Merged, not lost: a route resumed just after a request may have missed the key
            # frame it brought, and waits for the next.
            self.counts["key_frame_suppressed"] += 1
            self._defer_key_frame(track, KEY_FRAME_INTERVAL - (now - last))
            return False
        publisher = track.endpoint
        if (
            publisher is None
            or publisher.closed
            or not publisher.send_rtcp(bytes(rtcp.PictureLossIndication(self.ssrc, track.ssrc)))
        ):
            self.counts["key_frame_not_sent"] += 1
            return False
        if len(self._key_frame_sent) > 4096:
            self._key_frame_sent = {k: t for k, t in self._key_frame_sent.items() if now - t < KEY_FRAME_INTERVAL}
        self._key_frame_sent[track] = now
        self.counts["key_frame_forwarded"] += 1
        return True

