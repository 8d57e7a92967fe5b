"""Options of a route for a receiver with numbers of its own (a browser): its payload type,
no header extensions, RFC 4588 retransmissions on an RTX stream, forwarding from a key frame
on. End to end through real sockets, and key-frame recognition of VP8, VP9 and H.264 from a
table, against the reference model (tests/reference_forwarder.py)."""
from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_forwarder as ref
from forward_harness import Harness, Participant
from mediad._forward import Subscription, Track, is_key_frame
from rtp import build_rtp, one_byte_extension, parse_rtp, receiver_session

TRACK_SSRC = 0x7000
TWO_BYTE_PROFILE = 0x1000  # RFC 8285 4.3: 0x100 and 4 bits for the application


def two_byte_extension(elements: list[tuple[int, bytes]]) -> bytes:
    """The body of a two-byte header extension (RFC 8285 4.3), padded to 32 bits."""
    body = b"".join(bytes([ident, len(data)]) + data for ident, data in elements)
    return body + b"\x00" * (-len(body) % 4)


def arrived(participant: Participant) -> Callable[[], bool]:
    """True once the participant's peer has every packet its endpoint sent."""
    return lambda: len(participant.peer.received) == participant.endpoint.counters.packets_out


def forward(harness: Harness, publisher: Participant, packets: list[bytes], *receivers: Participant) -> None:
    """Send plaintext packets from the publisher; wait until its endpoint processed them and
    the receivers have everything their endpoints sent."""
    harness.deliver(publisher.peer, [publisher.peer.protect(p) for p in packets], publisher.endpoint)
    for receiver in receivers:
        harness.wait(arrived(receiver), f"what {receiver.endpoint.name} was sent")


def retransmitted(harness: Harness, viewer: Participant, subscription: Subscription, sequences: list[int]) -> None:
    for sequence in sequences:
        assert subscription.retransmit(sequence), sequence
    harness.wait(arrived(viewer), "the retransmissions")


def decrypt_as_if_lost(viewer: Participant, datagram: bytes) -> bytes:
    """A retransmission that repeats a sequence number, as a receiver that lost it decrypts it."""
    return receiver_session(viewer.tx_suite, viewer.tx_key).unprotect(datagram)


def setup(harness: Harness, *, codec: str = "VP8", cache_packets: int = 16) -> tuple[Participant, Track]:
    publisher = harness.participant(name="publisher")
    return publisher, publisher.endpoint.add_track(TRACK_SSRC, codec=codec, cache_packets=cache_packets)


# --- options as given ----------------------------------------------------------------------


def test_options_are_checked_and_read_back(harness: Harness) -> None:
    publisher, track = setup(harness)
    viewer = harness.participant(name="viewer")
    refused: list[dict[str, Any]] = [
        {"payload_type": 128},
        {"payload_type": -1},
        {"payload_type": True},
        {"rtx_payload_type": 200},
        {"rtx_ssrc": 0x51, "rtx_payload_type": 97},  # the route's own SSRC
        {"rtx_ssrc": 1 << 32},
    ]
    for options in refused:
        with pytest.raises(ValueError):
            track.subscribe(viewer.endpoint, 0x51, **options)
    assert viewer.endpoint.subscriptions == []

    sub = track.subscribe(
        viewer.endpoint, 0x51, payload_type=0, strip_extensions=True, rtx_ssrc=0x52, rtx_payload_type=97,
        wait_for_key_frame=True,
    )
    assert (sub.payload_type, sub.strip_extensions, sub.rtx_ssrc, sub.rtx_payload_type) == (0, True, 0x52, 97)
    assert sub.wait_for_key_frame and sub.waiting_for_key_frame
    assert track.codec == "VP8"
    # The RTX SSRC is taken at the receiver like a route's own.
    other = publisher.endpoint.add_track(TRACK_SSRC + 1)
    with pytest.raises(ValueError, match="already sends SSRC 82"):
        other.subscribe(viewer.endpoint, 0x52)
    with pytest.raises(ValueError, match="already sends SSRC 81"):
        other.subscribe(viewer.endpoint, 0x53, rtx_ssrc=0x51, rtx_payload_type=97)
    plain = other.subscribe(viewer.endpoint, 0x53)
    assert (plain.payload_type, plain.strip_extensions, plain.rtx_ssrc, plain.rtx_payload_type) == (None, False, 0, 0)
    assert not plain.wait_for_key_frame and not plain.waiting_for_key_frame
    assert (plain.dropped_waiting_key_frame, plain.rtx_sent) == (0, 0)
    assert other.codec == ""


