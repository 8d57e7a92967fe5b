"""A subscription: a participant's track sent to another participant with an SSRC of its own.

Two views of the one concept, each with its one proto conversion:
- `Subscription` is what the receiving participant knows (charter.v1.Subscription): whose
  track, the track as published, and the SSRC it arrives with;
- `SubscriptionSpec` is the route a media daemon applies (charter.v1.SubscriptionSpec): from
  the publisher's endpoint and SSRC to the receiver's endpoint with that SSRC.
The live subscription on the daemon is the forwarding core's `_forward.Subscription`.
"""
from __future__ import annotations

from dataclasses import dataclass

from charter.errors import InvalidArgument
from charter.tracks import Track
from charter.v1 import controller_pb2, mediad_pb2

MAX_ID = 200
"""Endpoint ids are the controller's "conference/participant": at most 64 + 1 + 64."""


@dataclass(frozen=True)
class Subscription:
    """A track of `publisher_id` as one participant receives it."""

    publisher_id: str
    track: Track
    """As published: track.ssrc is the publisher's SSRC."""
    ssrc: int
    """The SSRC the receiver gets it with."""
    payload_type: int | None = None
    """The receiver's own payload type for the codec (a WebRTC receiver's); None: the track's."""
    rtx_ssrc: int = 0
    """RFC 4588 retransmissions to the receiver on this SSRC (0: none negotiated)."""
    rtx_payload_type: int = 0

    def spec(self, track_endpoint_id: str, endpoint_id: str, *, paused: bool = False) -> SubscriptionSpec:
        """The route a media daemon applies for it. A WebRTC receiver's (one with a payload
        type of its own) goes without the publisher's RTP header extensions (their ids mean
        other things to the receiver, which tells streams apart by the SSRCs Charter
        signalled). Every receiver's video starts at a key frame: a decoder can start only
        there (a browser asks again and again; ffmpeg, GStreamer and SIP phones wait, or show
        garbage), and the daemon starts a late one from its cached key frame when the
        publisher ignores the request (mediad/fast_start.py)."""
        webrtc = self.payload_type is not None
        return SubscriptionSpec(
            track_endpoint_id, self.track.ssrc, endpoint_id, self.ssrc, paused=paused,
            payload_type=self.payload_type if self.payload_type != self.track.payload_type else None,
            strip_extensions=webrtc, rtx_ssrc=self.rtx_ssrc, rtx_payload_type=self.rtx_payload_type,
            wait_for_key_frame=self.track.kind == "video",
        )

    def to_proto(self) -> controller_pb2.Subscription:
        return controller_pb2.Subscription(publisher_id=self.publisher_id, track=self.track.to_proto(), ssrc=self.ssrc)


@dataclass(frozen=True)
class SubscriptionSpec:
    """The route of one track to one endpoint, as a media daemon applies it."""

    track_endpoint_id: str
    """The endpoint that receives the track from its publisher."""
    track_ssrc: int
    """The publisher's SSRC of the track."""
    endpoint_id: str
    """The endpoint the track is sent to."""
    ssrc: int
    """The SSRC it is sent with (unique among what endpoint_id receives)."""
    paused: bool = False
    payload_type: int | None = None
    """The receiver's payload type for the codec; None: the publisher's, unchanged."""
    strip_extensions: bool = False
    """Send without RTP header extensions (a WebRTC receiver reads them as its own)."""
    rtx_ssrc: int = 0
    """RFC 4588 retransmissions on this SSRC (0: reuse the lost packet's SSRC and sequence)."""
    rtx_payload_type: int = 0
    wait_for_key_frame: bool = False
    """Forward nothing until the first key frame."""

    def to_proto(self) -> mediad_pb2.SubscriptionSpec:
        message = mediad_pb2.SubscriptionSpec(
            track_endpoint_id=self.track_endpoint_id,
            track_ssrc=self.track_ssrc,
            endpoint_id=self.endpoint_id,
            ssrc=self.ssrc,
            paused=self.paused,
            strip_extensions=self.strip_extensions,
            rtx_ssrc=self.rtx_ssrc,
            rtx_payload_type=self.rtx_payload_type,
            wait_for_key_frame=self.wait_for_key_frame,
        )
        if self.payload_type is not None:
            message.payload_type = self.payload_type
        return message

    @property
    def route(self) -> tuple[str, int, str]:
        """What names the route: (track_endpoint_id, track_ssrc, endpoint_id)."""
        return self.track_endpoint_id, self.track_ssrc, self.endpoint_id


def check_id(field: str, value: str) -> str:
    """An endpoint or conference id of the daemon API: required, at most MAX_ID characters."""
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > MAX_ID:
        raise InvalidArgument(field, f"is {len(value)} characters long; at most {MAX_ID}")
    return value


def parse_subscription_spec(field: str, spec: mediad_pb2.SubscriptionSpec) -> SubscriptionSpec:
    if not 0 < spec.ssrc <= 0xFFFFFFFF:
        raise InvalidArgument(f"{field}.ssrc", "must be a non-zero 32-bit SSRC")
    payload_type = spec.payload_type if spec.HasField("payload_type") else None
    if payload_type is not None and payload_type > 127:
        raise InvalidArgument(f"{field}.payload_type", f"is {payload_type}; RTP payload types are 0-127")
    if spec.rtx_ssrc:
        if spec.rtx_ssrc == spec.ssrc:
            raise InvalidArgument(f"{field}.rtx_ssrc", "must differ from ssrc")
        if not 96 <= spec.rtx_payload_type <= 127:
            raise InvalidArgument(f"{field}.rtx_payload_type", "must be a dynamic payload type 96-127 with rtx_ssrc")
    return SubscriptionSpec(
        track_endpoint_id=check_id(f"{field}.track_endpoint_id", spec.track_endpoint_id),
        track_ssrc=spec.track_ssrc,
        endpoint_id=check_id(f"{field}.endpoint_id", spec.endpoint_id),
        ssrc=spec.ssrc,
        paused=spec.paused,
        payload_type=payload_type,
        strip_extensions=spec.strip_extensions,
        rtx_ssrc=spec.rtx_ssrc,
        rtx_payload_type=spec.rtx_payload_type if spec.rtx_ssrc else 0,
        wait_for_key_frame=spec.wait_for_key_frame,
    )
