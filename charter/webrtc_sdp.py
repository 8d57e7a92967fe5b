"""SDP offer/answer for WebRTC participants (JSEP, RFC 8829; Unified Plan; BUNDLE on one
port, RFC 8843; rtcp-mux; ICE-lite; DTLS-SRTP, RFC 5763/8842), read and written with the
sdp-transform library.

A browser joins with its offer (`parse_offer`); Charter answers (`render_answer`) with one
codec per m-line it receives. Later Charter offers what the browser receives
(`render_offer`): the browser's own m-lines again, then one sendonly m-line per route with
its SSRC and msid "<publisher id> <track id>", and `check_answer` checks the browser's answer
to it. Charter is always the DTLS server (a=setup:passive; offers say actpass and Charter
stays passive).

Each route carries the receiver's own numbers: its payload type for the codec and, where it
offered RTX for that codec, an RTX stream (RFC 4588: a=ssrc-group:FID) that the daemon
answers NACKs on. The one header extension negotiated is the MID (RFC 8843), on the
browser's own m-lines; the daemon forwards to browsers without header extensions, so what
one browser sends another tells apart by the SSRCs signalled here."""
from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sdp_transform

from charter.endpoints import DtlsFingerprint, check_fingerprint, check_ice_credentials
from charter.errors import InvalidArgument
from charter.tracks import Track

VIDEO_CODECS = ("VP8", "H264")
"""Video codecs Charter forwards to browsers, in its order of preference."""
AUDIO_CODECS = ("opus",)
FEEDBACK = {"video": (("nack", None), ("nack", "pli"), ("ccm", "fir"), ("goog-remb", None)), "audio": ()}
MAX_SDP = 64 * 1024
MID_EXTENSION = "urn:ietf:params:rtp-hdrext:sdes:mid"
DYNAMIC_PAYLOAD_TYPES = range(96, 128)


@dataclass(frozen=True)
class Codec:
    name: str
    payload_type: int
    clock_rate: int
    channels: int = 0
    fmtp: str = ""


@dataclass(frozen=True)
class OfferedMedia:
    """One m-line of a browser's offer."""

    mid: str
    kind: str
    direction: str
    codecs: tuple[Codec, ...]
    ssrc: int = 0
    """The media SSRC the browser sends on it (0: it sends nothing)."""
    msid: str = ""
    extensions: tuple[tuple[int, str], ...] = ()
    """Its a=extmap lines: (id, URI)."""

    @property
    def sends(self) -> bool:
        return self.direction in ("sendonly", "sendrecv") and self.ssrc != 0

    def chosen(self) -> Codec | None:
        """The codec Charter takes: its first preference among those offered."""
        for name in VIDEO_CODECS if self.kind == "video" else AUDIO_CODECS:
            for codec in self.codecs:
                if codec.name.lower() == name.lower() and _usable(codec):
                    return codec
        return None


@dataclass(frozen=True)
class BrowserOffer:
    ice_ufrag: str
    ice_pwd: str
    fingerprints: tuple[DtlsFingerprint, ...]
    media: tuple[OfferedMedia, ...]
    sdp: str = ""
    """The offer as the browser wrote it (what a durable store keeps, to read it again)."""

    def tracks(self, name: str = "") -> tuple[Track, ...]:
        """The tracks the browser publishes: one per m-line it sends on."""
        found = []
        for media in self.media:
            codec = media.chosen()
            if media.sends and codec is not None:
                track_name = media.msid.split()[-1] if media.msid else f"mid {media.mid}"
                found.append(Track(media.ssrc, media.kind, codec.name, codec.payload_type, codec.clock_rate,
                                   codec.channels, name=track_name[:256]))
        return tuple(found)

    def codec_for(self, kind: str, name: str) -> Codec | None:
        """The browser's own description of a codec (its payload type and fmtp), if it offered it."""
        for media in self.media:
            if media.kind == kind:
                for codec in media.codecs:
                    if codec.name.lower() == name.lower() and _usable(codec):
                        return codec
        return None

    def rtx_for(self, payload_type: int) -> int:
        """The payload type of the RTX (RFC 4588) it offered to repair `payload_type`; 0: none."""
        for media in self.media:
            for codec in media.codecs:
                if codec.name.lower() == "rtx" and codec.fmtp.replace(" ", "") == f"apt={payload_type}":
                    return codec.payload_type
        return 0

    def receiving(self, track: Track) -> tuple[int, int]:
        """How this browser receives `track`: (payload type, RTX payload type or 0). Its own
        numbers for the codec where it offered it, so that one payload type means one codec
        across the BUNDLE group (RFC 8843 7.5); else a dynamic one it does not use."""
        own = self.codec_for(track.kind, track.codec)
        if own is not None:
            return own.payload_type, self.rtx_for(own.payload_type)
        used = {codec.payload_type for media in self.media for codec in media.codecs}
        if track.payload_type not in used:
            return track.payload_type, 0
        return next((p for p in DYNAMIC_PAYLOAD_TYPES if p not in used), track.payload_type), 0

    @property
    def mid_extension(self) -> int:
        """The id it gave the MID header extension (RFC 8843 15.2); 0: it offered none."""
        for media in self.media:
            for ext_id, uri in media.extensions:
                if uri == MID_EXTENSION:
                    return ext_id
        return 0


