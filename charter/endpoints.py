"""An endpoint as the controller asks a media daemon for it (MediaDaemon.CreateEndpoint):
the one description both sides use, with its proto conversion and its checks. The live
endpoint is the forwarding core's `_forward.Endpoint`, which carries this description."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from charter.addresses import Address, address_to_proto, parse_address
from charter.errors import InvalidArgument
from charter.subscriptions import SubscriptionSpec, check_id, parse_subscription_spec
from charter.suites import SrtpSuite, check_key
from charter.tracks import Track, check_distinct, parse_track
from charter.v1 import mediad_pb2

FINGERPRINT_ALGORITHMS = ("sha-256", "sha-384", "sha-512")
MIN_ICE_PWD = 22
"""RFC 8839 5.4: at least 128 bits of randomness as 22 ice-chars."""
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+\Z")
_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})+\Z")


@dataclass(frozen=True)
class DtlsFingerprint:
    """A certificate fingerprint as SDP writes it (RFC 8122): "sha-256", "AB:CD:..."."""

    algorithm: str
    value: str

    def to_proto(self) -> mediad_pb2.DtlsFingerprint:
        return mediad_pb2.DtlsFingerprint(algorithm=self.algorithm, value=self.value)


@dataclass(frozen=True)
class WebRtcTransport:
    """ICE-lite and DTLS-SRTP parameters of a WebRTC endpoint (its keys come from DTLS)."""

    ice_ufrag: str
    """The daemon's ICE credentials for this endpoint."""
    ice_pwd: str
    remote_ice_ufrag: str
    """The browser's ICE username fragment."""
    remote_fingerprints: tuple[DtlsFingerprint, ...]
    """The browser's certificate must match one of these."""

    def to_proto(self) -> mediad_pb2.WebRtcTransport:
        return mediad_pb2.WebRtcTransport(
            ice_ufrag=self.ice_ufrag,
            ice_pwd=self.ice_pwd,
            remote_ice_ufrag=self.remote_ice_ufrag,
            remote_fingerprints=[f.to_proto() for f in self.remote_fingerprints],
        )


def check_fingerprint(field: str, algorithm: str, value: str) -> DtlsFingerprint:
    algorithm = algorithm.lower()
    if algorithm not in FINGERPRINT_ALGORITHMS:
        known = ", ".join(FINGERPRINT_ALGORITHMS)
        raise InvalidArgument(f"{field}.algorithm", f"{algorithm[:20]!r} is not one of {known}")
    if not _HEX_PAIRS.match(value):
        raise InvalidArgument(f"{field}.value", "is not hex bytes separated by colons (AB:CD:...)")
    return DtlsFingerprint(algorithm, value.upper())


def check_ice_credentials(field: str, ufrag: str, pwd: str | None = None) -> None:
    """RFC 8839 5.4: ice-char (ALPHA / DIGIT / "+" / "/"), ufrag 4-256, pwd 22-256 characters."""
    if not (4 <= len(ufrag) <= 256 and _ICE_CHARS.match(ufrag)):
        raise InvalidArgument(f"{field}.ice_ufrag" if pwd is not None else field, "must be 4-256 ICE characters")
    if pwd is not None and not (MIN_ICE_PWD <= len(pwd) <= 256 and _ICE_CHARS.match(pwd)):
        raise InvalidArgument(f"{field}.ice_pwd", f"must be {MIN_ICE_PWD}-256 ICE characters")


def parse_webrtc_transport(field: str, transport: mediad_pb2.WebRtcTransport) -> WebRtcTransport:
    check_ice_credentials(field, transport.ice_ufrag, transport.ice_pwd)
    check_ice_credentials(f"{field}.remote_ice_ufrag", transport.remote_ice_ufrag)
    if not transport.remote_fingerprints:
        raise InvalidArgument(f"{field}.remote_fingerprints", "is required: the browser's certificate fingerprint")
    return WebRtcTransport(
        ice_ufrag=transport.ice_ufrag,
        ice_pwd=transport.ice_pwd,
        remote_ice_ufrag=transport.remote_ice_ufrag,
        remote_fingerprints=tuple(
            check_fingerprint(f"{field}.remote_fingerprints[{i}]", f.algorithm, f.value)
            for i, f in enumerate(transport.remote_fingerprints)
        ),
    )