# --- payload type -------------------------------------------------------------------------


def test_payload_type_is_rewritten_with_the_marker_bit_kept(harness: Harness) -> None:
    publisher, track = setup(harness)
    browser, other = harness.participant(name="browser"), harness.participant(name="other")
    sub = track.subscribe(browser.endpoint, 0xB, payload_type=111)
    track.subscribe(other.endpoint, 0xC)
    packets = [build_rtp(10 + i, 3000 * i, TRACK_SSRC, b"frame %d" % i, marker=i % 2 == 1) for i in range(4)]
    forward(harness, publisher, packets, browser, other)

    got = [parse_rtp(p) for p in browser.peer.plain]
    assert [(p.payload_type, p.marker) for p in got] == [(111, False), (111, True)] * 2
    assert [p.payload for p in got] == [parse_rtp(p).payload for p in packets]
    # Another route of the track keeps the publisher's.
    assert [(p.payload_type, p.marker) for p in map(parse_rtp, other.peer.plain)] == [(96, False), (96, True)] * 2

    # A retransmission carries it too.
    original = browser.peer.plain[1]
    retransmitted(harness, browser, sub, [got[1].seq])
    assert decrypt_as_if_lost(browser, browser.peer.received[-1].datagram) == original


# --- header extensions ---------------------------------------------------------------------

STRIP_CASES: dict[str, dict[str, Any]] = {
    "one-byte": {"extension": one_byte_extension([(1, b"\x01"), (3, b"abcd")])},
    "two-byte": {"extension": two_byte_extension([(1, b""), (17, b"x" * 20)]), "extension_profile": TWO_BYTE_PROFILE},
    "one-byte with CSRCs": {"extension": one_byte_extension([(5, b"mid0")]), "csrcs": [1, 2, 3]},
    "one-byte with padding": {"extension": one_byte_extension([(5, b"mid0")]), "padding": 7},
    "two-byte, CSRCs, padding, marker": {
        "extension": two_byte_extension([(200, b"y" * 9)]), "extension_profile": TWO_BYTE_PROFILE,
        "csrcs": [0xDEADBEEF], "padding": 3, "marker": True,
    },
    "no extension": {"csrcs": [4], "padding": 2},
}


@pytest.mark.parametrize("case", list(STRIP_CASES))
def test_header_extensions_are_stripped(harness: Harness, case: str) -> None:
    options = STRIP_CASES[case]
    publisher, track = setup(harness)
    browser, other = harness.participant(name="browser"), harness.participant(name="other")
    sub = track.subscribe(browser.endpoint, 0xB, strip_extensions=True)
    track.subscribe(other.endpoint, 0xC)
    packets = [build_rtp(50 + i, 3000 * i, TRACK_SSRC, b"payload %d" % i, **options) for i in range(3)]
    forward(harness, publisher, packets, browser, other)

    for sent, got, kept in zip(packets, browser.peer.plain, other.peer.plain, strict=True):
        without = {k: v for k, v in options.items() if k not in ("extension", "extension_profile")}
        seq, timestamp, ssrc = struct.unpack_from("!HII", got, 2)
        expected = build_rtp(seq, timestamp, ssrc, parse_rtp(sent).payload, **without)
        assert got == expected  # X clear, the block gone, CSRCs, payload and padding kept
        assert kept[12:] == sent[12:]  # another route sends it as it came
    # Retransmissions are stripped alike.
    original = browser.peer.plain[1]
    retransmitted(harness, browser, sub, [parse_rtp(original).seq])
    assert decrypt_as_if_lost(browser, browser.peer.received[-1].datagram) == original


@pytest.mark.parametrize("excess", ["one word", "65535 words"])
def test_an_extension_longer_than_the_packet_is_dropped_and_counted(harness: Harness, excess: str) -> None:
    publisher, track = setup(harness)
    browser = harness.participant(name="browser")
    sub = track.subscribe(browser.endpoint, 0xB, strip_extensions=True, payload_type=100)
    packet = build_rtp(2, 3000, TRACK_SSRC, b"x" * 40, csrcs=[7, 8], extension=one_byte_extension([(1, b"ab")]))
    malformed = bytearray(publisher.peer.protect(packet))
    at = 12 + 8 + 2  # the extension's length in words, after the CSRCs (RFC 3550 5.3.1)
    end = len(malformed) - 10  # the AES_CM_128_HMAC_SHA1_80 tag
    words = (end - (at + 2)) // 4 + 1 if excess == "one word" else 0xFFFF
    struct.pack_into("!H", malformed, at, words)

    forward(harness, publisher, [build_rtp(1, 0, TRACK_SSRC, b"before")], browser)
    harness.deliver(publisher.peer, [bytes(malformed)], publisher.endpoint)
    forward(harness, publisher, [build_rtp(3, 6000, TRACK_SSRC, b"after")], browser)

    assert publisher.endpoint.counters.dropped("malformed") == 1
    assert [parse_rtp(p).payload for p in browser.peer.plain] == [b"before", b"after"]
    assert (sub.packets, sub.send_errors) == (2, 0)


