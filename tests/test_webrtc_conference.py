"""WebRTC participants (aiortc, an independent WebRTC stack) in a conference of a real
`charter up`: ICE-lite, DTLS-SRTP, Charter's offers on the watch stream and the answers to
them, VP8 and Opus both ways, a late joiner, SDES participants (ffmpeg, GStreamer) beside
them, and a peer that vanishes without Leave."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from socket import SOCK_DGRAM

import grpc
import pytest

from aiortc_peer import (
    ENOUGH,
    WINDOW,
    AiortcParticipant,
    Received,
    allow_loopback,
    decode_each_other,
    describe,
    eventually,
)
from charter import sdp
from charter.processes import free_port
from charter.tracks import Track
from charter.v1 import controller_pb2 as pb
from charter.v1 import controller_pb2_grpc, mediad_pb2, mediad_pb2_grpc
from charter_up import CharterUp, charter_up
from loss_shim import LossShim
from media_processes import VIDEO_FPS, Running, Stream, ffmpeg_sender, missing_tools, random_ssrcs
from media_receivers import GstReceiver
from waits import settle

pytestmark = pytest.mark.peers



@pytest.fixture(scope="module")
def charter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CharterUp]:
    allow_loopback()
    with charter_up(tmp_path_factory.mktemp("charter-up")) as system:
        yield system


def run(charter: CharterUp, scenario: Callable[[controller_pb2_grpc.ConferenceServiceStub], Awaitable[None]]) -> None:
    async def main() -> None:
        async with grpc.aio.insecure_channel(charter.controller_address) as channel:
            await scenario(controller_pb2_grpc.ConferenceServiceStub(channel))

    asyncio.run(main())


def test_two_webrtc_participants_see_and_hear_each_other(charter: CharterUp) -> None:
    async def scenario(api: controller_pb2_grpc.ConferenceServiceStub) -> None:
        await api.CreateConference(pb.CreateConferenceRequest(conference_id="two-webrtc"), timeout=10)
        peers = [AiortcParticipant(api, "two-webrtc", name) for name in ("ana", "bo")]
        try:
            for peer in peers:
                participant = await peer.join()
                assert participant.webrtc and "a=ice-lite" in participant.sdp
            await decode_each_other(peers)
            audio = {p.name: p.received[q.participant_id].audio_frames for p in peers for q in peers if p is not q}
            await asyncio.sleep(1.0)
            for p in peers:
                for q in peers:
                    if p is not q:
                        assert p.received[q.participant_id].audio_frames > audio[p.name], f"{p.name} hears {q.name}"
            assert all(not p.errors for p in peers), describe(*peers)
        finally:
            for peer in peers:
                await peer.leave()

    run(charter, scenario)


def test_a_late_joiner_sees_everyone_and_everyone_sees_it(charter: CharterUp) -> None:
    async def scenario(api: controller_pb2_grpc.ConferenceServiceStub) -> None:
        await api.CreateConference(pb.CreateConferenceRequest(conference_id="late-webrtc"), timeout=10)
        first = [AiortcParticipant(api, "late-webrtc", name) for name in ("cy", "di")]
        late = AiortcParticipant(api, "late-webrtc", "ed")
        try:
            for peer in first:
                await peer.join()
            await decode_each_other(first)
            await late.join()
            await decode_each_other([*first, late])
            # Each of the first two answered one more offer: the one with the newcomer's tracks.
            assert all(p.offers_answered >= 2 for p in first), describe(*first)
        finally:
            for peer in [*first, late]:
                await peer.leave()

    run(charter, scenario)


@pytest.mark.skipif(missing_tools() is not None, reason=f"{missing_tools()}: the mixed test needs ffmpeg and gst")
def test_webrtc_and_sdes_participants_in_one_conference(charter: CharterUp, tmp_path: Path) -> None:
    conference = "mixed"
    frames = 8 * VIDEO_FPS
    charter.create_conference(conference)
    ssrcs = random_ssrcs()
    # The SDES participants: an ffmpeg publisher, a GStreamer receiver.
    camera = Track(next(ssrcs), "video", "VP8", 96, 90000, name="camera")
    charter.join(conference, "ffmpeg-cam", [camera], receive_address=("127.0.0.1", free_port(SOCK_DGRAM)))
    charter.join(conference, "gst-eye", [], receive_address=("127.0.0.1", free_port(SOCK_DGRAM)))

    async def scenario(api: controller_pb2_grpc.ConferenceServiceStub) -> None:
        peer = AiortcParticipant(api, conference, "web")
        try:
            await peer.join()
            eye = charter.session(conference, "gst-eye")
            with Running() as running:
                streams = [
                    Stream.from_media(m) for m in sdp.parse(sdp.render(eye, direction=sdp.RECV_ONLY)).media
                    if m.kind == "video"
                ]
                assert len(streams) == 2, f"gst-eye receives the camera and the browser: {eye}"
                receiver = running.add(GstReceiver("gst-eye", streams, tmp_path))
                receiver.wait_ready()
                (media,) = sdp.parse(sdp.render(charter.session(conference, "ffmpeg-cam"),
                                                direction=sdp.SEND_ONLY)).media
                web_ssrc = next(s.ssrc for s in streams if s.ssrc != charter_ssrc(eye, "ffmpeg-cam"))
                sender = running.add(ffmpeg_sender("ffmpeg-cam", Stream.from_media(media), frames, tmp_path))
                # GStreamer started after aiortc's first key frame: it asks for one, as a SIP phone would.
                charter.request_key_frame(conference, "gst-eye", web_ssrc)
                await eventually(lambda: receiver.frames(web_ssrc) > 0, f"GStreamer's first frame of aiortc's video "
                                 f"({describe(peer)})")
                # The browser's frames sent in a window, against GStreamer's decoded a second later
                # (its pipeline's delay).
                sent = [peer.frames_sent]
                await asyncio.sleep(1.0)
                decoded = [receiver.frames(web_ssrc)]
                await eventually(lambda: not sender.running, "ffmpeg to send its frames", timeout=60)
                sent.append(peer.frames_sent)
                await asyncio.sleep(1.0)
                decoded.append(receiver.frames(web_ssrc))
                assert sender.wait(5) == 0, sender.describe()
                assert decoded[1] - decoded[0] >= ENOUGH * (sent[1] - sent[0]), (
                    f"GStreamer decoded {decoded[1] - decoded[0]} of the {sent[1] - sent[0]} frames aiortc sent"
                )
                await asyncio.to_thread(settle, lambda: [p.received.get("ffmpeg-cam", Received()).video_frames
                                                          for p in (peer,)])
                from_camera = peer.received.get("ffmpeg-cam")
                assert from_camera is not None and from_camera.video_frames >= ENOUGH * frames, describe(peer)
        finally:
            await peer.leave()

    run(charter, scenario)


def charter_ssrc(session: sdp.ParticipantSession, publisher: str) -> int:
    (track,) = [t for t in session.received_from(publisher) if t.track.kind == "video"]
    return track.ssrc


def test_a_lossy_leg_is_repaired_with_rtx(charter: CharterUp) -> None:
    """Every 10th video packet to a receiver is lost on its leg: it NACKs them, and the
    daemon answers on the receiver's RTX stream (RFC 4588) from its cache."""
    async def scenario(api: controller_pb2_grpc.ConferenceServiceStub) -> None:
        await api.CreateConference(pb.CreateConferenceRequest(conference_id="lossy"), timeout=10)
        shim = LossShim(drop=lambda payload_type, count: payload_type == AIORTC_VP8 and count % 10 == 9)
        await shim.start()
        source = AiortcParticipant(api, "lossy", "source", send_audio=False)
        sink = AiortcParticipant(api, "lossy", "sink", send_audio=False, rewrite=shim.through)
        try:
            await source.join()
            await sink.join()
            await eventually(lambda: source.participant_id in sink.received
                             and sink.received[source.participant_id].video_frames > 0,
                             f"the sink's first frame ({describe(source, sink)})")
            sent, got = source.frames_sent, sink.received[source.participant_id].video_frames
            await asyncio.sleep(WINDOW)
            frames_sent = source.frames_sent - sent
            decoded = sink.received[source.participant_id].video_frames - got
            route = rtx_route_to(charter, "lossy", sink.participant_id)
            print(f"the sink's leg lost {shim.dropped} video packets; the daemon sent {route.rtx_sent} on RTX; "
                  f"the sink decoded {decoded} of {frames_sent} frames")
            assert shim.dropped >= 5 and route.rtx_sent >= shim.dropped // 2, (shim.dropped, route)
            assert decoded >= ENOUGH * frames_sent, describe(source, sink)
        finally:
            await sink.leave()
            await source.leave()
            shim.close()

    run(charter, scenario)


AIORTC_VP8 = 97
"""aiortc's payload type for VP8 (its RTX is 98): what the daemon sends it VP8 with."""


def rtx_route_to(charter: CharterUp, conference: str, receiver: str) -> mediad_pb2.SubscriptionStats:
    """The daemon's figures of the one route to `receiver` with an RTX stream (its video)."""
    daemon = mediad_pb2_grpc.MediaDaemonStub(charter.daemon_channel)
    stats = daemon.GetStats(mediad_pb2.GetStatsRequest(endpoint_id=f"{conference}/{receiver}"), timeout=10)
    (endpoint,) = stats.endpoints
    (route,) = [r for r in endpoint.subscriptions if r.subscription.rtx_ssrc]
    return route