@dataclass(frozen=True)
class EndpointSpec:
    endpoint_id: str
    conference_id: str
    suite: SrtpSuite
    rx_key: bytes
    """Master key and salt the remote peer protects with (the endpoint unprotects); empty
    for a WebRTC endpoint (DTLS gives the keys)."""
    tx_key: bytes
    """Master key and salt the endpoint protects with."""
    remote: Address | None
    """None: latch onto the source of the first packet that authenticates (SDES), or the
    address ICE chooses (WebRTC)."""
    tracks: tuple[Track, ...] = ()
    subscriptions: tuple[SubscriptionSpec, ...] = ()
    """Routes to and from the endpoint, made with it or not at all."""
    webrtc: WebRtcTransport | None = None
    """ICE-lite and DTLS-SRTP instead of SDES keys."""
    relay_link: bool = False
    """An end of a link to another daemon (controller/relays.py): no send budget."""

    def same_endpoint(self, other: EndpointSpec) -> bool:
        """Whether `other` asks for this endpoint again (a retry), tracks and routes aside."""
        return (self.conference_id, self.suite, self.rx_key, self.tx_key, self.remote, self.webrtc,
                self.relay_link) == (other.conference_id, other.suite, other.rx_key, other.tx_key, other.remote,
                                     other.webrtc, other.relay_link)

    def fixes_remote(self, other: EndpointSpec) -> bool:
        """Whether `other` asks this latching endpoint again with a fixed remote, all else the
        same: the two ends of a relay link between daemons are made one after the other, so
        the first learns the second's address only once that is made."""
        return (self.remote is None and other.remote is not None and self.webrtc is None
                and dataclasses.replace(self, remote=other.remote).same_endpoint(other))

    def to_proto(self) -> mediad_pb2.CreateEndpointRequest:
        request = mediad_pb2.CreateEndpointRequest(
            endpoint_id=self.endpoint_id,
            conference_id=self.conference_id,
            suite=self.suite.number,
            rx_key=self.rx_key,
            tx_key=self.tx_key,
            tracks=[t.to_proto() for t in self.tracks],
            subscriptions=[s.to_proto() for s in self.subscriptions],
            relay_link=self.relay_link,
        )
        if self.remote is not None:
            request.remote.CopyFrom(address_to_proto(self.remote))
        if self.webrtc is not None:
            request.webrtc.CopyFrom(self.webrtc.to_proto())
        return request


def parse_endpoint_spec(request: mediad_pb2.CreateEndpointRequest) -> EndpointSpec:
    """The endpoint a CreateEndpoint request asks for, or InvalidArgument naming the field."""
    suite = SrtpSuite.from_number("suite", request.suite)
    tracks = tuple(parse_track(f"tracks[{i}]", t) for i, t in enumerate(request.tracks))
    check_distinct("tracks", tracks)
    webrtc = parse_webrtc_transport("webrtc", request.webrtc) if request.HasField("webrtc") else None
    if webrtc is not None:
        given = {"rx_key": request.rx_key, "tx_key": request.tx_key, "remote": request.HasField("remote"),
                 "relay_link": request.relay_link}
        for name in (n for n, value in given.items() if value):
            raise InvalidArgument(name, "is left out of a WebRTC endpoint: DTLS gives the keys, ICE the address")
    return EndpointSpec(
        endpoint_id=check_id("endpoint_id", request.endpoint_id),
        conference_id=check_id("conference_id", request.conference_id),
        suite=suite,
        rx_key=b"" if webrtc else check_key("rx_key", suite, request.rx_key),
        tx_key=b"" if webrtc else check_key("tx_key", suite, request.tx_key),
        remote=parse_address("remote", request.remote) if request.HasField("remote") else None,
        webrtc=webrtc,
        relay_link=request.relay_link,
        tracks=tracks,
        subscriptions=tuple(
            parse_subscription_spec(f"subscriptions[{i}]", s) for i, s in enumerate(request.subscriptions)
        ),
    )