# --- RFC 4588 retransmissions ---------------------------------------------------------------


@pytest.mark.parametrize("strip", [False, True], ids=["extensions kept", "extensions stripped"])
def test_retransmissions_go_on_the_rtx_stream(harness: Harness, strip: bool) -> None:
    publisher, track = setup(harness)
    viewer = harness.participant(name="viewer")
    sub = track.subscribe(
        viewer.endpoint, 0x5150, payload_type=100, strip_extensions=strip, rtx_ssrc=0x5151, rtx_payload_type=101
    )
    # A resume rebases the route's numbers: what it sends differs from what the publisher did.
    forward(harness, publisher, [build_rtp(100, 0, TRACK_SSRC, b"first")], viewer)
    sub.pause()
    sub.resume()
    packets = [
        build_rtp(
            200 + i, 90000 + 3000 * i, TRACK_SSRC, b"frame %d" % i, marker=i == 2, csrcs=[9] if i == 1 else [],
            extension=one_byte_extension([(1, bytes([i]))]) if i % 2 else None, padding=5 if i == 3 else 0,
        )
        for i in range(5)
    ]
    forward(harness, publisher, packets, viewer)
    originals = [parse_rtp(p) for p in viewer.peer.plain[1:]]
    assert originals[3].padding == 5 and originals[0].seq == 101

    order = [3, 1, 3, 0]
    retransmitted(harness, viewer, sub, [originals[i].seq for i in order[:3]])
    assert not sub.retransmit((originals[-1].seq + 1) & 0xFFFF)  # never sent: a miss uses no number
    retransmitted(harness, viewer, sub, [originals[order[3]].seq])

    # A new SSRC with numbers of its own: the viewer's session decrypts them as they come.
    rtx = viewer.peer.plain[6:]
    first = parse_rtp(rtx[0]).seq
    for k, (datagram, i) in enumerate(zip(rtx, order, strict=True)):
        got, original = parse_rtp(datagram), originals[i]
        assert (got.ssrc, got.payload_type, got.seq) == (0x5151, 101, (first + k) & 0xFFFF)
        assert (got.timestamp, got.marker, got.csrcs) == (original.timestamp, original.marker, original.csrcs)
        assert (got.extension_profile, got.extension) == (original.extension_profile, original.extension)
        assert got.payload == struct.pack("!H", original.seq) + original.payload  # the OSN, then the payload
        assert not datagram[0] & 0x20 and got.padding == 0
    assert all(o.extension_profile is None for o in originals) == strip
    assert (sub.retransmitted, sub.rtx_sent, sub.retransmit_misses) == (4, 4, 1)
    assert viewer.endpoint.counters.packets_out == 1 + 5 + 4


# --- key frames ----------------------------------------------------------------------------

VP8_KEY = bytes([0x10, 0x50, 0x01, 0x00, 0x9D, 0x01, 0x2A])  # S=1 PID=0, P=0
VP8_KEY_EXTENDED = bytes([0x90, 0xF0, 0x92, 0x34, 0x05, 0x21, 0x50, 0x9D])  # X: I (M), L, T, K
VP8_INTER_EXTENDED = bytes([0x90, 0xF0, 0x92, 0x34, 0x05, 0x20, 0x51, 0x9D])
VP8_KEY_SHORT_PICTURE_ID = bytes([0x90, 0x80, 0x12, 0x50])  # X: I, 7 bits
VP8_INTER = bytes([0x10, 0x51, 0x02])  # P=1
VP8_CONTINUATION = bytes([0x00, 0x50])  # S=0: not the start of a partition
VP8_OTHER_PARTITION = bytes([0x11, 0x50])  # PID=1
VP9_KEY = bytes([0x88, 0x81, 0x02, 0xAA])  # I (15-bit PictureID), B=1, P=0
VP9_INTER = bytes([0xC8, 0x81, 0x03])  # P=1
VP9_MIDDLE = bytes([0x80, 0x81, 0x02])  # B=0
VP9_KEY_LAYER_0 = bytes([0xA8, 0x05, 0x00, 0x07])  # L: SID=0
VP9_KEY_LAYER_1 = bytes([0xA8, 0x05, 0x02, 0x07])  # L: SID=1
H264_IDR = bytes([0x65, 0x88, 0x84])
H264_SPS = bytes([0x67, 0x42, 0xC0, 0x1F])
H264_PPS = bytes([0x68, 0xCE, 0x3C])
H264_SLICE = bytes([0x41, 0x9A, 0x02])
H264_SEI = bytes([0x06, 0x05, 0x01])


