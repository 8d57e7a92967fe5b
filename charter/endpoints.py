"""An endpoint as the controller asks a media daemon for it (MediaDaemon.CreateEndpoint):
the one description both sides use, with its proto conversion and its checks. The live
endpoint is the forwarding core's `_forward.Endpoint`, which carries this description."""
from __future__ import annotations

from dataclasses import dataclass

from charter.addresses import Address, address_to_proto, parse_address
from charter.subscriptions import SubscriptionSpec, check_id, parse_subscription_spec
from charter.suites import SrtpSuite, check_key
from charter.tracks import Track, check_distinct, parse_track
from charter.v1 import mediad_pb2


@dataclass(frozen=True)
class EndpointSpec:
    endpoint_id: str
    conference_id: str
    suite: SrtpSuite
    rx_key: bytes
    """Master key and salt the remote peer protects with (the endpoint unprotects)."""
    tx_key: bytes
    """Master key and salt the endpoint protects with."""
    remote: Address | None
    """None: latch onto the source of the first packet that authenticates."""
    tracks: tuple[Track, ...] = ()
    subscriptions: tuple[SubscriptionSpec, ...] = ()
    """Routes to and from the endpoint, made with it or not at all."""

    def same_endpoint(self, other: EndpointSpec) -> bool:
        """Whether `other` asks for this endpoint again (a retry), tracks and routes aside."""
        return (self.conference_id, self.suite, self.rx_key, self.tx_key, self.remote) == (
            other.conference_id, other.suite, other.rx_key, other.tx_key, other.remote
        )

    def to_proto(self) -> mediad_pb2.CreateEndpointRequest:
        request = mediad_pb2.CreateEndpointRequest(
            endpoint_id=self.endpoint_id,
            conference_id=self.conference_id,
            suite=self.suite.number,
            rx_key=self.rx_key,
            tx_key=self.tx_key,
            tracks=[t.to_proto() for t in self.tracks],
            subscriptions=[s.to_proto() for s in self.subscriptions],
        )
        if self.remote is not None:
            request.remote.CopyFrom(address_to_proto(self.remote))
        return request


def parse_endpoint_spec(request: mediad_pb2.CreateEndpointRequest) -> EndpointSpec:
    """The endpoint a CreateEndpoint request asks for, or InvalidArgument naming the field."""
    suite = SrtpSuite.from_number("suite", request.suite)
    tracks = tuple(parse_track(f"tracks[{i}]", t) for i, t in enumerate(request.tracks))
    check_distinct("tracks", tracks)
    return EndpointSpec(
        endpoint_id=check_id("endpoint_id", request.endpoint_id),
        conference_id=check_id("conference_id", request.conference_id),
        suite=suite,
        rx_key=check_key("rx_key", suite, request.rx_key),
        tx_key=check_key("tx_key", suite, request.tx_key),
        remote=parse_address("remote", request.remote) if request.HasField("remote") else None,
        tracks=tracks,
        subscriptions=tuple(
            parse_subscription_spec(f"subscriptions[{i}]", s) for i, s in enumerate(request.subscriptions)
        ),
    )
