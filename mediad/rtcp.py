"""RTCP packets of the slow path: parse and build (RFC 3550 sender and receiver reports,
RFC 4585 PLI and generic NACK, RFC 5104 FIR, REMB of draft-alvestrand-rmcat-remb); any
other packet is kept as raw bytes.

Parsers raise ValueError on bad bytes; `bytes(packet)` builds the wire form again, so
`b"".join(bytes(p) for p in parse_compound(data)) == data` for unpadded compounds.
"""
from __future__ import annotations

import dataclasses
import struct
import time

SR = 200
RR = 201
SDES = 202
BYE = 203
APP = 204
RTPFB = 205  # RFC 4585 6.2: transport-layer feedback
PSFB = 206  # RFC 4585 6.3: payload-specific feedback
FMT_NACK = 1  # RTPFB generic NACK
FMT_PLI = 1  # PSFB picture loss indication
FMT_FIR = 4  # PSFB full intra request (RFC 5104 4.3.1)
FMT_AFB = 15  # PSFB application layer feedback: REMB when its FCI starts with "REMB"
REMB_ID = b"REMB"

HEADER = struct.Struct("!BBH")
REPORT_BLOCK = struct.Struct("!IIIIII")
SR_INFO = struct.Struct("!IQIII")
FEEDBACK = struct.Struct("!II")
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01 (RFC 868)


# --------------------------------------------------------------------------------------
# NTP times (RFC 3550 4)


def ntp_now() -> int:
    """The wall clock as a 64-bit NTP timestamp."""
    return to_ntp(time.time())


