"""A short fuzzing run over the parsers that read what strangers send or write (the long one
is bench/flood.py against a real daemon, 10 million datagrams): RTCP compounds and SDP
offers and answers, from random bytes and from mutations of real ones. Each either reads or
raises the one error its caller turns into a drop or an INVALID_ARGUMENT; nothing else
escapes. (The hot path, STUN and DTLS have theirs: test_forward_property, test_ice,
test_dtls.)"""
from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charter.errors import InvalidArgument
from charter.tracks import Track
from charter.webrtc_sdp import Route, check_answer, parse_offer
from mediad import rtcp

DATA = Path(__file__).with_name("data")
OFFERS = [(DATA / name).read_text() for name in ("chromium_offer.sdp", "aiortc_offer.sdp")]
REPORT = bytes(rtcp.ReceiverReport(1, (rtcp.ReportBlock(2, 3, 4, 5, 6, 7, 8),))) + bytes(
    rtcp.PictureLossIndication(1, 2)
)


def mutated(original: bytes) -> st.SearchStrategy[bytes]:
    """`original` with some bytes changed, cut short or grown."""
    return st.tuples(st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)), max_size=8),
                     st.integers(0, len(original)), st.binary(max_size=16)).map(
        lambda t: _apply(original, *t))


def _apply(original: bytes, changes: list[tuple[int, int]], cut: int, tail: bytes) -> bytes:
    data = bytearray(original)
    for index, value in changes:
        data[index] = value
    return bytes(data[:cut]) + tail


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=200), mutated(REPORT)))
def test_rtcp_reads_or_raises_value_error(data: bytes) -> None:
    try:
        packets = rtcp.parse_compound(data)
    except ValueError:
        return
    for packet in packets:
        bytes(packet)  # what was read can be written again


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(OFFERS).flatmap(lambda offer: mutated(offer.encode())))
def test_an_offer_reads_or_is_invalid_argument(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    try:
        offer = parse_offer(text)
    except InvalidArgument:
        return
    offer.tracks()  # what was read is usable


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(OFFERS).flatmap(lambda offer: mutated(offer.encode())))
def test_an_answer_checks_or_is_invalid_argument(data: bytes) -> None:
    offer = parse_offer(OFFERS[0])
    route = Route("r0", "x", Track(5, "video", "VP8", 96, 90000), 7, 96)
    try:
        check_answer(data.decode("utf-8", errors="replace"), offer, [route])
    except InvalidArgument:
        pass
