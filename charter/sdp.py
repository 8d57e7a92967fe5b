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

Pure: no I/O; tracks, subscriptions, suites and keys are the shared ones (charter.tracks,
charter.subscriptions, charter.suites), so a session is checked as the API checks it.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
from typing import NamedTuple

from charter.addresses import Address
from charter.subscriptions import Subscription
from charter.suites import SrtpSuite, decode_key
from charter.tracks import Track, parse_track
from charter.v1 import controller_pb2

SEND_ONLY = "sendonly"
RECV_ONLY = "recvonly"
PROFILE = "RTP/SAVP"
# Format parameters both ffmpeg and GStreamer produce by default; the proto has no fmtp.
DEFAULT_FMTP = {"h264": "packetization-mode=1"}


def rtpmap(track: Track) -> str:
    """The a=rtpmap value: Opus is always written with 2 channels (RFC 7587)."""
    channels = 2 if track.codec.lower() == "opus" else track.channels
    suffix = f"/{channels}" if track.kind == "audio" and channels > 1 else ""
    return f"{track.payload_type} {track.codec}/{track.clock_rate}{suffix}"


def format_parameters(track: Track) -> str:
    return DEFAULT_FMTP.get(track.codec.lower(), "")


@dataclasses.dataclass(frozen=True)
class ParticipantSession:
    """What Join (or GetParticipant) returns, as the SDP needs it."""

    conference_id: str
    participant_id: str
    media_address: Address
    """The daemon's address and port (RTP and RTCP)."""
    suite: SrtpSuite
    send_key: str
    """Base64 SDES inline key, participant -> SFU."""
    receive_key: str
    """Base64 SDES inline key, SFU -> participant."""
    published: tuple[Track, ...] = ()
    received: tuple[Subscription, ...] = ()
    receive_address: Address | None = None
    """None while the daemon latches."""

    def __post_init__(self) -> None:
        _check_address("media address", self.media_address)
        if self.receive_address is not None:
            _check_address("receive address", self.receive_address)
        object.__setattr__(self, "suite", SrtpSuite.parse(self.suite))
        decode_key("send key", self.suite, self.send_key)
        decode_key("receive key", self.suite, self.receive_key)
        ssrcs = [t.ssrc for t in self.published] + [s.ssrc for s in self.received]
        if len(set(ssrcs)) != len(ssrcs):
            raise ValueError("SSRCs of a participant's tracks must be distinct")

    def ssrcs(self) -> list[int]:
        """The SSRCs of its streams as it sees them: its own tracks', then those it receives with."""
        return [t.ssrc for t in self.published] + [s.ssrc for s in self.received]

    def received_from(self, publisher_id: str) -> list[Subscription]:
        """The tracks this participant receives from `publisher_id`."""
        return [s for s in self.received if s.publisher_id == publisher_id]


class _Stream(NamedTuple):
    """One m-line: a track with the SSRC and CNAME it flows with here, and its direction."""

    track: Track
    ssrc: int
    cname: str
    direction: str


def _streams(session: ParticipantSession, published: str, received: str) -> list[_Stream]:
    """Published tracks with `published` as direction, then received ones with `received`."""
    streams = [_Stream(t, t.ssrc, session.participant_id, published) for t in session.published]
    streams += [_Stream(s.track, s.ssrc, s.publisher_id or session.participant_id, received) for s in session.received]
    return streams


def _check_address(label: str, address: Address) -> None:
    host, port = address
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{label} must be an IP address, not {host!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"{label} port must be 1-65535, not {port}")


def _address_type(host: str) -> str:
    return "IP6" if ipaddress.ip_address(host).version == 6 else "IP4"


def _codec_lines(stream: _Stream) -> list[str]:
    lines = [f"a=rtpmap:{rtpmap(stream.track)}"]
    fmtp = format_parameters(stream.track)
    if fmtp:
        lines.append(f"a=fmtp:{stream.track.payload_type} {fmtp}")
    return lines


