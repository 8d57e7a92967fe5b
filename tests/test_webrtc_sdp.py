"""SDP offer/answer for browsers (charter/webrtc_sdp.py) on offers captured from real peers:
Chromium 156 (a camera and a microphone, tests/data/chromium_offer.sdp) and aiortc
(tests/data/aiortc_offer.sdp). What Charter writes is read back with sdp-transform and, for
its offers, answered by aiortc itself."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sdp_transform

from charter.endpoints import DtlsFingerprint
from charter.errors import InvalidArgument
from charter.tracks import Track
from charter.webrtc_sdp import (
    MID_EXTENSION,
    BrowserOffer,
    Route,
    Transport,
    check_answer,
    parse_offer,
    render_answer,
    render_offer,
)

DATA = Path(__file__).with_name("data")
CHROMIUM = (DATA / "chromium_offer.sdp").read_text()
AIORTC = (DATA / "aiortc_offer.sdp").read_text()
TRANSPORT = Transport("Ab12", "p" * 24, DtlsFingerprint("sha-256", ":".join(["AB"] * 32)), ("127.0.0.1", 20000))
FFMPEG_VP8 = Track(0x1111, "video", "VP8", 96, 90000, name="camera")
AIORTC_OPUS = Track(0x2222, "audio", "opus", 96, 48000, 2, name="mic")
H264 = Track(0x3333, "video", "H264", 100, 90000, name="h264")


def media_of(sdp: str) -> list[dict[str, Any]]:
    return list(sdp_transform.parse(sdp)["media"])


def test_chromium_offer_gives_its_tracks_credentials_and_extension() -> None:
    offer = parse_offer(CHROMIUM)
    assert (offer.ice_ufrag, offer.ice_pwd) == ("roDP", "NnPg8MD3fSxWySGF0VGCNlaN")
    assert offer.fingerprints[0].algorithm == "sha-256"
    audio, video = offer.tracks()
    assert (audio.kind, audio.codec, audio.payload_type, audio.clock_rate, audio.ssrc) == (
        "audio", "opus", 111, 48000, 742419329
    )
    assert (video.kind, video.codec, video.payload_type) == ("video", "VP8", 96)
    # The video m-line's media SSRC, not the RTX one of its FID group.
    assert video.ssrc != 0 and video.name == "99c981a1-5155-4278-bc79-a3db918ad10d"
    assert offer.mid_extension == 4


def test_aiortc_offer_with_three_fingerprints_and_rtx() -> None:
    offer = parse_offer(AIORTC)
    video, audio = offer.tracks()
    assert (video.codec, video.payload_type, video.ssrc) == ("VP8", 97, 3660426893)
    assert (audio.codec, audio.payload_type) == ("opus", 96)
    assert offer.mid_extension == 1
    assert offer.rtx_for(97) == 98 and offer.rtx_for(96) == 0


@pytest.mark.parametrize(
    ("receiver", "track", "numbers"),
    [
        # Its own numbers for a codec it offered, and the RTX that repairs it.
        (CHROMIUM, FFMPEG_VP8, (96, 97)),
        (AIORTC, FFMPEG_VP8, (97, 98)),
        (CHROMIUM, AIORTC_OPUS, (111, 0)),
        (CHROMIUM, H264, (102, 103)),  # the first H.264 with packetization-mode=1
    ],
)
def test_a_browser_receives_a_track_with_its_own_payload_types(
    receiver: str, track: Track, numbers: tuple[int, int]
) -> None:
    assert parse_offer(receiver).receiving(track) == numbers


def test_a_codec_the_browser_did_not_offer_gets_a_payload_type_it_does_not_use() -> None:
    offer = parse_offer(AIORTC)
    used = {c.payload_type for m in offer.media for c in m.codecs}
    unknown = Track(0x4444, "video", "AV1", 97, 90000)
    payload_type, rtx = offer.receiving(unknown)
    assert payload_type not in used and 96 <= payload_type <= 127 and rtx == 0


def test_answer_to_chromium() -> None:
    offer = parse_offer(CHROMIUM)
    answer = sdp_transform.parse(render_answer(offer, TRANSPORT))
    assert answer["icelite"] == "ice-lite"
    assert answer["groups"] == [{"type": "BUNDLE", "mids": "0 1"}]
    for media, kind, payload in zip(answer["media"], ("audio", "video"), (111, 96), strict=True):
        assert media["type"] == kind and media["direction"] == "recvonly"
        assert [r["payload"] for r in media["rtp"]] == [payload]
        assert media["setup"] == "passive" and media["rtcpMux"] == "rtcp-mux"
        assert (media["iceUfrag"], media["icePwd"]) == (TRANSPORT.ice_ufrag, TRANSPORT.ice_pwd)
        assert media["fingerprint"] == {"type": "sha-256", "hash": TRANSPORT.fingerprint.value}
        assert media["candidates"][0]["ip"] == "127.0.0.1" and media["candidates"][0]["port"] == 20000
        assert media["ext"] == [{"value": 4, "uri": MID_EXTENSION}]
    video = answer["media"][1]
    assert {(f["type"], f.get("subtype")) for f in video["rtcpFb"]} == {
        ("nack", None), ("nack", "pli"), ("ccm", "fir"), ("goog-remb", None)
    }


def routes_for(receiver: BrowserOffer) -> list[Route]:
    video_pt, video_rtx = receiver.receiving(FFMPEG_VP8)
    audio_pt, _ = receiver.receiving(AIORTC_OPUS)
    return [
        Route("r0", "cam", FFMPEG_VP8, 0xA000, video_pt, 0xA001, video_rtx),
        Route("r1", "mic", AIORTC_OPUS, 0xB000, audio_pt),
        Route("r2", "gone", FFMPEG_VP8, 0xC000, video_pt, active=False),
    ]


def test_offer_to_a_browser_names_each_route_with_rtx_and_keeps_gone_ones_inactive() -> None:
    offer = parse_offer(CHROMIUM)
    routes = routes_for(offer)
    written = sdp_transform.parse(render_offer(offer, routes, TRANSPORT, 3))
    assert written["origin"]["sessionVersion"] == 3
    assert written["groups"][0]["mids"] == "0 1 r0 r1 r2"
    own, (video, audio, gone) = written["media"][:2], written["media"][2:]
    assert [m["setup"] for m in written["media"]] == ["actpass"] * 5
    assert [m["direction"] for m in own] == ["recvonly", "recvonly"]
    assert video["direction"] == "sendonly" and video["msid"] == "cam camera"
    assert [(r["payload"], r["codec"]) for r in video["rtp"]] == [(96, "VP8"), (97, "rtx")]
    assert {"payload": 97, "config": "apt=96"} in video["fmtp"]
    assert video["ssrcGroups"] == [{"semantics": "FID", "ssrcs": f"{0xA000} {0xA001}"}]
    assert {s["id"] for s in video["ssrcs"]} == {0xA000, 0xA001}
    assert [(r["payload"], r["codec"]) for r in audio["rtp"]] == [(111, "opus")]
    assert "ssrcGroups" not in audio and {s["id"] for s in audio["ssrcs"]} == {0xB000}
    assert gone["direction"] == "inactive" and "ssrcs" not in gone
    # One payload type, one codec, across the whole BUNDLE group (RFC 8843 7.5).
    codecs: dict[int, str] = {}
    for media in written["media"]:
        for rtp in media["rtp"]:
            assert codecs.setdefault(rtp["payload"], rtp["codec"]) == rtp["codec"], media["mid"]


def test_aiortc_answers_charters_offer_and_the_answer_checks() -> None:
    """aiortc joins (its offer, Charter's answer), then answers Charter's offer of two routes."""
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from aiortc_peer import allow_loopback, moving_pattern_track, tone_track

    allow_loopback()

    async def main() -> None:
        pc = RTCPeerConnection()
        try:
            pc.addTransceiver(moving_pattern_track(), direction="sendonly")
            pc.addTransceiver(tone_track(), direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            offer = parse_offer(pc.localDescription.sdp)
            await pc.setRemoteDescription(RTCSessionDescription(render_answer(offer, TRANSPORT), "answer"))
            routes = routes_for(offer)[:2]
            await pc.setRemoteDescription(RTCSessionDescription(render_offer(offer, routes, TRANSPORT, 2), "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            answer = pc.localDescription.sdp
            check_answer(answer, offer, routes)
            media = media_of(answer)
            assert [str(m["mid"]) for m in media] == ["0", "1", "r0", "r1"]
            assert [m["direction"] for m in media[2:]] == ["recvonly", "recvonly"]
            assert [r["payload"] for r in media[2]["rtp"]][:1] == [97]
        finally:
            await pc.close()

    asyncio.run(main())


def plain_answer(offer: BrowserOffer, routes: list[Route], **changes: Any) -> str:
    """An answer as a browser writes it: the offer's m-lines, directions turned around."""
    session = sdp_transform.parse(render_offer(offer, routes, TRANSPORT, 1))
    session.pop("icelite", None)
    for media in session["media"]:
        media["setup"] = "active"
        media["direction"] = {"sendonly": "recvonly", "recvonly": "sendonly"}.get(media["direction"], "inactive")
        for key, value in changes.items():
            media[key] = value
    return str(sdp_transform.write(session))


def test_a_plain_answer_checks() -> None:
    offer = parse_offer(CHROMIUM)
    check_answer(plain_answer(offer, routes_for(offer)), offer, routes_for(offer))


@pytest.mark.parametrize(
    ("mutate", "says"),
    [
        (lambda s: s.replace("a=mid:r1", "a=mid:x1"), "the offer has"),
        (lambda s: s.replace("a=setup:active", "a=setup:passive"), "Charter is the DTLS server"),
        (lambda s: s.replace("a=ice-ufrag", "a=x-ufrag"), "no a=ice-ufrag"),
        (lambda s: "v=1" + s[3:], "must start with v=0"),
        (lambda s: s.split("m=")[0], "has no m-line"),
    ],
)
def test_an_answer_that_does_not_match_the_offer_is_refused(mutate: Any, says: str) -> None:
    offer = parse_offer(CHROMIUM)
    routes = routes_for(offer)
    with pytest.raises(InvalidArgument, match=says):
        check_answer(mutate(plain_answer(offer, routes)), offer, routes)


def test_an_answer_that_sends_on_a_route_or_drops_its_codec_is_refused() -> None:
    offer = parse_offer(CHROMIUM)
    routes = routes_for(offer)
    text = plain_answer(offer, routes)
    sections = text.split("m=")
    video_route = next(i for i, s in enumerate(sections) if "a=mid:r0" in s)
    sending = sections.copy()
    sending[video_route] = sending[video_route].replace("a=recvonly", "a=sendrecv")
    with pytest.raises(InvalidArgument, match="answers a sendonly m-line"):
        check_answer("m=".join(sending), offer, routes)
    wrong_codec = sections.copy()
    wrong_codec[video_route] = wrong_codec[video_route].replace("UDP/TLS/RTP/SAVPF 96 97", "UDP/TLS/RTP/SAVPF 45")
    with pytest.raises(InvalidArgument, match="the offer has 96"):
        check_answer("m=".join(wrong_codec), offer, routes)


def without(text: str, prefix: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(prefix))


@pytest.mark.parametrize(
    ("mutate", "says"),
    [
        (lambda s: without(s, "a=ice-ufrag"), "no a=ice-ufrag"),
        (lambda s: without(s, "a=fingerprint"), "no a=fingerprint"),
        (lambda s: without(s, "a=group:BUNDLE"), "not in an a=group:BUNDLE"),
        (lambda s: without(s, "a=rtcp-mux"), "no a=rtcp-mux"),
        (lambda s: without(s, "a=mid"), "no a=mid"),
        (lambda s: s.replace("VP8/", "VP7/").replace("H264/", "H263/"), "no codec Charter forwards"),
        (lambda s: s.replace("opus/48000", "speex/48000"), "no codec Charter forwards"),
        (lambda s: s.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"), "not UDP/TLS/RTP/SAVPF"),
        (lambda s: without(s, "a=ssrc"), "has no a=ssrc"),
        (lambda s: "hello", "is not SDP"),
        (lambda s: s + "a=x:" + "y" * 70000 + "\r\n", "at most"),
    ],
)
def test_an_offer_without_what_charter_needs_is_refused_naming_it(mutate: Any, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says):
        parse_offer(mutate(CHROMIUM))
