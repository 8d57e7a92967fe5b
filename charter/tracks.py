"""A published track as the controller and the media daemons both describe it, with its one
validation and its proto conversion (charter.v1.Track)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from charter.errors import InvalidArgument
from charter.v1 import media_pb2

KINDS: dict[int, str] = {media_pb2.AUDIO: "audio", media_pb2.VIDEO: "video"}
KIND_NUMBERS = {v: k for k, v in KINDS.items()}
MAX_NAME = 256
_CODEC = re.compile(r"[A-Za-z0-9._-]{1,32}\Z")


@dataclass(frozen=True)
class Track:
    """A stream a participant publishes."""

    ssrc: int
    kind: str
    """"audio" or "video"."""
    codec: str
    payload_type: int
    clock_rate: int
    channels: int = 0
    name: str = ""


def parse_track(field: str, track: media_pb2.Track) -> Track:
    """The track of a request, or InvalidArgument naming the field to fix."""
    if not 0 < track.ssrc <= 0xFFFFFFFF:
        raise InvalidArgument(f"{field}.ssrc", "is required: the non-zero 32-bit RTP SSRC the track is sent with")
    if track.kind not in KINDS:
        raise InvalidArgument(f"{field}.kind", "is required: AUDIO or VIDEO")
    if not _CODEC.match(track.codec):
        raise InvalidArgument(f"{field}.codec", f"{track.codec[:40]!r} is not a codec name such as VP8, H264 or opus")
    if track.payload_type > 127:
        raise InvalidArgument(f"{field}.payload_type", f"is {track.payload_type}; RTP payload types are 0-127")
    if not 0 < track.clock_rate <= 1_000_000:
        raise InvalidArgument(
            f"{field}.clock_rate", "is required: the RTP clock rate in Hz, such as 90000 (video) or 48000 (opus)"
        )
    if track.channels > 8:
        raise InvalidArgument(f"{field}.channels", f"is {track.channels}; at most 8")
    if len(track.name) > MAX_NAME:
        raise InvalidArgument(f"{field}.name", f"is {len(track.name)} characters long; at most {MAX_NAME}")
    return Track(
        ssrc=track.ssrc,
        kind=KINDS[track.kind],
        codec=track.codec,
        payload_type=track.payload_type,
        clock_rate=track.clock_rate,
        channels=track.channels,
        name=track.name,
    )


def track_to_proto(track: Track) -> media_pb2.Track:
    return media_pb2.Track(
        ssrc=track.ssrc,
        kind=KIND_NUMBERS[track.kind],  # type: ignore[arg-type]
        codec=track.codec,
        payload_type=track.payload_type,
        clock_rate=track.clock_rate,
        channels=track.channels,
        name=track.name,
    )
