"""A published track as the controller, the media daemons and the SDP describe it, with its
one validation and its proto conversion (charter.v1.Track)."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from charter.errors import InvalidArgument
from charter.v1 import media_pb2

KINDS: dict[media_pb2.TrackKind.ValueType, str] = {media_pb2.AUDIO: "audio", media_pb2.VIDEO: "video"}
KIND_NUMBERS = {v: k for k, v in KINDS.items()}
MAX_NAME = 256
MAX_TRACKS = 16
"""Tracks one participant publishes at most."""
_CODEC = re.compile(r"[A-Za-z0-9._-]{1,32}\Z")
KNOWN_CODECS = {
    "video": ("VP8", "VP9", "H264", "AV1"),
    "audio": ("opus", "PCMU", "PCMA", "G722", "telephone-event"),
}
"""What Charter forwards, by kind (rtpmap encoding names, matched without case)."""
RTCP_PAYLOAD_TYPES = range(72, 77)
"""RTP payload types that would read as RTCP packet types 200-204 on a multiplexed port
(RFC 5761 4): a packet of the track would be taken for RTCP."""


@dataclass(frozen=True)
class Track:
    """A stream a participant publishes, known by the SSRC it sends it with.

    Built only valid: a bad field raises InvalidArgument (a ValueError) naming it."""

    ssrc: int
    kind: str
    """"audio" or "video"."""
    codec: str
    """An rtpmap encoding name: "VP8", "H264", "opus"."""
    payload_type: int
    clock_rate: int
    channels: int = 0
    """0: not stated (read as 1)."""
    name: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.ssrc <= 0xFFFFFFFF:
            raise InvalidArgument("ssrc", "is required: the non-zero 32-bit RTP SSRC the track is sent with")
        if self.kind not in KIND_NUMBERS:
            raise InvalidArgument("kind", "is required: AUDIO or VIDEO")
        if not _CODEC.match(self.codec):
            raise InvalidArgument("codec", f"{self.codec[:40]!r} is not a codec name such as VP8, H264 or opus")
        known = KNOWN_CODECS[self.kind]
        if self.codec.lower() not in (c.lower() for c in known):
            raise InvalidArgument("codec", f"{self.codec!r} is not among the {self.kind} codecs Charter forwards: "
                                  f"one of {', '.join(known)}")
        if not 0 <= self.payload_type <= 127:
            raise InvalidArgument("payload_type", f"is {self.payload_type}; RTP payload types are 0-127")
        if self.payload_type in RTCP_PAYLOAD_TYPES:
            raise InvalidArgument("payload_type", f"is {self.payload_type}, which reads as RTCP on a multiplexed "
                                  "port (RFC 5761: not 72-76); use a dynamic one, 96-127")
        if not 0 < self.clock_rate <= 1_000_000:
            raise InvalidArgument(
                "clock_rate", "is required: the RTP clock rate in Hz, such as 90000 (video) or 48000 (opus)"
            )
        if not 0 <= self.channels <= 8:
            raise InvalidArgument("channels", f"is {self.channels}; at most 8")
        if len(self.name) > MAX_NAME:
            raise InvalidArgument("name", f"is {len(self.name)} characters long; at most {MAX_NAME}")

    def to_proto(self) -> media_pb2.Track:
        return media_pb2.Track(
            ssrc=self.ssrc,
            kind=KIND_NUMBERS[self.kind],
            codec=self.codec,
            payload_type=self.payload_type,
            clock_rate=self.clock_rate,
            channels=self.channels,
            name=self.name,
        )


def parse_track(field: str, track: media_pb2.Track) -> Track:
    """The track of a request, or InvalidArgument naming the field to fix."""
    with InvalidArgument.within(field):
        return Track(
            ssrc=track.ssrc,
            kind=KINDS.get(track.kind, ""),
            codec=track.codec,
            payload_type=track.payload_type,
            clock_rate=track.clock_rate,
            channels=track.channels,
            name=track.name,
        )


def parse_tracks(field: str, tracks: Sequence[media_pb2.Track]) -> tuple[Track, ...]:
    """A participant's tracks: each valid, at most MAX_TRACKS, with distinct SSRCs."""
    if len(tracks) > MAX_TRACKS:
        raise InvalidArgument(field, f"has {len(tracks)} tracks; at most {MAX_TRACKS}")
    parsed = tuple(parse_track(f"{field}[{i}]", t) for i, t in enumerate(tracks))
    check_distinct(field, parsed)
    return parsed


def check_distinct(field: str, tracks: Sequence[Track]) -> None:
    seen: set[int] = set()
    for i, track in enumerate(tracks):
        if track.ssrc in seen:
            raise InvalidArgument(f"{field}[{i}].ssrc", f"{track.ssrc} is used by another track of this participant")
        seen.add(track.ssrc)
