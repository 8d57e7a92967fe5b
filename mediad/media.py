"""The media daemon's domain over the forwarding core: endpoints, tracks and subscriptions
keyed by the ids the controller chose. Every operation is idempotent, so a controller can
retry any of them. The forwarding core is the one truth about what the daemon forwards:
each core endpoint carries the EndpointSpec it was made from and each core track its Track,
and this module only keeps an index of the endpoints by id."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

from charter.endpoints import EndpointSpec
from charter.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from charter.subscriptions import SubscriptionSpec
from charter.tracks import Track
from charter.v1 import controller_pb2
from mediad import _forward
from mediad.dtls import Certificate
from mediad.fast_start import FastStart
from mediad.ports import PortAllocator, PortsExhausted
from mediad.proof import ReceiverProof
from mediad.rtcp_router import RtcpRouter
from mediad.webrtc import WebRtcTransports

log = logging.getLogger("mediad.media")

VIDEO_CACHE_PACKETS = 512
"""Video packets kept per track (750 KiB a track) to answer NACKs and to start a new
receiver from the latest key frame (mediad/fast_start.py): half a second at 1,000 packets/s,
and a 10-second group of pictures at up to about 500 kbit/s. Audio is not retransmitted: a
late audio packet is a lost one."""


def spec_of(endpoint: _forward.Endpoint) -> EndpointSpec:
    """The parameters an endpoint was made with (its tracks and routes are in the core)."""
    spec = endpoint.description
    assert isinstance(spec, EndpointSpec)
    return spec


def track_of(track: _forward.Track) -> Track:
    """The description a core track was added with."""
    description = track.description
    assert isinstance(description, Track)
    return description


def port_of(endpoint: _forward.Endpoint) -> int:
    address = endpoint.local_address
    return address[1] if address is not None else 0


def subscription_spec(subscription: _forward.Subscription) -> SubscriptionSpec:
    """A route as the forwarding core holds it (endpoints are named by their ids)."""
    publisher = subscription.track.endpoint
    assert publisher is not None, "a subscription's track is removed with its subscriptions"
    return SubscriptionSpec(
        track_endpoint_id=publisher.name,
        track_ssrc=subscription.track.ssrc,
        endpoint_id=subscription.target.name,
        ssrc=subscription.ssrc,
        paused=subscription.paused,
        payload_type=subscription.payload_type,
        strip_extensions=subscription.strip_extensions,
        rtx_ssrc=subscription.rtx_ssrc,
        rtx_payload_type=subscription.rtx_payload_type,
        wait_for_key_frame=subscription.wait_for_key_frame,
    )


class Media:
    def __init__(
        self,
        forwarder: _forward.Forwarder,
        ports: PortAllocator,
        capacity: int,
        *,
        consent_timeout: float = 30.0,
        certificate: Certificate | None = None,
        proof: ReceiverProof | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.proof = proof or ReceiverProof()
        self.ports = ports
        self.capacity = min(capacity, ports.size) if capacity > 0 else ports.size
        self.draining = False
        self._endpoints: dict[str, _forward.Endpoint] = {}
        """The core's open endpoints by id."""
        self.rtcp = RtcpRouter()
        forwarder.set_rtcp_handler(self.rtcp.handle)
        self.fast_start = FastStart(self.rtcp.counts)
        self.webrtc = WebRtcTransports(certificate or Certificate.generate(), self._closed_by_transport,
                                       on_connected=self._connected, consent_timeout=consent_timeout)
        forwarder.set_handshake_handler(self.webrtc.handle)
        self.closed_endpoints: list[controller_pb2.ClosedEndpoint] = []
        """Endpoints this daemon closed by itself, for the next lease renewal."""
        self.on_closed: Callable[[], None] = lambda: None
        """Called when one is added (the lease renews at once to tell the controller)."""

    def _closed_by_transport(self, endpoint: _forward.Endpoint, reason: str) -> None:
        if self._endpoints.get(endpoint.name) is not endpoint:
            return
        conference_id = spec_of(endpoint).conference_id
        self.delete_endpoint(endpoint.name, allow_missing=True)
        self.closed_endpoints.append(
            controller_pb2.ClosedEndpoint(endpoint_id=endpoint.name, conference_id=conference_id, reason=reason)
        )
        log.info("endpoint closed by the daemon", extra={"endpoint_id": endpoint.name, "reason": reason})
        self.on_closed()

    def _connected(self, endpoint: _forward.Endpoint) -> None:
        # The key frame requests of its routes made before its handshake reached no one.
        for track in endpoint.tracks:
            if track.kind == "video" and track.subscriptions:
                self.rtcp.request_key_frame(track)

    def take_closed_endpoints(self) -> list[controller_pb2.ClosedEndpoint]:
        taken, self.closed_endpoints = self.closed_endpoints, []
        return taken

    # --- endpoints -----------------------------------------------------------------------

    def create_endpoint(self, spec: EndpointSpec) -> _forward.Endpoint:
        endpoint = self._endpoints.get(spec.endpoint_id)
        if endpoint is not None:
            held = spec_of(endpoint)
            if held.fixes_remote(spec):
                endpoint.set_remote(spec.remote, latch=False)
                endpoint.description = dataclasses.replace(held, remote=spec.remote)
            elif not held.same_endpoint(spec):
                raise AlreadyExists(f"endpoint {spec.endpoint_id!r} exists with other parameters")
            for track in spec.tracks:
                self._add_track(endpoint, track)
            self.subscribe(spec.subscriptions)
            return endpoint
        if self.draining:
            raise FailedPrecondition("this media daemon is draining and takes no new endpoints")
        if len(self._endpoints) >= self.capacity:
            raise ResourceExhausted(f"this media daemon is full ({len(self._endpoints)} of {self.capacity} endpoints)")
        try:
            sock = self.ports.allocate()
        except PortsExhausted as error:
            raise ResourceExhausted(str(error)) from None
        port = sock.getsockname()[1]
        description = dataclasses.replace(spec, tracks=(), subscriptions=())
        try:
            if spec.webrtc is not None:
                # Keys come from DTLS, the address from ICE (mediad/webrtc.py).
                endpoint = self.forwarder.create_endpoint(
                    sock, name=spec.endpoint_id, description=description, latch=False, handshakes=True
                )
                self.webrtc.open(endpoint, spec.webrtc)
            else:
                endpoint = self.forwarder.create_endpoint(
                    sock,
                    rx_suite=spec.suite.value,
                    rx_key=spec.rx_key,
                    tx_suite=spec.suite.value,
                    tx_key=spec.tx_key,
                    remote=spec.remote,
                    name=spec.endpoint_id,
                    description=description,
                )
                # A link end's remote is another daemon, given by the controller: no proof.
                budget = None if spec.relay_link else self.proof.budget_for(spec.remote)
                if budget is not None:
                    endpoint.require_proof(budget)
        except ValueError as error:
            sock.close()
            self.ports.release(port)
            raise InvalidArgument("endpoint", str(error)) from None
        except BaseException:
            sock.close()
            self.ports.release(port)
            raise
        self._endpoints[spec.endpoint_id] = endpoint
        try:
            for track in spec.tracks:
                self._add_track(endpoint, track)
            self.subscribe(spec.subscriptions)
        except BaseException:
            self.delete_endpoint(spec.endpoint_id)
            raise
        log.debug("endpoint created", extra={"endpoint_id": spec.endpoint_id, "port": port})
        return endpoint

    def get_endpoint(self, endpoint_id: str) -> _forward.Endpoint:
        endpoint = self._endpoints.get(endpoint_id)
        if endpoint is None:
            raise NotFound(f"endpoint {endpoint_id!r} not found")
        return endpoint

    def list_endpoints(self, conference_id: str = "") -> list[_forward.Endpoint]:
        return [
            self._endpoints[k]
            for k in sorted(self._endpoints)
            if not conference_id or spec_of(self._endpoints[k]).conference_id == conference_id
        ]

    def delete_endpoint(self, endpoint_id: str, allow_missing: bool = False) -> bool:
        endpoint = self._endpoints.pop(endpoint_id, None)
        if endpoint is None:
            if allow_missing:
                return False
            raise NotFound(f"endpoint {endpoint_id!r} not found")
        port = port_of(endpoint)
        self.webrtc.forget(endpoint_id)
        # Closing removes its tracks with their subscriptions, and the subscriptions sending
        # to it, from the forwarding core; then the socket is closed and the port is free.
        endpoint.close()
        self.ports.release(port)
        log.debug("endpoint deleted", extra={"endpoint_id": endpoint_id, "port": port})
        return True

    def release_conference(self, conference_id: str) -> int:
        ids = [e.name for e in self.list_endpoints(conference_id)]
        for endpoint_id in ids:
            self.delete_endpoint(endpoint_id, allow_missing=True)
        return len(ids)

    def close(self) -> None:
        for endpoint_id in list(self._endpoints):
            self.delete_endpoint(endpoint_id, allow_missing=True)

    # --- tracks and subscriptions --------------------------------------------------------

    def _add_track(self, endpoint: _forward.Endpoint, track: Track) -> None:
        existing = endpoint.find_track(track.ssrc)
        if existing is not None:
            if track_of(existing) != track:
                raise AlreadyExists(
                    f"endpoint {endpoint.name!r} has a track with SSRC {track.ssrc} and another description"
                )
            return
        endpoint.add_track(
            track.ssrc,
            clock_rate=track.clock_rate,
            kind=track.kind,
            name=track.name,
            cache_packets=VIDEO_CACHE_PACKETS if track.kind == "video" else 0,
            description=track,
            codec=track.codec,
        )

    def remove_tracks(self, endpoint_id: str, ssrcs: Sequence[int]) -> int:
        """Remove the endpoint's tracks with these SSRCs and their subscriptions, as closing
        the endpoint does; SSRCs it does not hold are skipped (a retry removes 0). How many went."""
        endpoint = self.get_endpoint(endpoint_id)
        removed = 0
        for ssrc in dict.fromkeys(ssrcs):
            track = endpoint.find_track(ssrc)
            if track is not None:
                endpoint.remove_track(track)
                removed += 1
        if removed:
            log.debug("tracks removed", extra={"endpoint_id": endpoint_id, "tracks": removed})
        return removed

    def subscribe(self, specs: Sequence[SubscriptionSpec]) -> int:
        """Create every route that does not exist yet; all are checked before any is made."""
        plan: list[tuple[_forward.Track, _forward.Endpoint, SubscriptionSpec]] = []
        planned: set[tuple[str, int]] = set()  # (endpoint id, SSRC), RTX streams included
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
            track = source.find_track(spec.track_ssrc)
            if track is None:
                raise NotFound(
                    f"{field_name}.track_ssrc: endpoint {spec.track_endpoint_id!r} "
                    f"has no track with SSRC {spec.track_ssrc}"
                )
            existing = track.find_subscription(target)
            if existing is not None:
                if existing.ssrc != spec.ssrc:
                    raise AlreadyExists(
                        f"{field_name}: endpoint {spec.endpoint_id!r} "
                        f"already receives this track with SSRC {existing.ssrc}"
                    )
                continue
            # The SSRCs the route sends to its endpoint: its own, and its RTX stream's.
            sends = {"ssrc": spec.ssrc, "rtx_ssrc": spec.rtx_ssrc} if spec.rtx_ssrc else {"ssrc": spec.ssrc}
            taken = {ssrc for s in target.subscriptions for ssrc in (s.ssrc, s.rtx_ssrc) if ssrc}
            for name, ssrc in sends.items():
                if (spec.endpoint_id, ssrc) in planned or ssrc in taken:
                    raise AlreadyExists(
                        f"{field_name}.{name}: endpoint {spec.endpoint_id!r} already receives SSRC {ssrc}"
                    )
            planned.update((spec.endpoint_id, ssrc) for ssrc in sends.values())
            plan.append((track, target, spec))
        for track, target, spec in plan:
            subscription = track.subscribe(
                target,
                spec.ssrc,
                paused=spec.paused,
                payload_type=spec.payload_type,
                strip_extensions=spec.strip_extensions,
                rtx_ssrc=spec.rtx_ssrc,
                rtx_payload_type=spec.rtx_payload_type,
                wait_for_key_frame=spec.wait_for_key_frame,
            )
            # A new video receiver can decode nothing before the next key frame: ask for one
            # (a publisher that has not sent yet has no remote and will start with one).
            publisher = track.endpoint  # never None: subscribe() refuses a removed track
            if track.kind == "video" and publisher is not None and publisher.remote is not None:
                self.rtcp.request_key_frame(track)
            self.fast_start.watch(subscription)  # where it waits for one
            self.rtcp.first_report(subscription)  # a sender report with its first packets
        return len(plan)

    def update_subscriptions(self, specs: Sequence[SubscriptionSpec]) -> int:
        """Pause or resume existing routes, all or none: every route is found before any
        changes. Resuming a video route asks its publisher for a key frame."""
        plan: list[tuple[_forward.Subscription, bool]] = []
        for i, spec in enumerate(specs):
            source = self._endpoints.get(spec.track_endpoint_id)
            target = self._endpoints.get(spec.endpoint_id)
            track = source.find_track(spec.track_ssrc) if source is not None else None
            subscription = track.find_subscription(target) if track is not None and target is not None else None
            if subscription is None:
                raise NotFound(
                    f"subscriptions[{i}]: no route of track {spec.track_ssrc} of {spec.track_endpoint_id!r} "
                    f"to {spec.endpoint_id!r}"
                )
            if subscription.paused != spec.paused:
                plan.append((subscription, spec.paused))
        for subscription, paused in plan:
            if paused:
                subscription.pause()
                continue
            subscription.resume()
            self.fast_start.watch(subscription)
            track = subscription.track
            publisher = track.endpoint
            if track.kind == "video" and publisher is not None and publisher.remote is not None:
                self.rtcp.request_key_frame(track)
        return len(plan)

    # --- load and stats ------------------------------------------------------------------

    def drain(self, resume: bool = False) -> None:
        self.draining = not resume
        log.info(
            "draining" if self.draining else "taking new endpoints again", extra={"endpoints": len(self._endpoints)}
        )

    def counts(self) -> tuple[int, int, int]:
        """Endpoints, tracks and subscriptions."""
        tracks = sum(len(e.tracks) for e in self._endpoints.values())
        subscriptions = sum(len(e.subscriptions) for e in self._endpoints.values())
        return len(self._endpoints), tracks, subscriptions

    def select(self, endpoint_id: str = "", conference_id: str = "") -> list[_forward.Endpoint]:
        if endpoint_id:
            endpoint = self.get_endpoint(endpoint_id)
            return [endpoint] if not conference_id or spec_of(endpoint).conference_id == conference_id else []
        return self.list_endpoints(conference_id)

