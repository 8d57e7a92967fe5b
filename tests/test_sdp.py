"""charter.sdp: the session description of a participant, rendered and read back."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from charter import sdp
from charter.sdp import ParticipantSession
from charter.subscriptions import Subscription
from charter.tracks import Track

SEND_KEY = base64.b64encode(bytes(range(30))).decode()
RECEIVE_KEY = base64.b64encode(bytes(range(100, 130))).decode()
VP8 = Track(1111, "video", "VP8", 96, 90000, name="camera")
OPUS = Track(2222, "audio", "opus", 111, 48000, channels=2, name="microphone")


def session(**changes: object) -> ParticipantSession:
    fields: dict[str, object] = dict(
        conference_id="room-1",
        participant_id="alice",
        media_address=("127.0.0.1", 20000),
        suite="AES_CM_128_HMAC_SHA1_80",
        send_key=SEND_KEY,
        receive_key=RECEIVE_KEY,
        published=(VP8, OPUS),
        received=(
            Subscription("bob", Track(33, "video", "H264", 97, 90000), 3333),
            Subscription("bob", Track(44, "audio", "opus", 111, 48000, channels=2), 4444),
        ),
        receive_address=("127.0.0.1", 40000),
    )
    fields.update(changes)
    return ParticipantSession(**fields)  # type: ignore[arg-type]


def test_one_m_line_per_track_with_direction_address_key_and_ssrc() -> None:
    text = sdp.render(session())
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    description = sdp.parse(text)
    assert description.name == "charter room-1"
    kinds = [(m.kind, m.direction, m.ssrc) for m in description.media]
    assert kinds == [
        ("video", "sendonly", 1111),
        ("audio", "sendonly", 2222),
        ("video", "recvonly", 3333),
        ("audio", "recvonly", 4444),
    ]
    sent, received = description.media[:2], description.media[2:]
    for media in sent:
        # What the participant publishes goes to the daemon, protected with its send key.
        assert media.transport() == ("127.0.0.1", 20000)
        assert [(c.suite, c.key) for c in media.crypto] == [("AES_CM_128_HMAC_SHA1_80", SEND_KEY)]
    for media in received:
        # What it receives arrives at its receive address, protected with the receive key.
        assert media.transport() == ("127.0.0.1", 40000)
        assert [c.key for c in media.crypto] == [RECEIVE_KEY]
        assert media.crypto[0].key_bytes == bytes(range(100, 130))
    assert all(m.rtcp_mux and m.profile == "RTP/SAVP" for m in description.media)
    assert [m.mid for m in description.media] == ["0", "1", "2", "3"]


def test_codecs_are_described_as_rtpmap_and_fmtp() -> None:
    media = sdp.parse(sdp.render(session())).media
    assert (media[0].codec, media[0].payload_type, media[0].clock_rate) == ("VP8", 96, 90000)
    assert media[1].rtpmap[111] == "opus/48000/2" and media[1].channels == 2
    assert media[2].rtpmap[97] == "H264/90000"
    assert media[2].fmtp[97] == "packetization-mode=1"
    assert media[0].label == "camera"


def test_received_tracks_name_their_publisher_as_cname() -> None:
    text = sdp.render(session())
    assert "a=ssrc:3333 cname:bob" in text
    assert "a=ssrc:1111 cname:alice" in text


def test_opus_is_always_two_channels_as_rfc_7587_says() -> None:
    mono = Track(5, "audio", "opus", 111, 48000, channels=1)
    assert sdp.rtpmap(mono) == "111 opus/48000/2"
    assert sdp.rtpmap(Track(6, "audio", "PCMU", 0, 8000)) == "0 PCMU/8000"


def test_latching_participant_receives_where_it_sends() -> None:
    media = sdp.parse(sdp.render(session(receive_address=None))).media
    assert {m.transport() for m in media} == {("127.0.0.1", 20000)}


def test_one_track_alone_for_tools_that_open_a_socket_per_m_line() -> None:
    text = sdp.render(session(), ssrc=4444)
    (media,) = sdp.parse(text).media
    assert (media.kind, media.direction, media.ssrc, media.port) == ("audio", "recvonly", 4444, 40000)
    assert media.mid == "0"


def test_only_one_direction() -> None:
    sent = sdp.parse(sdp.render(session(), direction="sendonly")).media
    assert [m.ssrc for m in sent] == [1111, 2222]
    received = sdp.parse(sdp.render(session(), direction="recvonly")).media
    assert [m.ssrc for m in received] == [3333, 4444]
    with pytest.raises(ValueError, match="direction"):
        sdp.render(session(), direction="sideways")


def test_unknown_ssrc_names_the_ones_it_has() -> None:
    with pytest.raises(KeyError, match="1111, 2222, 3333, 4444"):
        sdp.render(session(), ssrc=9)


def test_ipv6_addresses() -> None:
    text = sdp.render(session(media_address=("::1", 20000), receive_address=("::1", 40000)))
    assert "c=IN IP6 ::1" in text and "IN IP4" not in text
    assert sdp.parse(text).media[0].transport() == ("::1", 20000)


def test_rendering_is_deterministic() -> None:
    assert sdp.render(session()) == sdp.render(session())
    assert sdp.render(session()) != sdp.render(session(participant_id="bob", received=()))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"send_key": "not base64!"}, "send key: is not base64"),
        (
            {"receive_key": base64.b64encode(b"short").decode()},
            "receive key: is 5 bytes; AES_CM_128_HMAC_SHA1_80 needs 30",
        ),
        ({"suite": "AEAD_AES_128_GCM"}, "send key: is 30 bytes; AEAD_AES_128_GCM needs 28"),
        ({"suite": "NULL"}, "unknown SRTP suite 'NULL'"),
        ({"media_address": ("daemon.example", 20000)}, "media address must be an IP address"),
        ({"receive_address": ("127.0.0.1", 0)}, "receive address port must be 1-65535"),
        ({"published": (VP8, VP8)}, "SSRCs of a participant's tracks must be distinct"),
    ],
)
def test_bad_sessions_are_refused_with_what_to_fix(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        session(**changes)


@pytest.mark.parametrize(
    ("track", "message"),
    [
        (dict(kind="text"), "kind: is required: AUDIO or VIDEO"),
        (dict(codec="VP8/90000"), "codec: 'VP8/90000' is not a codec name"),
        (dict(payload_type=128), "payload_type: is 128; RTP payload types are 0-127"),
        (dict(clock_rate=0), "clock_rate: is required"),
        (dict(ssrc=0), "ssrc: is required: the non-zero 32-bit RTP SSRC"),
        (dict(ssrc=1 << 32), "ssrc: is required: the non-zero 32-bit RTP SSRC"),
    ],
)
def test_bad_tracks_are_refused(track: dict[str, object], message: str) -> None:
    fields: dict[str, object] = dict(kind="video", codec="VP8", payload_type=96, clock_rate=90000, ssrc=1)
    fields.update(track)
    with pytest.raises(ValueError, match=message):
        Track(**fields)  # type: ignore[arg-type]


# What ffmpeg 5.1 writes for an SRTP stream it sends (`-f rtp ... srtp://`).
FFMPEG_SDP = """v=0
o=- 0 0 IN IP4 127.0.0.1
s=No Name
c=IN IP4 127.0.0.1
t=0 0
a=tool:libavformat LIBAVFORMAT_VERSION
m=video 40000 RTP/AVP 96
b=AS:500
a=rtpmap:96 VP8/90000
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:4y9MUTwcB8obJX0oj2zIpGItS8X//fxVHHJq75/7
"""


def test_parses_what_ffmpeg_writes() -> None:
    (media,) = sdp.parse(FFMPEG_SDP).media
    assert media.transport() == ("127.0.0.1", 40000)  # the session-level c= applies
    assert (media.codec, media.direction, media.ssrcs) == ("VP8", "sendrecv", [])
    assert media.crypto[0].key == "4y9MUTwcB8obJX0oj2zIpGItS8X//fxVHHJq75/7"
    with pytest.raises(ValueError, match="0 SSRCs"):
        _ = media.ssrc


def test_crypto_lifetime_and_mki_are_dropped_from_the_key() -> None:
    text = FFMPEG_SDP.replace("75/7", "75/7|2^31|1:1")
    assert sdp.parse(text).media[0].crypto[0].key == "4y9MUTwcB8obJX0oj2zIpGItS8X//fxVHHJq75/7"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("v=0\r\nnonsense\r\n", "line 2 is not 'x=value'"),
        ("v=1\r\n", "only SDP version 0"),
        ("v=0\r\nc=IN IP4 localhost\r\n", "line 2"),
        ("v=0\r\nm=video 70000 RTP/SAVP 96\r\n", "port 70000 out of range"),
        ("v=0\r\nm=video 1 RTP/SAVP\r\n", "expected 'media port proto fmt"),
        ("v=0\r\nm=video 1 RTP/SAVP 96\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 key\r\n", "a=crypto:tag suite inline:key"),
    ],
)
def test_malformed_sdp_names_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sdp.parse(text)


def test_from_the_controllers_participant_message() -> None:
    controller_pb2 = pytest.importorskip("charter.v1.controller_pb2")
    media_pb2 = pytest.importorskip("charter.v1.media_pb2")
    participant = controller_pb2.Participant(
        conference_id="room-1",
        participant_id="alice",
        tracks=[
            media_pb2.Track(
                ssrc=1111, kind=media_pb2.VIDEO, codec="VP8", payload_type=96, clock_rate=90000, name="camera"
            )
        ],
        media_address=media_pb2.Address(ip="127.0.0.1", port=20000),
        receive_address=media_pb2.Address(ip="127.0.0.1", port=40000),
        suite=media_pb2.AES_CM_128_HMAC_SHA1_80,
        send_key=SEND_KEY,
        receive_key=RECEIVE_KEY,
        subscriptions=[
            controller_pb2.Subscription(
                publisher_id="bob",
                track=media_pb2.Track(
                    ssrc=77, kind=media_pb2.AUDIO, codec="opus", payload_type=111, clock_rate=48000, channels=2
                ),
                ssrc=4444,
            )
        ],
    )
    converted = sdp.from_participant(participant)
    assert converted.published == (VP8,)
    assert converted.received == (Subscription("bob", Track(77, "audio", "opus", 111, 48000, channels=2), 4444),)
    assert converted.receive_address == ("127.0.0.1", 40000)
    assert converted.received_from("bob")[0].ssrc == 4444
    participant.ClearField("receive_address")
    assert sdp.from_participant(participant).receive_address is None


tracks = st.sampled_from([("video", "VP8"), ("video", "H264"), ("audio", "opus"), ("audio", "PCMU")]).flatmap(
    lambda kind_codec: st.builds(
        Track,
        kind=st.just(kind_codec[0]),
        codec=st.just(kind_codec[1]),
        payload_type=st.integers(0, 127).filter(lambda pt: pt not in range(72, 77)),
        clock_rate=st.sampled_from([8000, 48000, 90000]),
        ssrc=st.integers(1, (1 << 32) - 1),
        channels=st.integers(0, 2),
    )
)


@given(st.lists(tracks, max_size=6, unique_by=lambda t: t.ssrc), st.integers(0, 6), st.integers(1, 65535))
def test_every_track_reads_back(all_tracks: list[Track], split: int, port: int) -> None:
    described = session(
        published=tuple(all_tracks[:split]),
        received=tuple(Subscription("bob", t, t.ssrc) for t in all_tracks[split:]),
        media_address=("10.0.0.1", port),
    )
    media = sdp.parse(sdp.render(described)).media
    assert len(media) == len(all_tracks)
    for track, m in zip(all_tracks, media, strict=False):
        assert (m.kind, m.codec, m.payload_type, m.clock_rate, m.ssrc) == (
            track.kind,
            track.codec,
            track.payload_type,
            track.clock_rate,
            track.ssrc,
        )


def test_answer_for_an_offer_answer_endpoint() -> None:
    text = sdp.render_answer(session())
    description = sdp.parse(text)
    assert description.address == "127.0.0.1"
    assert "a=group:BUNDLE 0 1 2 3" in text
    media = description.media
    # Every m-line on the daemon's one port; directions as Charter sees them.
    assert {m.transport() for m in media} == {("127.0.0.1", 20000)}
    assert [m.direction for m in media] == ["recvonly", "recvonly", "sendonly", "sendonly"]
    # Charter states the SSRCs it sends, and the key it protects with.
    assert [m.ssrcs for m in media] == [[], [], [3333], [4444]]
    assert {c.key for m in media for c in m.crypto} == {RECEIVE_KEY}
    assert all(m.rtcp_mux for m in media)
    assert media[2].fmtp[97] == "packetization-mode=1"


def test_answer_without_tracks_is_a_bare_session() -> None:
    description = sdp.parse(sdp.render_answer(session(published=(), received=())))
    assert description.media == []