def _media_lines(session: ParticipantSession, stream: _Stream, mid: int) -> list[str]:
    if stream.direction == SEND_ONLY:
        host, port = session.media_address
        key = session.send_key
    else:
        host, port = session.receive_address or session.media_address
        key = session.receive_key
    lines = [
        f"m={stream.track.kind} {port} {PROFILE} {stream.track.payload_type}",
        f"c=IN {_address_type(host)} {host}",
        f"a=mid:{mid}",
        *_codec_lines(stream),
        f"a={stream.direction}",
        "a=rtcp-mux",
        f"a=ssrc:{stream.ssrc} cname:{stream.cname}",
    ]
    if stream.track.name:
        lines.append(f"a=label:{stream.track.name}")
    lines.append(f"a=crypto:1 {session.suite.value} inline:{key}")
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
    if ssrc is not None and ssrc not in session.ssrcs():
        known = ", ".join(str(s) for s in session.ssrcs()) or "none"
        raise KeyError(f"participant {session.participant_id!r} has no track with SSRC {ssrc} (its SSRCs: {known})")
    chosen = [
        stream
        for stream in _streams(session, SEND_ONLY, RECV_ONLY)
        if (ssrc is None or stream.ssrc == ssrc) and (direction is None or stream.direction == direction)
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
    for mid, stream in enumerate(chosen):
        lines += _media_lines(session, stream, mid)
    return "\r\n".join(lines) + "\r\n"


def render_answer(session: ParticipantSession) -> str:
    """Charter's SDP answer to the participant: BUNDLE on the daemon's one port, published
    tracks recvonly (Charter receives them), received tracks sendonly with the SSRCs Charter
    sends them with, and the key Charter protects with (the participant's receive key)."""
    host, port = session.media_address
    streams = _streams(session, RECV_ONLY, SEND_ONLY)
    lines = [
        "v=0",
        f"o=charter {_session_id(session)} 1 IN {_address_type(host)} {host}",
        f"s=charter {session.conference_id}",
        f"i=answer to participant {session.participant_id}",
        f"c=IN {_address_type(host)} {host}",
        "t=0 0",
        "a=tool:charter",
    ]
    if streams:
        lines.append("a=group:BUNDLE " + " ".join(str(mid) for mid in range(len(streams))))
    for mid, stream in enumerate(streams):
        lines += [
            f"m={stream.track.kind} {port} {PROFILE} {stream.track.payload_type}",
            f"a=mid:{mid}",
            *_codec_lines(stream),
            f"a={stream.direction}",
            "a=rtcp-mux",
        ]
        if stream.direction == SEND_ONLY:
            lines.append(f"a=ssrc:{stream.ssrc} cname:{stream.cname}")
        if stream.track.name:
            lines.append(f"a=label:{stream.track.name}")
        lines.append(f"a=crypto:1 {session.suite.value} inline:{session.receive_key}")
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


def from_participant(participant: controller_pb2.Participant) -> ParticipantSession:
    """The session of a `charter.v1.Participant` (from Join or GetParticipant)."""
    receive = None
    if participant.HasField("receive_address") and participant.receive_address.port:
        receive = (participant.receive_address.ip, participant.receive_address.port)
    return ParticipantSession(
        conference_id=participant.conference_id,
        participant_id=participant.participant_id,
        media_address=(participant.media_address.ip, participant.media_address.port),
        receive_address=receive,
        suite=SrtpSuite.from_number("suite", participant.suite),
        send_key=participant.send_key,
        receive_key=participant.receive_key,
        published=tuple(parse_track(f"tracks[{i}]", t) for i, t in enumerate(participant.tracks)),
        received=tuple(
            Subscription(s.publisher_id, parse_track(f"subscriptions[{i}].track", s.track), s.ssrc)
            for i, s in enumerate(participant.subscriptions)
        ),
    )
