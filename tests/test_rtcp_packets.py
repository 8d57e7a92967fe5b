"""mediad.rtcp: RTCP packets parse, build and round-trip; malformed bytes raise ValueError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediad import rtcp
from mediad.rtcp import (
    FullIntraRequest,
    GenericNack,
    OtherPacket,
    PictureLossIndication,
    ReceiverReport,
    ReportBlock,
    SenderReport,
)

BLOCK = ReportBlock(
    ssrc=0xDEADBEEF, fraction_lost=64, packets_lost=-3, highest_seq=70000, jitter=123, lsr=0x12345678, dlsr=65536
)
SR = SenderReport(0x11111111, 0xE1234567_89ABCDEF, 987654, 100, 120000, (BLOCK,))


def roundtrip(packet: rtcp.RtcpPacket) -> rtcp.RtcpPacket:
    [parsed] = rtcp.parse_compound(bytes(packet))
    return parsed


@pytest.mark.parametrize(
    "packet",
    [
        SR,
        SenderReport(1, 0, 0, 0, 0),
        ReceiverReport(2, (BLOCK, ReportBlock(ssrc=7))),
        ReceiverReport(3),
        PictureLossIndication(4, 5),
        FullIntraRequest(6, ((7, 1), (8, 255))),
        GenericNack(9, 10, (100, 101, 116, 117)),
        rtcp.Remb(11, 2_000_000 >> 3 << 3, (12, 13)),
        OtherPacket(rtcp.SDES, 1, b"\x00\x00\x00\x01\x01\x03abc\x00\x00\x00"),
        OtherPacket(rtcp.BYE, 1, b"\x00\x00\x00\x01"),
    ],
)
def test_every_packet_round_trips(packet: rtcp.RtcpPacket) -> None:
    assert roundtrip(packet) == packet


def test_sender_report_wire_layout() -> None:
    data = bytes(SR)
    assert data[:4] == bytes([0x81, 200, 0, 12])  # one block, 13 words - 1
    assert struct.unpack_from("!IQIII", data, 4) == (0x11111111, 0xE1234567_89ABCDEF, 987654, 100, 120000)
    # The negative cumulative loss is 24-bit two's complement after the fraction.
    assert data[32:36] == bytes([64, 0xFF, 0xFF, 0xFD])


def test_pli_matches_rfc_4585_layout() -> None:
    assert bytes(PictureLossIndication(1, 42)) == struct.pack("!BBHII", 0x81, 206, 2, 1, 42)


def test_remb_matches_the_draft_layout() -> None:
    # draft-alvestrand-rmcat-remb 2.2: PSFB, FMT 15, media SSRC 0, "REMB", count, exponent and
    # 18-bit mantissa. 1,000,000 = 250,000 << 2 (250,000 needs 18 bits).
    data = bytes(rtcp.Remb(0xAABBCCDD, 1_000_000, (0x01020304,)))
    assert data[:4] == bytes([0x80 | 15, 206, 0, 5])
    assert data[8:12] == b"\x00\x00\x00\x00" and data[12:16] == b"REMB"
    assert data[16] == 1 and data[17] >> 2 == 2
    assert ((data[17] & 3) << 16 | int.from_bytes(data[18:20], "big")) << 2 == 1_000_000
    assert data[20:24] == bytes([1, 2, 3, 4])
    # Rounded down where the mantissa cannot hold every bit.
    (parsed,) = rtcp.parse_compound(bytes(rtcp.Remb(1, (1 << 30) + 1, (2,))))
    assert isinstance(parsed, rtcp.Remb) and parsed.bitrate == 1 << 30


def test_nack_packs_following_losses_into_the_bitmask() -> None:
    data = bytes(GenericNack(1, 2, (10, 11, 26, 27)))
    # PID 10 with bits for 11 (bit 0) and 26 (bit 15); 27 needs a second pair.
    assert data[12:] == struct.pack("!HHHH", 10, 0x8001, 27, 0)
    assert roundtrip(GenericNack(1, 2, (10, 11, 26, 27))) == GenericNack(1, 2, (10, 11, 26, 27))


def test_compound_sr_sdes_and_padding() -> None:
    sdes = OtherPacket(rtcp.SDES, 1, b"\x00\x00\x00\x01\x01\x02ab")
    compound = bytes(SR) + bytes(sdes)
    assert rtcp.parse_compound(compound) == [SR, sdes]
    # Padding on the last packet (RFC 3550 6.4.1): P bit, length counts the padding.
    padded = bytearray(bytes(PictureLossIndication(1, 2)) + b"\x00\x00\x00\x04")
    padded[0] |= 0x20
    padded[3] += 1
    assert rtcp.parse_compound(bytes(padded)) == [PictureLossIndication(1, 2)]


def test_ntp_middle_and_short_format() -> None:
    assert rtcp.ntp_middle(0xAAAA_BBBB_CCCC_DDDD) == 0xBBBBCCCC
    assert rtcp.short_to_seconds(0x00018000) == 1.5
    assert rtcp.to_ntp(0.0) >> 32 == rtcp.NTP_EPOCH_OFFSET


MALFORMED = [
    b"",
    b"\x81\xc8",  # shorter than a header
    b"\x41\xc9\x00\x01\x00\x00\x00\x01",  # version 1
    b"\x81\xc9\x00\x07\x00\x00\x00\x01",  # claims a block it does not carry (length past the end)
    b"\x81\xc9\x00\x01\x00\x00\x00\x01",  # RR with count 1 and no block
    b"\x80\xc8\x00\x02\x00\x00\x00\x01\x00\x00\x00\x00",  # SR shorter than its sender info
    b"\x81\xce\x00\x01\x00\x00\x00\x01",  # PLI without the media SSRC
    b"\x81\xce\x00\x03\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x00",  # PLI with FCI
    b"\x84\xce\x00\x02\x00\x00\x00\x01\x00\x00\x00\x00",  # FIR without entries
    b"\x81\xcd\x00\x02\x00\x00\x00\x01\x00\x00\x00\x02",  # NACK without entries
    b"\xa1\xce\x00\x02\x00\x00\x00\x01\x00\x00\x00\x00",  # padding count 0
    bytes(PictureLossIndication(1, 2)) + b"\x80",  # trailing byte
]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_bytes_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        rtcp.parse_compound(data)


def test_padding_only_on_the_last_packet() -> None:
    first = bytearray(bytes(PictureLossIndication(1, 2)) + b"\x00\x00\x00\x04")
    first[0] |= 0x20
    first[3] += 1
    with pytest.raises(ValueError):
        rtcp.parse_compound(bytes(first) + bytes(PictureLossIndication(3, 4)))


def test_building_rejects_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError):
        bytes(ReportBlock(1, packets_lost=1 << 23))
    with pytest.raises(ValueError):
        bytes(ReceiverReport(1, tuple(ReportBlock(i) for i in range(32))))


@given(st.binary(max_size=120))
def test_arbitrary_bytes_parse_or_raise_value_error(data: bytes) -> None:
    try:
        packets = rtcp.parse_compound(data)
    except ValueError:
        return
    assert packets


u32 = st.integers(0, 0xFFFFFFFF)
blocks = st.builds(ReportBlock, u32, st.integers(0, 255), st.integers(-(1 << 23), (1 << 23) - 1), u32, u32, u32, u32)


@given(u32, st.integers(0, (1 << 64) - 1), u32, u32, u32, st.lists(blocks, max_size=31))
def test_sender_reports_round_trip(
    ssrc: int, ntp: int, ts: int, packets: int, octets: int, reports: list[ReportBlock]
) -> None:
    report = SenderReport(ssrc, ntp, ts, packets, octets, tuple(reports))
    assert roundtrip(report) == report