def stap_a(*nals: bytes) -> bytes:
    return bytes([0x78]) + b"".join(struct.pack("!H", len(n)) + n for n in nals)


def fu_a(start: bool, end: bool, nal_type: int) -> bytes:
    return bytes([0x7C, (0x80 if start else 0) | (0x40 if end else 0) | nal_type, 0x11, 0x22])


KEY_FRAME_TABLE: list[tuple[str, str, bytes, bool]] = [
    ("VP8", "key frame", VP8_KEY, True),
    ("VP8", "key frame, every extension", VP8_KEY_EXTENDED, True),
    ("VP8", "key frame, 7-bit PictureID", VP8_KEY_SHORT_PICTURE_ID, True),
    ("VP8", "inter frame", VP8_INTER, False),
    ("VP8", "inter frame, every extension", VP8_INTER_EXTENDED, False),
    ("VP8", "key frame continued", VP8_CONTINUATION, False),
    ("VP8", "another partition", VP8_OTHER_PARTITION, False),
    ("VP8", "descriptor only", bytes([0x10]), False),
    ("VP8", "extensions cut short", VP8_KEY_EXTENDED[:4], False),
    ("VP8", "empty", b"", False),
    ("vp8", "any case", VP8_KEY, True),
    ("VP9", "key frame", VP9_KEY, True),
    ("VP9", "B, P clear, nothing else", bytes([0x08]), True),
    ("VP9", "inter frame", VP9_INTER, False),
    ("VP9", "middle of a frame", VP9_MIDDLE, False),
    ("VP9", "key frame, spatial layer 0", VP9_KEY_LAYER_0, True),
    ("VP9", "key frame, spatial layer 1", VP9_KEY_LAYER_1, False),
    ("VP9", "layer indices cut short", VP9_KEY_LAYER_0[:2], False),
    ("H264", "IDR", H264_IDR, True),
    ("H264", "SPS", H264_SPS, True),
    ("H264", "PPS", H264_PPS, False),
    ("H264", "non-IDR slice", H264_SLICE, False),
    ("H264", "STAP-A: SPS, PPS, IDR", stap_a(H264_SPS, H264_PPS, H264_IDR), True),
    ("H264", "STAP-A: SEI, IDR", stap_a(H264_SEI, H264_IDR), True),
    ("H264", "STAP-A: SEI, PPS", stap_a(H264_SEI, H264_PPS), False),
    ("H264", "STAP-A: a size past the end", stap_a(H264_SEI)[:-1] + struct.pack("!H", 40) + H264_IDR, False),
    ("H264", "STAP-A: first size past the end", bytes([0x78, 0x00, 0x09, 0x65]), False),
    ("H264", "FU-A: start of an IDR", fu_a(True, False, 5), True),
    ("H264", "FU-A: start of an SPS", fu_a(True, False, 7), True),
    ("H264", "FU-A: middle of an IDR", fu_a(False, False, 5), False),
    ("H264", "FU-A: end of an IDR", fu_a(False, True, 5), False),
    ("H264", "FU-A: start of a slice", fu_a(True, False, 1), False),
    ("H264", "FU-A: no FU header", bytes([0x7C]), False),
    ("opus", "audio", H264_IDR, False),
    ("", "unknown", VP8_KEY, False),
    ("AV1", "not known here", VP8_KEY, False),
]
FRAMINGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "CSRCs and an extension": {"csrcs": [1, 2], "extension": one_byte_extension([(1, b"\x05\x06\x07")])},
    "padding": {"padding": 9},
}


@pytest.mark.parametrize("framing", list(FRAMINGS))
@pytest.mark.parametrize(
    ("codec", "case", "payload", "key"), KEY_FRAME_TABLE, ids=[f"{c}: {d}" for c, d, _, _ in KEY_FRAME_TABLE]
)
def test_key_frames_are_recognized(codec: str, case: str, payload: bytes, key: bool, framing: str) -> None:
    packet = build_rtp(1, 2, 3, payload, **FRAMINGS[framing])
    assert is_key_frame(codec, packet) is key
    assert ref.key_frame(codec, packet) is key


