"""Servicer of charter.v1.MediaDaemon: checks and translates messages, calls Media."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from grpc.aio import ServicerContext

from charter.addresses import address_to_proto
from charter.endpoints import DtlsFingerprint, parse_endpoint_spec
from charter.errors import InvalidArgument
from charter.subscriptions import check_id, parse_subscription_spec
from charter.v1 import media_pb2, mediad_pb2, mediad_pb2_grpc
from mediad import _forward
from mediad.media import Media, port_of, spec_of, subscription_spec, track_of

MIN_INTERVAL = 0.1


def endpoint_to_proto(
    endpoint: _forward.Endpoint, media_ip: str, fingerprint: DtlsFingerprint, transport_state: str = ""
) -> mediad_pb2.Endpoint:
    spec = spec_of(endpoint)
    message = mediad_pb2.Endpoint(
        endpoint_id=spec.endpoint_id,
        conference_id=spec.conference_id,
        local_address=media_pb2.Address(ip=media_ip, port=port_of(endpoint)),
        latching=endpoint.latching,
        suite=spec.suite.number,
        tracks=[track_of(t).to_proto() for t in endpoint.tracks],
        subscriptions=[subscription_spec(s).to_proto() for s in endpoint.subscriptions],
    )
    remote = endpoint.remote
    if remote is not None:
        message.remote.CopyFrom(address_to_proto(remote))
    if spec.webrtc is not None:
        message.dtls_fingerprint.CopyFrom(fingerprint.to_proto())
        message.transport_state = transport_state
    return message


def summed_counters(endpoints: list[_forward.Endpoint]) -> mediad_pb2.Counters:
    """The counters of `endpoints` added up (a conference's totals), field by field."""
    total = mediad_pb2.Counters()
    for endpoint in endpoints:
        counters = counters_to_proto(endpoint.counters)
        for field in mediad_pb2.Counters.DESCRIPTOR.fields:
            if field.name == "drops":
                for reason, count in counters.drops.items():
                    total.drops[reason] += count
            else:
                setattr(total, field.name, getattr(total, field.name) + getattr(counters, field.name))
    return total


def counters_to_proto(counters: _forward.Counters) -> mediad_pb2.Counters:
    return mediad_pb2.Counters(
        packets_in=counters.packets_in,
        bytes_in=counters.bytes_in,
        packets_out=counters.packets_out,
        bytes_out=counters.bytes_out,
        rtcp_in=counters.rtcp_in,
        rtcp_out=counters.rtcp_out,
        rtcp_errors=counters.rtcp_errors,
        handshakes_in=counters.handshakes_in,
        handshake_errors=counters.handshake_errors,
        drops={reason: count for reason, count in zip(_forward.DROP_REASONS, counters.drops, strict=True) if count},
    )


class MediaDaemonService(mediad_pb2_grpc.MediaDaemonServicer):
    def __init__(self, media: Media, media_ip: str) -> None:
        self.media = media
        self.media_ip = media_ip

    def _endpoint(self, endpoint: _forward.Endpoint) -> mediad_pb2.Endpoint:
        webrtc = self.media.webrtc
        return endpoint_to_proto(endpoint, self.media_ip, webrtc.certificate.fingerprint, webrtc.state(endpoint.name))

    async def CreateEndpoint(
        self,
        request: mediad_pb2.CreateEndpointRequest,
        context: ServicerContext[mediad_pb2.CreateEndpointRequest, mediad_pb2.Endpoint],
    ) -> mediad_pb2.Endpoint:
        return self._endpoint(self.media.create_endpoint(parse_endpoint_spec(request)))

    async def GetEndpoint(
        self,
        request: mediad_pb2.GetEndpointRequest,
        context: ServicerContext[mediad_pb2.GetEndpointRequest, mediad_pb2.Endpoint],
    ) -> mediad_pb2.Endpoint:
        return self._endpoint(self.media.get_endpoint(check_id("endpoint_id", request.endpoint_id)))

    async def ListEndpoints(
        self,
        request: mediad_pb2.ListEndpointsRequest,
        context: ServicerContext[mediad_pb2.ListEndpointsRequest, mediad_pb2.ListEndpointsResponse],
    ) -> mediad_pb2.ListEndpointsResponse:
        endpoints = self.media.list_endpoints(request.conference_id)
        return mediad_pb2.ListEndpointsResponse(endpoints=[self._endpoint(e) for e in endpoints])

    async def DeleteEndpoint(
        self,
        request: mediad_pb2.DeleteEndpointRequest,
        context: ServicerContext[mediad_pb2.DeleteEndpointRequest, mediad_pb2.DeleteEndpointResponse],
    ) -> mediad_pb2.DeleteEndpointResponse:
        deleted = self.media.delete_endpoint(check_id("endpoint_id", request.endpoint_id), request.allow_missing)
        return mediad_pb2.DeleteEndpointResponse(deleted=deleted)

    async def ReleaseConference(
        self,
        request: mediad_pb2.ReleaseConferenceRequest,
        context: ServicerContext[mediad_pb2.ReleaseConferenceRequest, mediad_pb2.ReleaseConferenceResponse],
    ) -> mediad_pb2.ReleaseConferenceResponse:
        count = self.media.release_conference(check_id("conference_id", request.conference_id))
        return mediad_pb2.ReleaseConferenceResponse(endpoints_deleted=count)

    async def Subscribe(
        self,
        request: mediad_pb2.SubscribeRequest,
        context: ServicerContext[mediad_pb2.SubscribeRequest, mediad_pb2.SubscribeResponse],
    ) -> mediad_pb2.SubscribeResponse:
        specs = [parse_subscription_spec(f"subscriptions[{i}]", s) for i, s in enumerate(request.subscriptions)]
        return mediad_pb2.SubscribeResponse(created=self.media.subscribe(specs))

    async def UpdateSubscriptions(
        self,
        request: mediad_pb2.UpdateSubscriptionsRequest,
        context: ServicerContext[mediad_pb2.UpdateSubscriptionsRequest, mediad_pb2.UpdateSubscriptionsResponse],
    ) -> mediad_pb2.UpdateSubscriptionsResponse:
        specs = [parse_subscription_spec(f"subscriptions[{i}]", s) for i, s in enumerate(request.subscriptions)]
        return mediad_pb2.UpdateSubscriptionsResponse(changed=self.media.update_subscriptions(specs))

    async def RemoveTracks(
        self,
        request: mediad_pb2.RemoveTracksRequest,
        context: ServicerContext[mediad_pb2.RemoveTracksRequest, mediad_pb2.RemoveTracksResponse],
    ) -> mediad_pb2.RemoveTracksResponse:
        removed = self.media.remove_tracks(check_id("endpoint_id", request.endpoint_id), request.ssrcs)
        return mediad_pb2.RemoveTracksResponse(removed=removed)

    async def GetStats(
        self,
        request: mediad_pb2.GetStatsRequest,
        context: ServicerContext[mediad_pb2.GetStatsRequest, mediad_pb2.Stats],
    ) -> mediad_pb2.Stats:
        return self._stats(request.endpoint_id, request.conference_id)

    async def WatchStats(
        self,
        request: mediad_pb2.WatchStatsRequest,
        context: ServicerContext[mediad_pb2.WatchStatsRequest, mediad_pb2.Stats],
    ) -> AsyncIterator[mediad_pb2.Stats]:
        interval = request.interval.ToTimedelta().total_seconds() if request.HasField("interval") else 1.0
        if interval < MIN_INTERVAL:
            raise InvalidArgument("interval", f"is {interval:g} s; at least {MIN_INTERVAL:g} s")
        while True:
            yield self._stats(request.endpoint_id, request.conference_id)
            await asyncio.sleep(interval)

    async def Drain(
        self,
        request: mediad_pb2.DrainRequest,
        context: ServicerContext[mediad_pb2.DrainRequest, mediad_pb2.DrainResponse],
    ) -> mediad_pb2.DrainResponse:
        self.media.drain(resume=request.resume)
        endpoints, _, _ = self.media.counts()
        return mediad_pb2.DrainResponse(endpoints=endpoints, draining=self.media.draining)

    def _stats(self, endpoint_id: str, conference_id: str) -> mediad_pb2.Stats:
        selected = self.media.select(endpoint_id, conference_id)
        if conference_id:
            # A conference's own figures: its endpoints' counters and counts, not the daemon's.
            conference = selected if not endpoint_id else self.media.select("", conference_id)
            totals = summed_counters(conference)
            endpoints = len(conference)
            tracks = sum(len(e.tracks) for e in conference)
            subscriptions = sum(len(e.subscriptions) for e in conference)
        else:
            totals = counters_to_proto(self.media.forwarder.totals())
            endpoints, tracks, subscriptions = self.media.counts()
        message = mediad_pb2.Stats(
            totals=totals,
            endpoint_count=endpoints,
            track_count=tracks,
            subscription_count=subscriptions,
            draining=self.media.draining,
            rtcp={k: v for k, v in self.media.rtcp.counts.items() if v},
            webrtc=self.media.webrtc.stats(),
        )
        now = time.monotonic()
        for endpoint in selected:
            last = endpoint.last_activity
            entry = message.endpoints.add(
                endpoint_id=endpoint.name,
                conference_id=spec_of(endpoint).conference_id,
                counters=counters_to_proto(endpoint.counters),
                idle_seconds=now - last if last else -1.0,
                proven=endpoint.proven,
            )
            for track in endpoint.tracks:
                entry.tracks.add(ssrc=track.ssrc, packets=track.packets, bytes=track.bytes)
            for subscription in endpoint.subscriptions:
                sub = entry.subscriptions.add(
                    subscription=subscription_spec(subscription).to_proto(),
                    packets=subscription.packets,
                    bytes=subscription.bytes,
                    dropped_paused=subscription.dropped_paused,
                    dropped_no_remote=subscription.dropped_no_remote,
                    send_errors=subscription.send_errors,
                    dropped_waiting_key_frame=subscription.dropped_waiting_key_frame,
                    rtx_sent=subscription.rtx_sent,
                    dropped_unproven=subscription.dropped_unproven,
                    retransmitted=subscription.retransmitted,
                    retransmit_misses=subscription.retransmit_misses,
                    replayed=subscription.replayed,
                )
                figures = self.media.rtcp.figures(subscription)
                if figures is None:
                    sub.rtt_ms = -1.0
                else:
                    sub.fraction_lost = figures.fraction_lost
                    sub.packets_lost = figures.packets_lost
                    sub.jitter_ms = figures.jitter_ms
                    sub.rtt_ms = -1.0 if figures.rtt_ms is None else figures.rtt_ms
                    sub.receiver_reports = figures.reports
        return message