@dataclass(frozen=True)
class Route:
    """A sendonly m-line of Charter's offers: one track of another participant."""

    mid: str
    publisher_id: str
    track: Track
    ssrc: int
    """The SSRC the receiver gets it with."""
    payload_type: int
    """The receiver's payload type for the codec."""
    rtx_ssrc: int = 0
    """The RTX stream repairing it (0: none)."""
    rtx_payload_type: int = 0
    active: bool = True
    """False: the route is gone (the m-line stays, inactive, as JSEP requires)."""


@dataclass(frozen=True)
class Transport:
    """Charter's side of the browser's one transport."""

    ice_ufrag: str
    ice_pwd: str
    fingerprint: DtlsFingerprint
    address: tuple[str, int]


def new_ice_credentials() -> tuple[str, str]:
    """A ufrag and password (RFC 8839: at least 24 and 128 bits of randomness)."""
    return secrets.token_urlsafe(6).replace("-", "+").replace("_", "/"), \
        secrets.token_urlsafe(18).replace("-", "+").replace("_", "/")


def _usable(codec: Codec) -> bool:
    if codec.name.lower() == "h264":
        # Charter forwards H.264 as browsers send it: FU-A, packetization-mode=1.
        return "packetization-mode=1" in codec.fmtp.replace(" ", "")
    return True


def _parse(text: str, field: str) -> dict[str, Any]:
    if len(text) > MAX_SDP:
        raise InvalidArgument(field, f"is {len(text)} bytes long; at most {MAX_SDP}")
    if not text.startswith("v=0"):
        raise InvalidArgument(field, "is not SDP: it must start with v=0")
    try:
        parsed = sdp_transform.parse(text)
    except Exception as error:  # noqa: BLE001 - the library raises what its regexes raise
        raise InvalidArgument(field, f"is not SDP that can be read: {error}") from None
    if not parsed.get("media"):
        raise InvalidArgument(field, "has no m-line (no media)")
    return dict(parsed)


def _attribute(session: dict[str, Any], media: dict[str, Any], name: str) -> Any:
    return media.get(name, session.get(name))


def _codecs(media: dict[str, Any]) -> tuple[Codec, ...]:
    fmtp = {int(f["payload"]): str(f["config"]) for f in media.get("fmtp", [])}
    codecs = []
    for rtp in media.get("rtp", []):
        payload = int(rtp["payload"])
        codecs.append(Codec(str(rtp["codec"]), payload, int(rtp.get("rate") or 0),
                            int(rtp.get("encoding") or 0), fmtp.get(payload, "")))
    return tuple(codecs)


def _media_ssrc(media: dict[str, Any]) -> int:
    """The first SSRC of the m-line that is not the RTX one of an FID group."""
    repairs: set[int] = set()
    for group in media.get("ssrcGroups", []):
        if group.get("semantics") == "FID":
            repairs.update(int(s) for s in str(group["ssrcs"]).split()[1:])
    for line in media.get("ssrcs", []):
        ssrc = int(line["id"])
        if ssrc not in repairs:
            return ssrc
    return 0


