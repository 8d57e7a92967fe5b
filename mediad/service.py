"""Servicer of charter.v1.MediaDaemon: checks and translates messages, calls Media."""
from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from charter.errors import InvalidArgument
from charter.suites import SUITE_NUMBERS, parse_suite
from charter.tracks import parse_track, track_to_proto
from charter.v1 import media_pb2, mediad_pb2, mediad_pb2_grpc
from mediad.media import EndpointRecord, EndpointSpec, Media, SubscriptionSpec, subscription_spec

MAX_ID = 200
MIN_INTERVAL = 0.1


def _id(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > MAX_ID:
        raise InvalidArgument(field, f"is {len(value)} characters long; at most {MAX_ID}")
    return value


def _subscription(field: str, spec: mediad_pb2.SubscriptionSpec) -> SubscriptionSpec:
    return SubscriptionSpec(
        track_endpoint_id=_id(f"{field}.track_endpoint_id", spec.track_endpoint_id),
        track_ssrc=spec.track_ssrc,
        endpoint_id=_id(f"{field}.endpoint_id", spec.endpoint_id),
        ssrc=spec.ssrc,
        paused=spec.paused,
    )


def _spec_to_proto(spec: SubscriptionSpec) -> mediad_pb2.SubscriptionSpec:
    return mediad_pb2.SubscriptionSpec(
        track_endpoint_id=spec.track_endpoint_id,
        track_ssrc=spec.track_ssrc,
        endpoint_id=spec.endpoint_id,
        ssrc=spec.ssrc,
        paused=spec.paused,
    )


def endpoint_to_proto(record: EndpointRecord, media_ip: str) -> mediad_pb2.Endpoint:
    endpoint = record.endpoint
    message = mediad_pb2.Endpoint(
        endpoint_id=record.spec.endpoint_id,
        conference_id=record.spec.conference_id,
        local_address=media_pb2.Address(ip=media_ip, port=record.port),
        latching=endpoint.latching,
        suite=SUITE_NUMBERS[record.spec.suite],  # type: ignore[arg-type]
        tracks=[track_to_proto(t) for t in record.tracks.values()],
        subscriptions=[_spec_to_proto(subscription_spec(s)) for s in endpoint.subscriptions],
    )
    remote = endpoint.remote
    if remote is not None:
        message.remote.CopyFrom(media_pb2.Address(ip=remote[0], port=remote[1]))
    return message


def _counters(stats: dict[str, Any]) -> mediad_pb2.Counters:
    return mediad_pb2.Counters(
        packets_in=stats.get("packets_in", 0),
        bytes_in=stats.get("bytes_in", 0),
        packets_out=stats.get("packets_out", 0),
        bytes_out=stats.get("bytes_out", 0),
        rtcp_in=stats.get("rtcp_in", 0),
        rtcp_out=stats.get("rtcp_out", 0),
        drops={k: v for k, v in stats.get("drops", {}).items() if v},
    )


class MediaDaemonService(mediad_pb2_grpc.MediaDaemonServicer):
    def __init__(self, media: Media, media_ip: str) -> None:
        self.media = media
        self.media_ip = media_ip

    async def CreateEndpoint(self, request: mediad_pb2.CreateEndpointRequest, context: grpc.aio.ServicerContext) -> mediad_pb2.Endpoint:
        suite = parse_suite("suite", request.suite)
        for field, key in (("rx_key", request.rx_key), ("tx_key", request.tx_key)):
            if len(key) != suite.key_length:
                raise InvalidArgument(field, f"is {len(key)} bytes; {suite.value} needs {suite.key_length}")
        remote = None
        if request.HasField("remote"):
            try:
                # A literal only: the forwarding core would resolve a name, blocking the loop.
                ip = str(ipaddress.IPv4Address(request.remote.ip))
            except ValueError:
                raise InvalidArgument("remote.ip", f"{request.remote.ip[:60]!r} is not an IPv4 address") from None
            if not 0 < request.remote.port <= 65535:
                raise InvalidArgument("remote.port", f"is {request.remote.port}; use 1-65535")
            remote = (ip, request.remote.port)
        spec = EndpointSpec(
            endpoint_id=_id("endpoint_id", request.endpoint_id),
            conference_id=_id("conference_id", request.conference_id),
            suite=suite.value,
            rx_key=bytes(request.rx_key),
            tx_key=bytes(request.tx_key),
            remote=remote,
            tracks=tuple(parse_track(f"tracks[{i}]", t) for i, t in enumerate(request.tracks)),
            subscriptions=tuple(_subscription(f"subscriptions[{i}]", s) for i, s in enumerate(request.subscriptions)),
        )
        return endpoint_to_proto(self.media.create_endpoint(spec), self.media_ip)

    async def GetEndpoint(self, request: mediad_pb2.GetEndpointRequest, context: grpc.aio.ServicerContext) -> mediad_pb2.Endpoint:
        return endpoint_to_proto(self.media.get_endpoint(_id("endpoint_id", request.endpoint_id)), self.media_ip)

    async def ListEndpoints(self, request: mediad_pb2.ListEndpointsRequest, context: grpc.aio.ServicerContext) -> mediad_pb2.ListEndpointsResponse:
        records = self.media.list_endpoints(request.conference_id)
        return mediad_pb2.ListEndpointsResponse(endpoints=[endpoint_to_proto(r, self.media_ip) for r in records])

    async def DeleteEndpoint(self, request: mediad_pb2.DeleteEndpointRequest, context: grpc.aio.ServicerContext) -> mediad_pb2.DeleteEndpointResponse:
        deleted = self.media.delete_endpoint(_id("endpoint_id", request.endpoint_id), request.allow_missing)
        return mediad_pb2.DeleteEndpointResponse(deleted=deleted)

    async def ReleaseConference(self, request: mediad_pb2.ReleaseConferenceRequest, context: grpc.aio.ServicerContext) -> mediad_pb2.ReleaseConferenceResponse:
        count = self.media.release_conference(_id("conference_id", request.conference_id))
        return mediad_pb2.ReleaseConferenceResponse(endpoints_deleted=count)

    async def AddTrack(self, request: mediad_pb2.AddTrackRequest, context: grpc.aio.ServicerContext) -> mediad_pb2.Endpoint:
        if not request.HasField("track"):
            raise InvalidArgument("track", "is required")
        record = self.media.add_track(_id("endpoint_id", request.endpoint_id), parse_track("track", request.track))
        return endpoint_to_proto(record, self.media_ip)

    async def RemoveTrack(self, request: mediad_pb2.RemoveTrackRequest, context: grpc.aio.ServicerContext) -> mediad_pb2.Endpoint:
        record = self.media.remove_track(_id("endpoint_id", request.endpoint_id), request.ssrc, request.allow_missing)
        return endpoint_to_proto(record, self.media_ip)

    async def Subscribe(self, request: mediad_pb2.SubscribeRequest, context: grpc.aio.ServicerContext) -> mediad_pb2.SubscribeResponse:
        specs = [_subscription(f"subscriptions[{i}]", s) for i, s in enumerate(request.subscriptions)]
        return mediad_pb2.SubscribeResponse(created=self.media.subscribe(specs))

    async def Unsubscribe(self, request: mediad_pb2.UnsubscribeRequest, context: grpc.aio.ServicerContext) -> mediad_pb2.UnsubscribeResponse:
        specs = [_subscription(f"subscriptions[{i}]", s) for i, s in enumerate(request.subscriptions)]
        return mediad_pb2.UnsubscribeResponse(removed=self.media.unsubscribe(specs))

    async def GetStats(self, request: mediad_pb2.GetStatsRequest, context: grpc.aio.ServicerContext) -> mediad_pb2.Stats:
        return self._stats(request.endpoint_id, request.conference_id)

    async def WatchStats(self, request: mediad_pb2.WatchStatsRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[mediad_pb2.Stats]:
        interval = request.interval.ToTimedelta().total_seconds() if request.HasField("interval") else 1.0
        if interval < MIN_INTERVAL:
            raise InvalidArgument("interval", f"is {interval:g} s; at least {MIN_INTERVAL:g} s")
        while True:
            yield self._stats(request.endpoint_id, request.conference_id)
            await asyncio.sleep(interval)

    async def Drain(self, request: mediad_pb2.DrainRequest, context: grpc.aio.ServicerContext) -> mediad_pb2.DrainResponse:
        self.media.drain(resume=request.resume)
        endpoints, _, _ = self.media.counts()
        return mediad_pb2.DrainResponse(endpoints=endpoints, draining=self.media.draining)

    def _stats(self, endpoint_id: str, conference_id: str) -> mediad_pb2.Stats:
        endpoints, tracks, subscriptions = self.media.counts()
        message = mediad_pb2.Stats(
            totals=_counters(self.media.totals()),
            endpoint_count=endpoints,
            track_count=tracks,
            subscription_count=subscriptions,
            draining=self.media.draining,
            rtcp={k: v for k, v in self.media.rtcp.counts.items() if v},
        )
        now = time.monotonic()
        for record in self.media.select(endpoint_id, conference_id):
            stats = record.endpoint.stats()
            last = stats.get("last_activity", 0.0)
            entry = message.endpoints.add(
                endpoint_id=record.spec.endpoint_id,
                conference_id=record.spec.conference_id,
                counters=_counters(stats),
                idle_seconds=now - last if last else -1.0,
            )
            for track in record.endpoint.tracks:
                t = track.stats()
                entry.tracks.add(ssrc=track.ssrc, packets=t.get("packets", 0), bytes=t.get("bytes", 0))
            for subscription in record.endpoint.subscriptions:
                s = subscription.stats()
                sub = entry.subscriptions.add(
                    subscription=_spec_to_proto(subscription_spec(subscription)),
                    packets=s.get("packets", 0),
                    bytes=s.get("bytes", 0),
                    dropped_paused=s.get("dropped_paused", 0),
                    dropped_no_remote=s.get("dropped_no_remote", 0),
                    send_errors=s.get("send_errors", 0),
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