def test_inconsistent_headers_are_no_key_frames() -> None:
    packet = build_rtp(1, 2, 3, H264_IDR, extension=one_byte_extension([(1, b"a")]))
    assert is_key_frame("H264", packet)
    for cut in range(len(packet) - len(H264_IDR)):
        assert not is_key_frame("H264", packet[:cut]), cut
    assert not is_key_frame("H264", build_rtp(1, 2, 3, H264_IDR, padding=4)[:-1] + b"\x09")  # padding > payload


@settings(max_examples=400, deadline=None, database=None)
@given(
    codec=st.sampled_from(["VP8", "VP9", "H264"]),
    payload=st.binary(max_size=24),
    framing=st.sampled_from(list(FRAMINGS)),
)
def test_key_frame_recognition_matches_the_reference(codec: str, payload: bytes, framing: str) -> None:
    packet = build_rtp(1, 2, 3, payload, **FRAMINGS[framing])
    assert is_key_frame(codec, packet) == ref.key_frame(codec, packet)


# Per codec: a packet that starts a key frame, and one that does not.
KEY_FRAME_STREAMS = {
    "VP8": ("VP8", VP8_KEY_EXTENDED, VP8_INTER),
    "VP9": ("VP9", VP9_KEY, VP9_INTER),
    "H264 single NAL unit": ("H264", H264_IDR, H264_SLICE),
    "H264 STAP-A": ("H264", stap_a(H264_SPS, H264_PPS, H264_IDR), stap_a(H264_SEI, H264_SLICE)),
    "H264 FU-A": ("H264", fu_a(True, False, 5), fu_a(False, False, 5)),
}


@pytest.mark.parametrize("stream", list(KEY_FRAME_STREAMS))
def test_a_route_forwards_from_a_key_frame_on(harness: Harness, stream: str) -> None:
    codec, key, other = KEY_FRAME_STREAMS[stream]
    publisher, track = setup(harness, codec=codec)
    browser, everyone = harness.participant(name="browser"), harness.participant(name="everyone")
    sub = track.subscribe(browser.endpoint, 0xB, wait_for_key_frame=True)
    track.subscribe(everyone.endpoint, 0xC)  # a route without the option gets everything
    assert sub.waiting_for_key_frame
    seq = iter(range(1000, 2000))

    def send(*payloads: bytes) -> list[bytes]:
        """Forward one packet per payload; the payloads the browser received."""
        before = len(browser.peer.received)
        forward(harness, publisher, [build_rtp(s := next(seq), 3000 * s, TRACK_SSRC, p) for p in payloads], browser)
        return [parse_rtp(p).payload for p in browser.peer.plain[before:]]

    assert send(other, other, key, other, other) == [key, other, other]
    assert (sub.dropped_waiting_key_frame, sub.waiting_for_key_frame) == (2, False)
    # A paused route lost frames: after its resume it waits again.
    sub.pause()
    assert send(key, other) == []
    sub.resume()
    assert sub.waiting_for_key_frame
    assert send(other, key, other) == [key, other]
    assert (sub.dropped_waiting_key_frame, sub.dropped_paused) == (3, 2)
    # Waiting again on request.
    assert sub.skip_to_key_frame()
    assert send(other, other, key) == [key]
    assert sub.dropped_waiting_key_frame == 5
    # The outgoing sequence never has a gap: the receiver has nothing to ask again for.
    numbers = [parse_rtp(p).seq for p in browser.peer.plain]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert len(everyone.peer.plain) == 5 + 2 + 3 + 3


@pytest.mark.parametrize("codec", ["opus", ""])
def test_a_route_of_other_codecs_never_waits(harness: Harness, codec: str) -> None:
    publisher = harness.participant(name="publisher")
    track = publisher.endpoint.add_track(TRACK_SSRC, clock_rate=48000, kind="audio", codec=codec)
    listener = harness.participant(name="listener")
    sub = track.subscribe(listener.endpoint, 0xB, wait_for_key_frame=True)
    assert sub.wait_for_key_frame and not sub.waiting_for_key_frame
    forward(harness, publisher, [build_rtp(i, 960 * i, TRACK_SSRC, b"\x78 sound") for i in range(3)], listener)
    sub.pause()
    sub.resume()
    assert not sub.skip_to_key_frame()
    assert not sub.waiting_for_key_frame
    forward(harness, publisher, [build_rtp(i, 960 * i, TRACK_SSRC, b"\x78 sound") for i in range(3, 5)], listener)
    assert (len(listener.peer.plain), sub.packets, sub.dropped_waiting_key_frame) == (5, 5, 0)
