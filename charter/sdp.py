"""SDP (RFC 4566) with SDES keys (RFC 4568) for a participant's media session.

The description states every stream of the session as it flows, one m-line per track, so
that independent RTP tools use it as it is:

- a track the participant publishes is `a=sendonly`: it goes to the media daemon's address
  and port, protected with the participant's send key, with the SSRC it joined with;
- a track it receives is `a=recvonly`: it arrives at the participant's receive address
  (given at Join), protected with the receive key, with the SSRC Charter assigned to it for
  this receiver. While the daemon latches (no receive address) the m-line names the
  daemon's address: symmetric RTP, the participant receives on the socket it sends from.

This is what ffmpeg reads (`ffmpeg -i track.sdp` binds the m-line's port and decrypts with
its `a=crypto` key) and writes for what it sends (`-sdp_file`). ffmpeg opens one socket per
m-line, so a process that receives a single track takes that track's SDP alone
(`render(session, ssrc=...)`). RTP and RTCP share each port (`a=rtcp-mux`, RFC 5761).

An offer/answer endpoint (a SIP user agent) needs the other view: `render_answer` is
Charter's answer to the participant's offer (RFC 3264, SDES RFC 4568 section 5), every
m-line on the daemon's port, directions as Charter sees them, and Charter's own key, the
one it protects with. The participant's offered key goes into Join as send_key.

Pure: no I/O, no dependency on the generated protobuf code except in `from_participant`.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
from collections.abc import Sequence
from typing import Any

SEND_ONLY = "sendonly"
RECV_ONLY = "recvonly"
PROFILE = "RTP/SAVP"
DEFAULT_SUITE = "AES_CM_128_HMAC_SHA1_80"
# SDES suite name -> length of the inline master key and salt (RFC 4568, RFC 7714).
SUITE_KEY_LENGTHS = {
    "AES_CM_128_HMAC_SHA1_80": 30,
    "AES_CM_128_HMAC_SHA1_32": 30,
    "AEAD_AES_128_GCM": 28,
}
# Format parameters both ffmpeg and GStreamer produce by default; the proto has no fmtp.
DEFAULT_FMTP = {"h264": "packetization-mode=1"}


@dataclasses.dataclass(frozen=True)
class MediaTrack:
    """One RTP stream of the session, with the SSRC as this participant sees it."""

    kind: str  # "audio" or "video"
    codec: str  # rtpmap encoding name: "VP8", "H264", "opus"
    payload_type: int
    clock_rate: int
    ssrc: int
    channels: int = 0  # 0: not stated (1); Opus is always written as 2 (RFC 7587)
    name: str = ""
    publisher_id: str = ""  # for a received track: the participant that publishes it
    fmtp: str = ""  # empty: the codec's default (DEFAULT_FMTP)

    def __post_init__(self) -> None:
        if self.kind not in ("audio", "video"):
            raise ValueError(f"track kind must be 'audio' or 'video', not {self.kind!r}")
        if not self.codec or any(c in self.codec for c in " /\r\n"):
            raise ValueError(f"codec must be an rtpmap encoding name such as VP8, not {self.codec!r}")
        if not 0 <= self.payload_type <= 127:
            raise ValueError(f"payload type must be 0-127, not {self.payload_type}")
        if self.clock_rate <= 0:
            raise ValueError(f"clock rate must be positive, not {self.clock_rate}")
        if not 0 < self.ssrc < 1 << 32:
            raise ValueError(f"SSRC must be 1 to 2^32-1, not {self.ssrc}")

    @property
    def rtpmap(self) -> str:
        channels = 2 if self.codec.lower() == "opus" else self.channels
        suffix = f"/{channels}" if self.kind == "audio" and channels > 1 else ""
        return f"{self.payload_type} {self.codec}/{self.clock_rate}{suffix}"

    @property
    def format_parameters(self) -> str:
        return self.fmtp or DEFAULT_FMTP.get(self.codec.lower(), "")


@dataclasses.dataclass(frozen=True)
class ParticipantSession:
    """What Join (or GetParticipant) returns, as the SDP needs it."""

    conference_id: str
    participant_id: str
    media_address: tuple[str, int]  # the daemon's address and port (RTP and RTCP)
    suite: str
    send_key: str  # base64 SDES inline key, participant -> SFU
    receive_key: str  # base64 SDES inline key, SFU -> participant
    published: tuple[MediaTrack, ...] = ()
    received: tuple[MediaTrack, ...] = ()
    receive_address: tuple[str, int] | None = None  # None while the daemon latches

    def __post_init__(self) -> None:
        _check_address("media address", self.media_address)
        if self.receive_address is not None:
            _check_address("receive address", self.receive_address)
        if self.suite not in SUITE_KEY_LENGTHS:
            raise ValueError(f"unknown SRTP suite {self.suite!r}; use one of {', '.join(SUITE_KEY_LENGTHS)}")
        for label, key in (("send key", self.send_key), ("receive key", self.receive_key)):
            _check_key(label, self.suite, key)
        ssrcs = [t.ssrc for t in (*self.published, *self.received)]
        if len(set(ssrcs)) != len(ssrcs):
            raise ValueError("SSRCs of a participant's tracks must be distinct")

    def track(self, ssrc: int) -> MediaTrack:
        """The track with this SSRC (its own SSRC if published, the assigned one if received)."""
        for track in (*self.published, *self.received):
            if track.ssrc == ssrc:
                return track
        known = ", ".join(str(t.ssrc) for t in (*self.published, *self.received)) or "none"
        raise KeyError(f"participant {self.participant_id!r} has no track with SSRC {ssrc} (its SSRCs: {known})")


def _check_address(label: str, address: tuple[str, int]) -> None:
    host, port = address
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{label} must be an IP address, not {host!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"{label} port must be 1-65535, not {port}")


def _check_key(label: str, suite: str, key: str) -> None:
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{label} is not base64: {key!r}") from None
    if len(raw) != SUITE_KEY_LENGTHS[suite]:
        raise ValueError(f"{label} of {suite} must be {SUITE_KEY_LENGTHS[suite]} bytes, got {len(raw)}")


def _address_type(host: str) -> str:
    return "IP6" if ipaddress.ip_address(host).version == 6 else "IP4"


def _media_lines(
    session: ParticipantSession, track: MediaTrack, direction: str, mid: int
) -> list[str]:
    if direction == SEND_ONLY:
        host, port = session.media_address
        key, cname = session.send_key, session.participant_id
    else:
        host, port = session.receive_address or session.media_address
        key, cname = session.receive_key, track.publisher_id or session.participant_id
    lines = [
        f"m={track.kind} {port} {PROFILE} {track.payload_type}",
        f"c=IN {_address_type(host)} {host}",
        f"a=mid:{mid}",
        f"a=rtpmap:{track.rtpmap}",
    ]
    if track.format_parameters:
        lines.append(f"a=fmtp:{track.payload_type} {track.format_parameters}")
    lines += [
        f"a={direction}",
        "a=rtcp-mux",
        f"a=ssrc:{track.ssrc} cname:{cname}",
    ]
    if track.name:
        lines.append(f"a=label:{track.name}")
    lines.append(f"a=crypto:1 {session.suite} inline:{key}")
    return lines


def render(
    session: ParticipantSession,
    *,
    ssrc: int | None = None,
    direction: str | None = None,
) -> str:
    """The session description: every track, or only the one with `ssrc`, or only the
    published (`direction="sendonly"`) or received (`"recvonly"`) ones."""
    if direction not in (None, SEND_ONLY, RECV_ONLY):
        raise ValueError(f"direction must be {SEND_ONLY!r} or {RECV_ONLY!r}, not {direction!r}")
    if ssrc is not None:
        session.track(ssrc)  # KeyError naming the SSRCs it has
    entries = [(t, SEND_ONLY) for t in session.published] + [(t, RECV_ONLY) for t in session.received]
    chosen = [
        (track, way)
        for track, way in entries
        if (ssrc is None or track.ssrc == ssrc) and (direction is None or way == direction)
    ]
    host = session.media_address[0]
    # The session version is fixed: the description is a pure function of the session.
    lines = [
        "v=0",
        f"o=charter {_session_id(session)} 1 IN {_address_type(host)} {host}",
        f"s=charter {session.conference_id}",
        f"i=participant {session.participant_id}",
        "t=0 0",
        "a=tool:charter",
    ]
    for mid, (track, way) in enumerate(chosen):
        lines += _media_lines(session, track, way, mid)
    return "\r\n".join(lines) + "\r\n"


def render_answer(session: ParticipantSession) -> str:
    """Charter's SDP answer to the participant: BUNDLE on the daemon's one port, published
    tracks recvonly (Charter receives them), received tracks sendonly with the SSRCs Charter
    sends them with, and the key Charter protects with (the participant's receive key)."""
    host, port = session.media_address
    entries = [(t, RECV_ONLY) for t in session.published] + [(t, SEND_ONLY) for t in session.received]
    lines = [
        "v=0",
        f"o=charter {_session_id(session)} 1 IN {_address_type(host)} {host}",
        f"s=charter {session.conference_id}",
        f"i=answer to participant {session.participant_id}",
        f"c=IN {_address_type(host)} {host}",
        "t=0 0",
        "a=tool:charter",
    ]
    if entries:
        lines.append("a=group:BUNDLE " + " ".join(str(mid) for mid in range(len(entries))))
    for mid, (track, direction) in enumerate(entries):
        lines += [
            f"m={track.kind} {port} {PROFILE} {track.payload_type}",
            f"a=mid:{mid}",
            f"a=rtpmap:{track.rtpmap}",
        ]
        if track.format_parameters:
            lines.append(f"a=fmtp:{track.payload_type} {track.format_parameters}")
        lines += [f"a={direction}", "a=rtcp-mux"]
        if direction == SEND_ONLY:
            lines.append(f"a=ssrc:{track.ssrc} cname:{track.publisher_id or session.participant_id}")
        if track.name:
            lines.append(f"a=label:{track.name}")
        lines.append(f"a=crypto:1 {session.suite} inline:{session.receive_key}")
    return "\r\n".join(lines) + "\r\n"


def _session_id(session: ParticipantSession) -> int:
    # Stable per participant (RFC 4566 asks for a numeric, unique-enough id).
    digest = binascii.crc32(f"{session.conference_id}/{session.participant_id}".encode())
    return digest or 1


# --------------------------------------------------------------------------------------
# Parsing: enough of RFC 4566 to read back what render() writes, and what ffmpeg writes.


@dataclasses.dataclass
class Crypto:
    tag: int
    suite: str
    key: str  # base64 inline key (lifetime and MKI, if any, dropped)

    @property
    def key_bytes(self) -> bytes:
        return base64.b64decode(self.key, validate=True)


@dataclasses.dataclass
class Media:
    """One m-line and its attributes."""

    kind: str
    port: int
    profile: str
    formats: list[int]
    address: str | None = None  # the m-line's c= or the session's
    direction: str = "sendrecv"
    rtpmap: dict[int, str] = dataclasses.field(default_factory=dict)
    fmtp: dict[int, str] = dataclasses.field(default_factory=dict)
    ssrcs: list[int] = dataclasses.field(default_factory=list)
    crypto: list[Crypto] = dataclasses.field(default_factory=list)
    rtcp_mux: bool = False
    mid: str = ""
    label: str = ""
    attributes: list[str] = dataclasses.field(default_factory=list)

    @property
    def payload_type(self) -> int:
        return self.formats[0]

    @property
    def codec(self) -> str:
        return self.rtpmap[self.payload_type].split("/")[0]

    @property
    def clock_rate(self) -> int:
        return int(self.rtpmap[self.payload_type].split("/")[1])

    @property
    def channels(self) -> int:
        parts = self.rtpmap[self.payload_type].split("/")
        return int(parts[2]) if len(parts) > 2 else 1

    @property
    def ssrc(self) -> int:
        if len(self.ssrcs) != 1:
            raise ValueError(f"m={self.kind} port {self.port} has {len(self.ssrcs)} SSRCs, expected one")
        return self.ssrcs[0]

    def transport(self) -> tuple[str, int]:
        if self.address is None:
            raise ValueError(f"m={self.kind} port {self.port} has no connection address (c=)")
        return self.address, self.port


@dataclasses.dataclass
class SessionDescription:
    origin: str = ""
    name: str = ""
    address: str | None = None
    media: list[Media] = dataclasses.field(default_factory=list)


def parse(text: str) -> SessionDescription:
    """Parse an SDP; ValueError naming the line on anything malformed."""
    description = SessionDescription()
    current: Media | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise ValueError(f"SDP line {number} is not 'x=value': {raw!r}")
        kind, value = line[0], line[2:]
        try:
            if kind == "v":
                if value != "0":
                    raise ValueError(f"only SDP version 0 is known, not {value!r}")
            elif kind == "o":
                description.origin = value
            elif kind == "s":
                description.name = value
            elif kind == "c":
                address = _parse_connection(value)
                if current is None:
                    description.address = address
                else:
                    current.address = address
            elif kind == "m":
                current = _parse_media(value, description.address)
                description.media.append(current)
            elif kind == "a" and current is not None:
                _parse_attribute(current, value)
        except ValueError as error:
            raise ValueError(f"SDP line {number} ({raw!r}): {error}") from None
    return description


def _parse_connection(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise ValueError("expected 'IN IP4|IP6 address'")
    address = parts[2].split("/")[0]  # drop a multicast TTL
    ipaddress.ip_address(address)
    return address


def _parse_media(value: str, address: str | None) -> Media:
    parts = value.split()
    if len(parts) < 4:
        raise ValueError("expected 'media port proto fmt ...'")
    port = int(parts[1].split("/")[0])
    if not 0 <= port < 65536:
        raise ValueError(f"port {port} out of range")
    return Media(kind=parts[0], port=port, profile=parts[2], formats=[int(f) for f in parts[3:]], address=address)


def _parse_attribute(media: Media, value: str) -> None:
    media.attributes.append(value)
    name, _, rest = value.partition(":")
    if name in (SEND_ONLY, RECV_ONLY, "sendrecv", "inactive"):
        media.direction = name
    elif name == "rtcp-mux":
        media.rtcp_mux = True
    elif name == "mid":
        media.mid = rest
    elif name == "label":
        media.label = rest
    elif name == "rtpmap":
        pt, _, encoding = rest.partition(" ")
        media.rtpmap[int(pt)] = encoding.strip()
    elif name == "fmtp":
        pt, _, params = rest.partition(" ")
        media.fmtp[int(pt)] = params.strip()
    elif name == "ssrc":
        ssrc = int(rest.split()[0])
        if ssrc not in media.ssrcs:
            media.ssrcs.append(ssrc)
    elif name == "crypto":
        parts = rest.split()
        if len(parts) < 3 or not parts[2].startswith("inline:"):
            raise ValueError("expected 'a=crypto:tag suite inline:key'")
        key = parts[2][len("inline:"):].split("|")[0]
        media.crypto.append(Crypto(int(parts[0]), parts[1], key))


# --------------------------------------------------------------------------------------
# From the controller's API


_KINDS = {1: "audio", 2: "video"}
_SUITES = {0: DEFAULT_SUITE, 1: "AES_CM_128_HMAC_SHA1_80", 2: "AES_CM_128_HMAC_SHA1_32", 3: "AEAD_AES_128_GCM"}


def _track(message: Any, ssrc: int, publisher_id: str = "") -> MediaTrack:
    return MediaTrack(
        kind=_KINDS.get(message.kind, "video"),
        codec=message.codec,
        payload_type=message.payload_type,
        clock_rate=message.clock_rate,
        ssrc=ssrc,
        channels=message.channels,
        name=message.name,
        publisher_id=publisher_id,
    )


def from_participant(participant: Any) -> ParticipantSession:
    """The session of a `charter.v1.Participant` (from Join or GetParticipant)."""
    receive = None
    if participant.HasField("receive_address") and participant.receive_address.port:
        receive = (participant.receive_address.ip, participant.receive_address.port)
    return ParticipantSession(
        conference_id=participant.conference_id,
        participant_id=participant.participant_id,
        media_address=(participant.media_address.ip, participant.media_address.port),
        receive_address=receive,
        suite=_SUITES.get(participant.suite, DEFAULT_SUITE),
        send_key=participant.send_key,
        receive_key=participant.receive_key,
        published=tuple(_track(t, t.ssrc) for t in participant.tracks),
        received=tuple(_track(s.track, s.ssrc, s.publisher_id) for s in participant.subscriptions),
    )


def received_from(session: ParticipantSession, publisher_id: str) -> Sequence[MediaTrack]:
    """The tracks this participant receives from `publisher_id`."""
    return [t for t in session.received if t.publisher_id == publisher_id]
