"""The media daemon's domain over the forwarding core: endpoints, tracks and subscriptions
keyed by the ids the controller chose. Every operation is idempotent, so a controller can
retry any of them; what the forwarding core holds is the one truth about routes."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from charter.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from charter.tracks import Track
from mediad import _forward
from mediad.ports import PortAllocator, PortsExhausted
from mediad.rtcp_router import RtcpRouter

log = logging.getLogger("mediad.media")

VIDEO_CACHE_PACKETS = 256
"""Video packets kept per track to answer NACKs (384 KiB a track): about a quarter of a
second at 1,000 packets/s. Audio is not retransmitted: a late audio packet is a lost one."""


@dataclass(frozen=True)
class EndpointSpec:
    endpoint_id: str
    conference_id: str
    suite: str
    rx_key: bytes
    tx_key: bytes
    remote: tuple[str, int] | None
    tracks: tuple[Track, ...] = ()
    subscriptions: tuple["SubscriptionSpec", ...] = ()
    """Routes to and from the endpoint, made with it or not at all."""


@dataclass(frozen=True)
class SubscriptionSpec:
    track_endpoint_id: str
    track_ssrc: int
    endpoint_id: str
    ssrc: int
    paused: bool = False


@dataclass
class EndpointRecord:
    spec: EndpointSpec
    endpoint: _forward.Endpoint
    port: int
    tracks: dict[int, Track] = field(default_factory=dict)
    created_at: float = field(default_factory=time.monotonic)

    def same_parameters(self, spec: EndpointSpec) -> bool:
        mine = self.spec
        return (mine.conference_id, mine.suite, mine.rx_key, mine.tx_key, mine.remote) == (
            spec.conference_id, spec.suite, spec.rx_key, spec.tx_key, spec.remote
        )


class Media:
    def __init__(self, forwarder: _forward.Forwarder, ports: PortAllocator, capacity: int) -> None:
        self.forwarder = forwarder
        self.ports = ports
        self.capacity = min(capacity, ports.size) if capacity > 0 else ports.size
        self.draining = False
        self._endpoints: dict[str, EndpointRecord] = {}
        self.rtcp = RtcpRouter()
        forwarder.set_rtcp_handler(self.rtcp.handle)

    # --- endpoints -----------------------------------------------------------------------

    def create_endpoint(self, spec: EndpointSpec) -> EndpointRecord:
        record = self._endpoints.get(spec.endpoint_id)
        if record is not None:
            if not record.same_parameters(spec):
                raise AlreadyExists(f"endpoint {spec.endpoint_id!r} exists with other parameters")
            for track in spec.tracks:
                self.add_track(spec.endpoint_id, track)
            self.subscribe(spec.subscriptions)
            return record
        if self.draining:
            raise FailedPrecondition("this media daemon is draining and takes no new endpoints")
        if len(self._endpoints) >= self.capacity:
            raise ResourceExhausted(f"this media daemon is full ({len(self._endpoints)} of {self.capacity} endpoints)")
        self._check_tracks(spec.tracks)
        try:
            sock = self.ports.allocate()
        except PortsExhausted as error:
            raise ResourceExhausted(str(error)) from None
        port = sock.getsockname()[1]
        try:
            endpoint = self.forwarder.create_endpoint(
                sock,
                rx_suite=spec.suite,
                rx_key=spec.rx_key,
                tx_suite=spec.suite,
                tx_key=spec.tx_key,
                remote=spec.remote,
                name=spec.endpoint_id,
            )
        except ValueError as error:
            sock.close()
            self.ports.release(port)
            raise InvalidArgument("endpoint", str(error)) from None
        except BaseException:
            sock.close()
            self.ports.release(port)
            raise
        record = EndpointRecord(spec=spec, endpoint=endpoint, port=port)
        self._endpoints[spec.endpoint_id] = record
        try:
            for track in spec.tracks:
                self._add_track(record, track)
            self.subscribe(spec.subscriptions)
        except BaseException:
            self.delete_endpoint(spec.endpoint_id)
            raise
        log.debug("endpoint created", extra={"endpoint_id": spec.endpoint_id, "port": port})
        return record

    def get_endpoint(self, endpoint_id: str) -> EndpointRecord:
        record = self._endpoints.get(endpoint_id)
        if record is None:
            raise NotFound(f"endpoint {endpoint_id!r} not found")
        return record

    def list_endpoints(self, conference_id: str = "") -> list[EndpointRecord]:
        return [
            self._endpoints[k]
            for k in sorted(self._endpoints)
            if not conference_id or self._endpoints[k].spec.conference_id == conference_id
        ]

    def delete_endpoint(self, endpoint_id: str, allow_missing: bool = False) -> bool:
        record = self._endpoints.pop(endpoint_id, None)
        if record is None:
            if allow_missing:
                return False
            raise NotFound(f"endpoint {endpoint_id!r} not found")
        # Closing removes its tracks with their subscriptions, and the subscriptions sending
        # to it, from the forwarding core; then the socket is closed and the port is free.
        record.endpoint.close()
        self.ports.release(record.port)
        log.debug("endpoint deleted", extra={"endpoint_id": endpoint_id, "port": record.port})
        return True

    def release_conference(self, conference_id: str) -> int:
        ids = [r.spec.endpoint_id for r in self.list_endpoints(conference_id)]
        for endpoint_id in ids:
            self.delete_endpoint(endpoint_id, allow_missing=True)
        return len(ids)

    def close(self) -> None:
        for endpoint_id in list(self._endpoints):
            self.delete_endpoint(endpoint_id, allow_missing=True)

    # --- tracks --------------------------------------------------------------------------

    def add_track(self, endpoint_id: str, track: Track) -> EndpointRecord:
        record = self.get_endpoint(endpoint_id)
        self._check_tracks([track])
        self._add_track(record, track)
        return record

    def _add_track(self, record: EndpointRecord, track: Track) -> None:
        existing = record.tracks.get(track.ssrc)
        if existing is not None:
            if existing != track:
                raise AlreadyExists(
                    f"endpoint {record.spec.endpoint_id!r} has a track with SSRC {track.ssrc} and another description"
                )
            return
        record.endpoint.add_track(
            track.ssrc,
            clock_rate=track.clock_rate,
            kind=track.kind,
            name=track.name,
            cache_packets=VIDEO_CACHE_PACKETS if track.kind == "video" else 0,
        )
        record.tracks[track.ssrc] = track

    def remove_track(self, endpoint_id: str, ssrc: int, allow_missing: bool = False) -> EndpointRecord:
        record = self.get_endpoint(endpoint_id)
        track = self._forward_track(record, ssrc)
        if track is None:
            if allow_missing:
                return record
            raise NotFound(f"endpoint {endpoint_id!r} has no track with SSRC {ssrc}")
        record.endpoint.remove_track(track)
        del record.tracks[ssrc]
        return record

    @staticmethod
    def _check_tracks(tracks: Iterable[Track]) -> None:
        seen: set[int] = set()
        for i, track in enumerate(tracks):
            if track.ssrc in seen:
                raise InvalidArgument(f"tracks[{i}].ssrc", f"{track.ssrc} is given twice")
            seen.add(track.ssrc)
            if not 0 < track.ssrc <= 0xFFFFFFFF:
                raise InvalidArgument(f"tracks[{i}].ssrc", "must be a non-zero 32-bit SSRC")
            if not 0 < track.clock_rate <= 1_000_000:
                raise InvalidArgument(f"tracks[{i}].clock_rate", "must be set: the RTP clock rate in Hz")

    # --- subscriptions -------------------------------------------------------------------

    def subscribe(self, specs: Sequence[SubscriptionSpec]) -> int:
        """Create every route that does not exist yet; all are checked before any is made."""
        plan: list[tuple[_forward.Track, _forward.Endpoint, SubscriptionSpec]] = []
        planned: set[tuple[int, int]] = set()
        for i, spec in enumerate(specs):
            field_name = f"subscriptions[{i}]"
            source = self._endpoints.get(spec.track_endpoint_id)
            if source is None:
                raise NotFound(f"{field_name}.track_endpoint_id: endpoint {spec.track_endpoint_id!r} not found")
            target = self._endpoints.get(spec.endpoint_id)
            if target is None:
                raise NotFound(f"{field_name}.endpoint_id: endpoint {spec.endpoint_id!r} not found")
            if source is target:
                raise InvalidArgument(f"{field_name}.endpoint_id", "an endpoint cannot receive its own track")
            track = self._forward_track(source, spec.track_ssrc)
            if track is None:
                raise NotFound(
                    f"{field_name}.track_ssrc: endpoint {spec.track_endpoint_id!r} has no track with SSRC {spec.track_ssrc}"
                )
            if not 0 < spec.ssrc <= 0xFFFFFFFF:
                raise InvalidArgument(f"{field_name}.ssrc", "must be a non-zero 32-bit SSRC")
            existing = _subscription_of(track, target.endpoint)
            if existing is not None:
                if existing.ssrc != spec.ssrc:
                    raise AlreadyExists(
                        f"{field_name}: endpoint {spec.endpoint_id!r} already receives this track with SSRC {existing.ssrc}"
                    )
                continue
            key = (id(target.endpoint), spec.ssrc)
            if key in planned or any(s.ssrc == spec.ssrc for s in target.endpoint.subscriptions):
                raise AlreadyExists(f"{field_name}.ssrc: endpoint {spec.endpoint_id!r} already receives SSRC {spec.ssrc}")
            planned.add(key)
            plan.append((track, target.endpoint, spec))
        for track, target_endpoint, spec in plan:
            track.subscribe(target_endpoint, spec.ssrc, paused=spec.paused)
            # A new video receiver can decode nothing before the next key frame: ask for one
            # (a publisher that has not sent yet has no remote and will start with one).
            if track.kind == "video" and track.endpoint.remote is not None:
                self.rtcp.request_key_frame(track)
        return len(plan)

    def unsubscribe(self, specs: Sequence[SubscriptionSpec]) -> int:
        removed = 0
        for spec in specs:
            source = self._endpoints.get(spec.track_endpoint_id)
            target = self._endpoints.get(spec.endpoint_id)
            if source is None or target is None:
                continue
            track = self._forward_track(source, spec.track_ssrc)
            if track is None:
                continue
            subscription = _subscription_of(track, target.endpoint)
            if subscription is not None:
                track.unsubscribe(subscription)
                removed += 1
        return removed

    # --- load and stats ------------------------------------------------------------------

    def drain(self, resume: bool = False) -> None:
        self.draining = not resume
        log.info("draining" if self.draining else "taking new endpoints again", extra={"endpoints": len(self._endpoints)})

    def counts(self) -> tuple[int, int, int]:
        """Endpoints, tracks and subscriptions."""
        tracks = sum(len(r.tracks) for r in self._endpoints.values())
        subscriptions = sum(len(r.endpoint.subscriptions) for r in self._endpoints.values())
        return len(self._endpoints), tracks, subscriptions

    def totals(self) -> dict[str, Any]:
        return self.forwarder.stats()

    def select(self, endpoint_id: str = "", conference_id: str = "") -> list[EndpointRecord]:
        if endpoint_id:
            record = self.get_endpoint(endpoint_id)
            return [record] if not conference_id or record.spec.conference_id == conference_id else []
        return self.list_endpoints(conference_id)

    @staticmethod
    def _forward_track(record: EndpointRecord, ssrc: int) -> _forward.Track | None:
        for track in record.endpoint.tracks:
            if track.ssrc == ssrc:
                return track
        return None


def _subscription_of(track: _forward.Track, target: _forward.Endpoint) -> _forward.Subscription | None:
    for subscription in track.subscriptions:
        if subscription.target is target:
            return subscription
    return None


def subscription_spec(subscription: _forward.Subscription) -> SubscriptionSpec:
    """The ids of a route as the forwarding core holds it (endpoints are named by their ids)."""
    return SubscriptionSpec(
        track_endpoint_id=subscription.track.endpoint.name,
        track_ssrc=subscription.track.ssrc,
        endpoint_id=subscription.target.name,
        ssrc=subscription.ssrc,
        paused=subscription.paused,
    )