def parse_offer(text: str, field: str = "offer") -> BrowserOffer:
    """A browser's offer, or InvalidArgument naming what is missing and where."""
    parsed = _parse(text, field)
    bundled = [str(m) for g in parsed.get("groups", []) if g.get("type") == "BUNDLE" for m in str(g["mids"]).split()]
    first = parsed["media"][0]
    ufrag = _attribute(parsed, first, "iceUfrag")
    pwd = _attribute(parsed, first, "icePwd")
    fingerprint = _attribute(parsed, first, "fingerprint")
    if not ufrag or not pwd:
        raise InvalidArgument(field, "has no a=ice-ufrag and a=ice-pwd: Charter needs ICE (RFC 8839)")
    check_ice_credentials(f"{field}.ice", str(ufrag), str(pwd))
    if not fingerprint:
        raise InvalidArgument(field, "has no a=fingerprint: Charter needs DTLS-SRTP (RFC 5763)")
    fingerprints = (check_fingerprint(f"{field}.fingerprint", str(fingerprint["type"]), str(fingerprint["hash"])),)
    media_list = []
    for index, media in enumerate(parsed["media"]):
        if "mid" not in media:
            raise InvalidArgument(field, f"m-line {index} has no a=mid (Unified Plan needs one per m-line)")
        mid = str(media["mid"])
        kind = str(media.get("type"))
        if kind not in ("audio", "video"):
            raise InvalidArgument(field, f"m-line {index} (mid {mid}) is {kind!r}; Charter carries audio and video")
        if not str(media.get("protocol", "")).startswith("UDP/TLS/RTP/SAVP"):
            raise InvalidArgument(field, f"m-line {index} (mid {mid}) is not UDP/TLS/RTP/SAVPF (DTLS-SRTP)")
        if mid not in bundled:
            raise InvalidArgument(field, f"m-line {index} (mid {mid}) is not in an a=group:BUNDLE: Charter takes "
                                  "every m-line on one port")
        if "rtcpMux" not in media:
            raise InvalidArgument(field, f"m-line {index} (mid {mid}) has no a=rtcp-mux")
        extensions = tuple((int(e["value"]), str(e["uri"])) for e in media.get("ext", []))
        offered = OfferedMedia(mid, kind, str(media.get("direction", "sendrecv")), _codecs(media),
                               _media_ssrc(media), str(media.get("msid", "")), extensions)
        if offered.direction in ("sendonly", "sendrecv") and media.get("port") != 0:
            if offered.ssrc == 0:
                raise InvalidArgument(field, f"m-line {index} (mid {mid}) sends but has no a=ssrc: Charter "
                                      "routes what browsers send by SSRC")
            if offered.chosen() is None:
                names = " or ".join(VIDEO_CODECS if kind == "video" else AUDIO_CODECS)
                raise InvalidArgument(field, f"m-line {index} (mid {mid}) offers no codec Charter forwards "
                                      f"({names}{' with packetization-mode=1' if kind == 'video' else ''})")
        media_list.append(offered)
    ssrcs = [m.ssrc for m in media_list if m.sends]
    if len(set(ssrcs)) != len(ssrcs):
        raise InvalidArgument(field, "sends two m-lines with the same SSRC")
    return BrowserOffer(str(ufrag), str(pwd), fingerprints, tuple(media_list), text)


# --- writing ---------------------------------------------------------------------------


def _session(version: int, mids: Sequence[str]) -> dict[str, Any]:
    return {
        "version": 0,
        "origin": {"username": "charter", "sessionId": 1, "sessionVersion": version, "netType": "IN",
                   "ipVer": 4, "address": "127.0.0.1"},
        "name": "-",
        "timing": {"start": 0, "stop": 0},
        "icelite": "ice-lite",
        "groups": [{"type": "BUNDLE", "mids": " ".join(mids)}],
        "msidSemantic": {"semantic": "WMS", "token": "*"},
        "media": [],
    }


def _transport_lines(transport: Transport, setup: str) -> dict[str, Any]:
    ip, port = transport.address
    return {
        "connection": {"version": 4, "ip": ip},
        "iceUfrag": transport.ice_ufrag,
        "icePwd": transport.ice_pwd,
        "fingerprint": {"type": transport.fingerprint.algorithm, "hash": transport.fingerprint.value},
        "setup": setup,
        "candidates": [{"foundation": "1", "component": 1, "protocol": "udp", "priority": 2130706431,
                        "ip": ip, "port": port, "type": "host"}],
        "endOfCandidates": "end-of-candidates",
        "rtcpMux": "rtcp-mux",
        "rtcpRsize": "rtcp-rsize",
        "port": port,
        "protocol": "UDP/TLS/RTP/SAVPF",
    }


def _codec_lines(kind: str, codec: Codec | None, rtx_payload_type: int = 0) -> dict[str, Any]:
    if codec is None:
        return {"payloads": "0", "rtp": [], "fmtp": [], "rtcpFb": []}
    rtp: list[dict[str, Any]] = [{"payload": codec.payload_type, "codec": codec.name, "rate": codec.clock_rate}]
    if codec.channels:
        rtp[0]["encoding"] = codec.channels
    fmtp = [{"payload": codec.payload_type, "config": codec.fmtp}] if codec.fmtp else []
    payloads = [codec.payload_type]
    if rtx_payload_type:
        payloads.append(rtx_payload_type)
        rtp.append({"payload": rtx_payload_type, "codec": "rtx", "rate": codec.clock_rate})
        fmtp.append({"payload": rtx_payload_type, "config": f"apt={codec.payload_type}"})
    feedback = [{"payload": codec.payload_type, "type": t, **({"subtype": s} if s else {})} for t, s in FEEDBACK[kind]]
    return {"payloads": " ".join(map(str, payloads)), "rtp": rtp, "fmtp": fmtp, "rtcpFb": feedback}


