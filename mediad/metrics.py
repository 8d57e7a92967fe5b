"""The media daemon's Prometheus metrics, read from its state when /metrics is scraped (on
the event loop; nothing is counted twice and nothing per packet): endpoints, tracks and
routes; packets, bytes and drops by reason (the forwarding core's counters, closed endpoints
included); the RTCP slow path's counts and what receivers report (loss, jitter, RTT, mean
and worst over the routes with reports); ICE and DTLS of browsers."""
from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mediad import _forward
from mediad.media import Media


class MediadCollector(Collector):
    def __init__(self, media: Media) -> None:
        self.media = media

    def collect(self) -> Iterator[Metric]:
        media = self.media
        endpoints, tracks, routes = media.counts()
        for name, value, what in (("endpoints", endpoints, "open endpoints"), ("tracks", tracks, "inbound tracks"),
                                  ("subscriptions", routes, "routes of a track to an endpoint"),
                                  ("draining", int(media.draining), "1 while the daemon takes no new endpoints")):
            yield GaugeMetricFamily(f"charter_mediad_{name}", what, value=value)
        unproven = sum(1 for endpoint in media.list_endpoints() if not endpoint.proven)
        yield GaugeMetricFamily("charter_mediad_unproven_endpoints",
                                "endpoints whose receiver has not yet proven it wants the media (--unproven-budget)",
                                value=unproven)
        totals = media.forwarder.totals()
        for name, value, what in (
            ("packets_in", totals.packets_in, "SRTP packets received that authenticated"),
            ("bytes_in", totals.bytes_in, "bytes of those packets"),
            ("packets_out", totals.packets_out, "SRTP packets sent"),
            ("bytes_out", totals.bytes_out, "bytes of those packets"),
            ("rtcp_in", totals.rtcp_in, "SRTCP packets received that authenticated"),
            ("rtcp_out", totals.rtcp_out, "SRTCP packets sent"),
            ("handshakes_in", totals.handshakes_in, "STUN and DTLS datagrams handed to the WebRTC slow path"),
        ):
            yield CounterMetricFamily(f"charter_mediad_{name}", what, value=value)
        drops = CounterMetricFamily("charter_mediad_drops", "datagrams dropped, by reason", labels=["reason"])
        for reason, count in zip(_forward.DROP_REASONS, totals.drops, strict=True):
            drops.add_metric([reason], count)
        yield drops
        rtcp = CounterMetricFamily("charter_mediad_rtcp", "RTCP of the slow path, by what it was and became",
                                   labels=["kind"])
        for kind, count in sorted(media.rtcp.counts.items()):
            rtcp.add_metric([kind], count)
        yield rtcp
        webrtc = media.webrtc.stats()
        yield GaugeMetricFamily("charter_mediad_webrtc_connected", "browsers' endpoints keyed by DTLS",
                                value=webrtc.pop("endpoints_connected", 0))
        yield GaugeMetricFamily("charter_mediad_dtls_longest_step_seconds", "the longest one DTLS step held the loop",
                                value=webrtc.pop("dtls_longest_step_us", 0) / 1e6)
        events = CounterMetricFamily("charter_mediad_webrtc", "ICE and DTLS of browsers, by what became of them",
                                     labels=["event"])
        for event, count in sorted(webrtc.items()):
            events.add_metric([event], count)
        yield events
        yield from self._receivers()

    def _receivers(self) -> Iterator[Metric]:
        """What receivers report of the routes to them (RTCP receiver reports)."""
        figures = [f for e in self.media.list_endpoints() for s in e.subscriptions
                   if (f := self.media.rtcp.figures(s)) is not None and f.reports]
        rtts = [f.rtt_ms / 1000 for f in figures if f.rtt_ms is not None]
        for name, what, values in (
            ("loss_ratio", "fraction lost a receiver reports", [f.fraction_lost for f in figures]),
            ("jitter_seconds", "interarrival jitter a receiver reports", [f.jitter_ms / 1000 for f in figures]),
            ("rtt_seconds", "round-trip time to a receiver", rtts),
        ):
            family = GaugeMetricFamily(f"charter_mediad_receiver_{name}", f"{what}, over the routes with reports",
                                       labels=["stat"])
            family.add_metric(["mean"], sum(values) / len(values) if values else 0.0)
            family.add_metric(["max"], max(values, default=0.0))
            yield family
        yield GaugeMetricFamily("charter_mediad_receivers_reporting", "routes whose receiver sent a report",
                                value=len(figures))
