"""RTP packet building and parsing (RFC 3550, RFC 8285) and SRTP sessions for tests.

The sessions here are built directly from pylibsrtp's Policy, independently of
mediad.srtp, so that a test decrypts with nothing the forwarder shares.
"""
from __future__ import annotations

import dataclasses
import struct

import pylibsrtp
from pylibsrtp._binding import ffi

SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32", "AEAD_AES_128_GCM")

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}
# Bytes an SRTP packet carries after its RTP payload (RFC 3711 section 4.2, RFC 7714 section 8).
TAG_LENGTHS = {
    "AES_CM_128_HMAC_SHA1_80": 10,
    "AES_CM_128_HMAC_SHA1_32": 4,
    "AEAD_AES_128_GCM": 16,
}
# SRTCP always carries a 4-byte E flag + index before the tag; AES-CM suites use an 80-bit
# tag on SRTCP even for the _32 profile (RFC 5764 section 4.1.2).
SRTCP_TRAILER_LENGTHS = {
    "AES_CM_128_HMAC_SHA1_80": 4 + 10,
    "AES_CM_128_HMAC_SHA1_32": 4 + 10,
    "AEAD_AES_128_GCM": 4 + 16,
}

RTP_HEADER_LENGTH = 12
ONE_BYTE_PROFILE = 0xBEDE  # RFC 8285 section 4.2
# Large enough for the 2048-byte datagrams the forwarder accepts plus a trailer;
# pylibsrtp's own working buffer is 1500 bytes.
SESSION_BUFFER = 4096


@dataclasses.dataclass(frozen=True)
class RtpPacket:
    """A parsed RTP packet; `payload` excludes padding."""

    seq: int
    timestamp: int
    ssrc: int
    payload_type: int = 96
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension: bytes = b""
    payload: bytes = b""
    padding: int = 0


def one_byte_extension(elements: list[tuple[int, bytes]]) -> bytes:
    """The body of a one-byte header extension (RFC 8285 section 4.2), padded to 32 bits."""
    body = b""
    for ident, data in elements:
        if not 1 <= ident <= 14 or not 1 <= len(data) <= 16:
            raise ValueError(f"bad one-byte extension element id={ident} len={len(data)}")
        body += bytes([(ident << 4) | (len(data) - 1)]) + data
    return body + b"\x00" * (-len(body) % 4)


VP8_KEY_FRAME_START = b"\x10\x00"
"""A payload start that reads as the first packet of a VP8 key frame (RFC 7741: descriptor
S=1 PID=0, payload header P=0): a video route that waits for a key frame takes the packet.
The tests' made-up video payloads begin with it."""


def build_rtp(
    seq: int,
    timestamp: int,
    ssrc: int,
    payload: bytes = b"",
    *,
    payload_type: int = 96,
    marker: bool = False,
    csrcs: tuple[int, ...] | list[int] = (),
    extension: bytes | None = None,
    extension_profile: int = ONE_BYTE_PROFILE,
    padding: int = 0,
) -> bytes:
    """Serialize an RTP packet. `extension` is the extension body (a multiple of 4 bytes);
    `padding` adds that many padding bytes (RFC 3550 section 5.1), the last one the count."""
    if len(csrcs) > 15:
        raise ValueError("at most 15 CSRCs")
    if extension is not None and len(extension) % 4:
        raise ValueError("extension body must be a multiple of 4 bytes")
    if not 0 <= padding <= 255:
        raise ValueError("padding must be 0..255")
    first = 0x80 | (0x20 if padding else 0) | (0x10 if extension is not None else 0) | len(csrcs)
    second = (0x80 if marker else 0) | (payload_type & 0x7F)
    out = struct.pack("!BBHII", first, second, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc & 0xFFFFFFFF)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if extension is not None:
        out += struct.pack("!HH", extension_profile, len(extension) // 4) + extension
    out += payload
    if padding:
        out += b"\x00" * (padding - 1) + bytes([padding])
    return out


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse an RTP packet; ValueError if its header is inconsistent."""
    if len(data) < RTP_HEADER_LENGTH:
        raise ValueError(f"RTP packet of {len(data)} bytes is shorter than its fixed header")
    first, second, seq, timestamp, ssrc = struct.unpack_from("!BBHII", data)
    if first >> 6 != 2:
        raise ValueError(f"RTP version {first >> 6}")
    count = first & 0x0F
    offset = RTP_HEADER_LENGTH + 4 * count
    if offset > len(data):
        raise ValueError("CSRC list runs past the end")
    csrcs = struct.unpack_from(f"!{count}I", data, RTP_HEADER_LENGTH)
    profile = None
    extension = b""
    if first & 0x10:
        if offset + 4 > len(data):
            raise ValueError("extension header runs past the end")
        profile, words = struct.unpack_from("!HH", data, offset)
        offset += 4
        if offset + 4 * words > len(data):
            raise ValueError("extension runs past the end")
        extension = data[offset : offset + 4 * words]
        offset += 4 * words
    end = len(data)
    padding = 0
    if first & 0x20:
        padding = data[-1]
        if padding == 0 or end - padding < offset:
            raise ValueError("bad padding")
        end -= padding
    return RtpPacket(
        seq=seq,
        timestamp=timestamp,
        ssrc=ssrc,
        payload_type=second & 0x7F,
        marker=bool(second & 0x80),
        csrcs=tuple(csrcs),
        extension_profile=profile,
        extension=extension,
        payload=data[offset:end],
        padding=padding,
    )


def header_fields(data: bytes) -> tuple[int, int, int]:
    """(seq, timestamp, ssrc) of an RTP packet, without validating the rest."""
    _, _, seq, timestamp, ssrc = struct.unpack_from("!BBHII", data)
    return seq, timestamp, ssrc


def _enlarge(session: pylibsrtp.Session) -> pylibsrtp.Session:
    # pylibsrtp copies every packet through one 1500-byte buffer; give it room for the
    # largest datagram the forwarder accepts.
    session._cdata = ffi.new("char[]", SESSION_BUFFER)
    session._buffer = ffi.buffer(session._cdata)
    return session


def sender_session(suite: str, key: bytes) -> pylibsrtp.Session:
    """An outbound SRTP session protecting any SSRC with `key` (master key + salt)."""
    policy = pylibsrtp.Policy(
        key=bytes(key), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=PROFILES[suite]
    )
    # Tests re-protect packets with an already used sequence number (replay cases).
    policy.allow_repeat_tx = True
    return _enlarge(pylibsrtp.Session(policy))


def receiver_session(suite: str, key: bytes, window_size: int = 1024) -> pylibsrtp.Session:
    """An inbound SRTP session accepting any SSRC protected with `key`."""
    policy = pylibsrtp.Policy(
        key=bytes(key), ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=PROFILES[suite]
    )
    policy.window_size = window_size
    return _enlarge(pylibsrtp.Session(policy))


def authenticates(suite: str, key: bytes, datagram: bytes) -> bool:
    """True if `datagram` is an SRTP packet protected with `key` (checked with a fresh session)."""
    try:
        receiver_session(suite, key).unprotect(datagram)
    except pylibsrtp.Error:
        return False
    return True


def build_rtcp_receiver_report(ssrc: int) -> bytes:
    """An RTCP RR without report blocks (RFC 3550 section 6.4.2)."""
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def seq_diff(a: int, b: int) -> int:
    """a - b as a signed 16-bit difference."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


def ts_diff(a: int, b: int) -> int:
    """a - b as a signed 32-bit difference."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d >= 0x80000000 else d