def _extension_lines(offer: BrowserOffer) -> dict[str, Any]:
    """The MID extension with the browser's id for it (the same on every m-line of the bundle)."""
    ext_id = offer.mid_extension
    return {"ext": [{"value": ext_id, "uri": MID_EXTENSION}]} if ext_id else {}


def _own_mline(offer: BrowserOffer, media: OfferedMedia, transport: Transport, setup: str) -> dict[str, Any]:
    """One of the browser's own m-lines: Charter receives on it what the browser sends."""
    codec = media.chosen()
    line = {"type": media.kind, "mid": media.mid, **_transport_lines(transport, setup),
            **_codec_lines(media.kind, codec), **_extension_lines(offer)}
    line["direction"] = "recvonly" if media.sends and codec is not None else "inactive"
    if codec is None:
        line["port"] = 0  # rejected (RFC 8843: a bundled m-line with port 0 is removed)
    return line


def render_answer(offer: BrowserOffer, transport: Transport) -> str:
    """Charter's answer to a browser's offer: it receives every m-line the browser sends on."""
    session = _session(1, [m.mid for m in offer.media if m.chosen() is not None or not m.sends])
    for media in offer.media:
        session["media"].append(_own_mline(offer, media, transport, "passive"))
    return str(sdp_transform.write(session))


def route_codec(route: Route, receiver: BrowserOffer) -> Codec:
    """The codec of a route as the receiver gets it: its own payload type, with its own fmtp
    for it when it offered the codec (H.264 profile and mode)."""
    track = route.track
    own = receiver.codec_for(track.kind, track.codec)
    return Codec(track.codec, route.payload_type, track.clock_rate, track.channels, own.fmtp if own else "")


def render_offer(offer: BrowserOffer, routes: Sequence[Route], transport: Transport, version: int) -> str:
    """Charter's offer to a browser: its own m-lines, then one per route (inactive once gone)."""
    session = _session(version, [m.mid for m in offer.media] + [r.mid for r in routes])
    for media in offer.media:
        session["media"].append(_own_mline(offer, media, transport, "actpass"))
    for route in routes:
        codec = route_codec(route, offer)
        line = {"type": route.track.kind, "mid": route.mid, **_transport_lines(transport, "actpass"),
                **_codec_lines(route.track.kind, codec, route.rtx_payload_type), **_extension_lines(offer)}
        if route.active:
            line["direction"] = "sendonly"
            msid = f"{route.publisher_id} {route.track.name or route.track.ssrc}"
            line["msid"] = msid
            ssrcs = [route.ssrc, route.rtx_ssrc] if route.rtx_ssrc else [route.ssrc]
            line["ssrcs"] = [{"id": ssrc, "attribute": attribute, "value": value}
                             for ssrc in ssrcs for attribute, value in (("cname", route.publisher_id), ("msid", msid))]
            if route.rtx_ssrc:
                line["ssrcGroups"] = [{"semantics": "FID", "ssrcs": f"{route.ssrc} {route.rtx_ssrc}"}]
        else:
            line["direction"] = "inactive"
        session["media"].append(line)
    return str(sdp_transform.write(session))


def check_answer(text: str, offer: BrowserOffer, routes: Sequence[Route], field: str = "sdp") -> None:
    """InvalidArgument unless `text` answers the offer render_offer made of these routes."""
    parsed = _parse(text, field)
    expected = [m.mid for m in offer.media] + [r.mid for r in routes]
    mids = [str(m.get("mid", "")) for m in parsed["media"]]
    if mids != expected:
        raise InvalidArgument(field, f"answers m-lines {mids}; the offer has {expected} (same mids, same order)")
    first = parsed["media"][0]
    if not _attribute(parsed, first, "iceUfrag") or not _attribute(parsed, first, "fingerprint"):
        raise InvalidArgument(field, "has no a=ice-ufrag or no a=fingerprint")
    setup = _attribute(parsed, first, "setup")
    if setup not in ("active", None):
        raise InvalidArgument(field, f"says a=setup:{setup}; Charter is the DTLS server, the browser must be active")
    for media, route in zip(parsed["media"][len(offer.media):], routes, strict=True):
        direction = str(media.get("direction", "sendrecv"))
        if route.active and media.get("port") != 0 and direction not in ("recvonly", "inactive"):
            raise InvalidArgument(field, f"m-line mid {route.mid} is {direction}; it answers a sendonly m-line")
        codec = route.payload_type
        payloads = [int(p) for p in str(media.get("payloads", "")).split() if p.isdigit()]
        if route.active and media.get("port") != 0 and payloads and codec not in payloads:
            raise InvalidArgument(field, f"m-line mid {route.mid} answers payload types {payloads}; "
                                  f"the offer has {codec}")