def to_ntp(unix_seconds: float) -> int:
    return int((unix_seconds + NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: the LSR field of a report block, and the
    "NTP short format" (16.16 seconds) RTT is computed in (RFC 3550 6.4.1)."""
    return (ntp >> 16) & 0xFFFFFFFF


def short_to_seconds(value: int) -> float:
    return value / 65536.0


# --------------------------------------------------------------------------------------
# Packets


@dataclasses.dataclass(frozen=True)
class ReportBlock:
    """RFC 3550 6.4.1: what a receiver reports about one source."""

    ssrc: int
    fraction_lost: int = 0
    """Lost since the last report, as a fraction of 256."""
    packets_lost: int = 0
    """Cumulative, signed 24 bits (negative with duplicates)."""
    highest_seq: int = 0
    jitter: int = 0
    """Interarrival jitter in RTP timestamp units."""
    lsr: int = 0
    """Middle 32 bits of the NTP timestamp of the last SR received from the source; 0: none."""
    dlsr: int = 0
    """Delay since that SR, in 1/65536 s."""

    def __bytes__(self) -> bytes:
        if not 0 <= self.fraction_lost <= 255:
            raise ValueError(f"fraction_lost {self.fraction_lost} is not 0..255")
        if not -(1 << 23) <= self.packets_lost < 1 << 23:
            raise ValueError(f"packets_lost {self.packets_lost} does not fit 24 signed bits")
        lost = (self.fraction_lost << 24) | (self.packets_lost & 0xFFFFFF)
        return REPORT_BLOCK.pack(self.ssrc, lost, self.highest_seq, self.jitter, self.lsr, self.dlsr)

    @classmethod
    def parse(cls, data: bytes, offset: int) -> ReportBlock:
        ssrc, lost, highest, jitter, lsr, dlsr = REPORT_BLOCK.unpack_from(data, offset)
        cumulative = lost & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 1 << 24
        return cls(ssrc, lost >> 24, cumulative, highest, jitter, lsr, dlsr)


@dataclasses.dataclass(frozen=True)
class SenderReport:
    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""
    """Profile-specific extension after the report blocks (kept as is)."""

    def __bytes__(self) -> bytes:
        body = SR_INFO.pack(
            self.ssrc,
            self.ntp_timestamp & 0xFFFFFFFFFFFFFFFF,
            self.rtp_timestamp & 0xFFFFFFFF,
            self.packet_count & 0xFFFFFFFF,
            self.octet_count & 0xFFFFFFFF,
        )
        return _packet(len(self.reports), SR, body + b"".join(bytes(r) for r in self.reports) + self.extension)


@dataclasses.dataclass(frozen=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    def __bytes__(self) -> bytes:
        body = struct.pack("!I", self.ssrc) + b"".join(bytes(r) for r in self.reports) + self.extension
        return _packet(len(self.reports), RR, body)


@dataclasses.dataclass(frozen=True)
class PictureLossIndication:
    """RFC 4585 6.3.1: the receiver lost part of a picture; asks for a key frame."""

    sender_ssrc: int
    media_ssrc: int

    def __bytes__(self) -> bytes:
        return _packet(FMT_PLI, PSFB, FEEDBACK.pack(self.sender_ssrc, self.media_ssrc))


@dataclasses.dataclass(frozen=True)
class FullIntraRequest:
    """RFC 5104 4.3.1: a key frame request per media source, each with a sequence number."""

    sender_ssrc: int
    entries: tuple[tuple[int, int], ...]
    """(SSRC, command sequence number 0..255)."""

    def __bytes__(self) -> bytes:
        fci = b"".join(struct.pack("!IB3x", ssrc, seq & 0xFF) for ssrc, seq in self.entries)
        return _packet(FMT_FIR, PSFB, FEEDBACK.pack(self.sender_ssrc, 0) + fci)


@dataclasses.dataclass(frozen=True)
class GenericNack:
    """RFC 4585 6.2.1: sequence numbers the receiver misses."""

    sender_ssrc: int
    media_ssrc: int
    lost: tuple[int, ...]

    def __bytes__(self) -> bytes:
        fci = b""
        pending = sorted({s & 0xFFFF for s in self.lost})
        # One (PID, BLP) pair covers PID and the 16 sequence numbers after it.
        while pending:
            pid = pending.pop(0)
            blp = 0
            while pending and 0 < (pending[0] - pid) <= 16:
                blp |= 1 << (pending.pop(0) - pid - 1)
            fci += struct.pack("!HH", pid, blp)
        return _packet(FMT_NACK, RTPFB, FEEDBACK.pack(self.sender_ssrc, self.media_ssrc) + fci)


@dataclasses.dataclass(frozen=True)
class Remb:
    """Receiver estimated maximum bitrate (draft-alvestrand-rmcat-remb 2.2): how many bits
    per second the sender of `ssrcs` may send in all, as the receiver estimates it."""

    sender_ssrc: int
    bitrate: int
    ssrcs: tuple[int, ...]

    def __bytes__(self) -> bytes:
        if not 0 < len(self.ssrcs) <= 255:
            raise ValueError(f"a REMB names 1-255 SSRCs, not {len(self.ssrcs)}")
        # An 18-bit mantissa and a 6-bit exponent: the largest mantissa that fits, rounded down.
        exponent = max(0, self.bitrate.bit_length() - 18)
        if exponent > 63:
            raise ValueError(f"bitrate {self.bitrate} does not fit a REMB")
        mantissa = self.bitrate >> exponent
        fci = REMB_ID + struct.pack("!BBH", len(self.ssrcs), exponent << 2 | mantissa >> 16, mantissa & 0xFFFF)
        fci += b"".join(struct.pack("!I", ssrc) for ssrc in self.ssrcs)
        return _packet(FMT_AFB, PSFB, FEEDBACK.pack(self.sender_ssrc, 0) + fci)


@dataclasses.dataclass(frozen=True)
class OtherPacket:
    """Any other RTCP packet (SDES, BYE, APP, other feedback), kept as raw bytes."""

    packet_type: int
    count: int
    body: bytes

    def __bytes__(self) -> bytes:
        return _packet(self.count, self.packet_type, self.body)


RtcpPacket = (
    SenderReport | ReceiverReport | PictureLossIndication | FullIntraRequest | GenericNack | Remb | OtherPacket
)


def _packet(count: int, packet_type: int, body: bytes) -> bytes:
    if not 0 <= count <= 31:
        raise ValueError(f"{count} items do not fit an RTCP header (at most 31)")
    if len(body) % 4:
        raise ValueError(f"RTCP body of {len(body)} bytes is not a multiple of 4")
    return HEADER.pack(0x80 | count, packet_type, len(body) // 4) + body


# --------------------------------------------------------------------------------------
# Parsing


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Every packet of a (compound) RTCP datagram; ValueError if any is malformed."""
    if len(data) < HEADER.size:
        raise ValueError(f"RTCP datagram of {len(data)} bytes is shorter than a header")
    packets: list[RtcpPacket] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < HEADER.size:
            raise ValueError(f"{len(data) - offset} trailing bytes after packet {len(packets)}")
        first, packet_type, words = HEADER.unpack_from(data, offset)
        if first >> 6 != 2:
            raise ValueError(f"RTCP version {first >> 6} in packet {len(packets)}")
        end = offset + 4 + 4 * words
        if end > len(data):
            raise ValueError(f"packet {len(packets)} claims {4 + 4 * words} bytes, {len(data) - offset} are left")
        body = data[offset + 4 : end]
        if first & 0x20:
            # RFC 3550 6.4.1: only the last packet of a compound may be padded.
            if end != len(data) or not body or not 0 < body[-1] <= len(body):
                raise ValueError(f"bad padding in packet {len(packets)}")
            body = body[: -body[-1]]
        packets.append(parse_packet(first & 0x1F, packet_type, body))
        offset = end
    return packets


def parse_packet(count: int, packet_type: int, body: bytes) -> RtcpPacket:
    """One packet from its header fields and its body (without padding)."""
    if packet_type == SR:
        if len(body) < SR_INFO.size + REPORT_BLOCK.size * count:
            raise ValueError(f"sender report with {count} blocks in {len(body)} bytes")
        ssrc, ntp, rtp_ts, packets, octets = SR_INFO.unpack_from(body)
        reports = _blocks(body, SR_INFO.size, count)
        extension = body[SR_INFO.size + REPORT_BLOCK.size * count :]
        return SenderReport(ssrc, ntp, rtp_ts, packets, octets, reports, extension)
    if packet_type == RR:
        if len(body) < 4 + REPORT_BLOCK.size * count:
            raise ValueError(f"receiver report with {count} blocks in {len(body)} bytes")
        (ssrc,) = struct.unpack_from("!I", body)
        return ReceiverReport(ssrc, _blocks(body, 4, count), body[4 + REPORT_BLOCK.size * count :])
    if packet_type in (RTPFB, PSFB):
        if len(body) < FEEDBACK.size:
            raise ValueError(f"feedback packet of {len(body)} bytes has no SSRCs")
        sender, media = FEEDBACK.unpack_from(body)
        fci = body[FEEDBACK.size :]
        if packet_type == PSFB and count == FMT_PLI:
            if fci:
                raise ValueError(f"picture loss indication with {len(fci)} bytes of FCI (expects none)")
            return PictureLossIndication(sender, media)
        if packet_type == PSFB and count == FMT_FIR:
            if not fci or len(fci) % 8:
                raise ValueError(f"full intra request with {len(fci)} bytes of FCI (8 per entry)")
            entries = tuple((s, n) for s, n in (struct.unpack_from("!IB", fci, i) for i in range(0, len(fci), 8)))
            return FullIntraRequest(sender, entries)
        if packet_type == PSFB and count == FMT_AFB and fci[:4] == REMB_ID:
            if len(fci) < 8:
                raise ValueError(f"REMB with {len(fci)} bytes of FCI (at least 8)")
            number, exponent_and_high, low = struct.unpack_from("!BBH", fci, 4)
            if len(fci) != 8 + 4 * number:
                raise ValueError(f"REMB naming {number} SSRCs in {len(fci)} bytes of FCI")
            bitrate = ((exponent_and_high & 0x03) << 16 | low) << (exponent_and_high >> 2)
            return Remb(sender, bitrate, struct.unpack_from(f"!{number}I", fci, 8))
        if packet_type == RTPFB and count == FMT_NACK:
            if not fci or len(fci) % 4:
                raise ValueError(f"generic NACK with {len(fci)} bytes of FCI (4 per entry)")
            lost: list[int] = []
            for i in range(0, len(fci), 4):
                pid, blp = struct.unpack_from("!HH", fci, i)
                lost.append(pid)
                lost.extend((pid + bit + 1) & 0xFFFF for bit in range(16) if blp >> bit & 1)
            return GenericNack(sender, media, tuple(lost))
    return OtherPacket(packet_type, count, body)


def _blocks(body: bytes, offset: int, count: int) -> tuple[ReportBlock, ...]:
    return tuple(ReportBlock.parse(body, offset + i * REPORT_BLOCK.size) for i in range(count))
