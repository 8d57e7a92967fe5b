"""aiortc as a WebRTC participant of a real Charter: an independent WebRTC stack (ICE, DTLS,
SRTP, VP8 and Opus) that joins through the controller's gRPC API as a browser's gateway
would: Join with its offer, then, on its own WatchConference stream, answers every offer
Charter makes with ConferenceService.Answer. It counts the video frames and audio frames it
decodes per publisher (from the a=msid of Charter's offers) and the frames it sends.

aiortc gathers no loopback candidate, and the tests run where the loopback interface is the
only one: `allow_loopback()` lets it offer 127.0.0.1, as Chromium's
--allow-loopback-in-peer-connection does.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from charter.v1 import controller_pb2 as pb
from charter.v1 import controller_pb2_grpc

log = logging.getLogger("tests.aiortc_peer")

VIDEO_SIZE = (320, 240)
VIDEO_FPS = 30


def allow_loopback() -> None:
    """Let aioice offer 127.0.0.1 host candidates (it leaves out loopback addresses)."""
    import aioice.ice

    def loopback_too(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    aioice.ice.get_host_addresses = loopback_too


def moving_pattern_track() -> Any:
    """A video track of VIDEO_SIZE frames at VIDEO_FPS whose content changes every frame (a
    still picture would let VP8 send almost nothing), counting the frames it gives out."""
    import av
    from aiortc import VideoStreamTrack

    class MovingPattern(VideoStreamTrack):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.frames_sent = 0

        async def recv(self) -> av.VideoFrame:
            pts, time_base = await self.next_timestamp()
            width, height = VIDEO_SIZE
            frame = av.VideoFrame(width=width, height=height, format="yuv420p")
            shade = (self.frames_sent * 7) % 256
            luma = bytes((x + shade) % 256 for x in range(width)) * height
            frame.planes[0].update(luma)
            frame.planes[1].update(bytes([128]) * (width * height // 4))
            frame.planes[2].update(bytes([shade]) * (width * height // 4))
            frame.pts, frame.time_base = pts, time_base
            self.frames_sent += 1
            return frame

    return MovingPattern()


def tone_track() -> Any:
    """An audio track: aiortc's silence generator (Opus still sends a frame every 20 ms)."""
    from aiortc.mediastreams import AudioStreamTrack

    return AudioStreamTrack()


@dataclass
class Received:
    """What one participant decoded of one publisher."""

    video_frames: int = 0
    audio_frames: int = 0
    first_video_at: float | None = None
    """time.monotonic() of the first decoded video frame."""
    video_size: tuple[int, int] | None = None


@dataclass
class AiortcParticipant:
    """One aiortc RTCPeerConnection joined to a conference over gRPC."""

    api: controller_pb2_grpc.ConferenceServiceStub
    conference_id: str
    name: str
    send_video: bool = True
    send_audio: bool = True
    participant_id: str = ""
    joined_at: float = 0.0
    offers_answered: int = 0
    received: dict[str, Received] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    """mid -> publisher participant id, from Charter's offers."""
    left_reason: str = ""
    errors: list[str] = field(default_factory=list)
    rewrite: Callable[[str], str] = str
    """Applied to Charter's SDP before aiortc reads it (tests/loss_shim.py puts a shim between)."""
    region: str = ""
    """Where it joins from (JoinRequest.region)."""
    _pc: Any = None
    _video: Any = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def frames_sent(self) -> int:
        return int(self._video.frames_sent) if self._video is not None else 0

    @property
    def connection_state(self) -> str:
        return str(self._pc.connectionState) if self._pc is not None else "closed"

    async def join(self) -> pb.Participant:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        self._pc = RTCPeerConnection()
        self._pc.on("track", self._on_track)
        if self.send_video:
            self._video = moving_pattern_track()
            self._pc.addTransceiver(self._video, direction="sendonly")
        if self.send_audio:
            self._pc.addTransceiver(tone_track(), direction="sendonly")
        await self._pc.setLocalDescription(await self._pc.createOffer())
        offer = self._pc.localDescription.sdp
        request = pb.JoinRequest(conference_id=self.conference_id, display_name=self.name, offer=offer,
                                 region=self.region)
        reply = await self.api.Join(request, timeout=10)
        participant = reply.participant
        self.participant_id = participant.participant_id
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=self.rewrite(participant.sdp), type="answer"))
        self.joined_at = time.monotonic()
        self._tasks.append(asyncio.create_task(self._watch()))
        return participant

    async def _watch(self) -> None:
        from aiortc import RTCSessionDescription

        request = pb.WatchConferenceRequest(conference_id=self.conference_id, participant_id=self.participant_id)
        try:
            async for event in self.api.WatchConference(request):
                kind = event.WhichOneof("event")
                if kind == "session_offer":
                    offer = event.session_offer
                    self._learn_owners(offer.sdp)
                    charters = RTCSessionDescription(sdp=self.rewrite(offer.sdp), type="offer")
                    await self._pc.setRemoteDescription(charters)
                    await self._pc.setLocalDescription(await self._pc.createAnswer())
                    await self.api.Answer(
                        pb.AnswerRequest(conference_id=self.conference_id, participant_id=self.participant_id,
                                         sdp=self._pc.localDescription.sdp, version=offer.version),
                        timeout=10,
                    )
                    self.offers_answered += 1
                elif kind == "participant_left" and event.participant_left.participant_id == self.participant_id:
                    self.left_reason = event.participant_left.reason
                    return
                elif kind == "conference_ended":
                    return
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.errors.append(f"WatchConference: {error.code().name}: {error.details()}")
        except Exception as error:  # noqa: BLE001 - a failed renegotiation is what a test must see
            self.errors.append(f"renegotiation: {type(error).__name__}: {error}")

    def _learn_owners(self, sdp: str) -> None:
        import sdp_transform

        for media in sdp_transform.parse(sdp).get("media", []):
            msid = str(media.get("msid", "")).split()
            if "mid" in media and msid and msid[0] != "-":
                self.owners[str(media["mid"])] = msid[0]

    def _on_track(self, track: Any) -> None:
        transceiver = next((t for t in self._pc.getTransceivers() if t.receiver.track is track), None)
        mid = transceiver.mid if transceiver is not None else None
        self._tasks.append(asyncio.create_task(self._consume(track, mid)))

    async def _consume(self, track: Any, mid: str | None) -> None:
        from aiortc.mediastreams import MediaStreamError

        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                publisher = self.owners.get(mid or "", f"mid {mid}")
                got = self.received.setdefault(publisher, Received())
                if track.kind == "video":
                    got.video_frames += 1
                    got.video_size = (frame.width, frame.height)
                    if got.first_video_at is None:
                        got.first_video_at = time.monotonic()
                else:
                    got.audio_frames += 1

    async def leave(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.api.Leave(
                pb.LeaveRequest(conference_id=self.conference_id, participant_id=self.participant_id), timeout=10
            )
        await self.close()

    async def close(self) -> None:
        """Stop the peer connection without Leave (as a closed tab)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._pc is not None:
            await self._pc.close()


ENOUGH = 0.9
"""Of the frames a publisher sent while a receiver was subscribed, the receiver decodes this many."""
WINDOW = 4.0


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


def describe(*peers: AiortcParticipant) -> str:
    return "; ".join(
        f"{p.name}: {p.connection_state}, sent {p.frames_sent}, offers answered {p.offers_answered}, "
        f"received {p.received}, errors {p.errors}" for p in peers
    )


async def decode_each_other(peers: list[AiortcParticipant]) -> None:
    """Every peer decodes at least ENOUGH of the frames each other peer sends in a window."""
    pairs = [(r, s) for r in peers for s in peers if r is not s]
    await eventually(
        lambda: all(s.participant_id in r.received and r.received[s.participant_id].video_frames > 0 for r, s in pairs),
        f"every peer's first frame from every other ({describe(*peers)})",
    )
    sent = {p.name: p.frames_sent for p in peers}
    got = {(r.name, s.name): r.received[s.participant_id].video_frames for r, s in pairs}
    await asyncio.sleep(WINDOW)
    for r, s in pairs:
        frames_sent = s.frames_sent - sent[s.name]
        decoded = r.received[s.participant_id].video_frames - got[(r.name, s.name)]
        assert frames_sent > WINDOW * VIDEO_FPS / 3, f"{s.name} sent only {frames_sent} frames in {WINDOW} s"
        assert decoded >= ENOUGH * frames_sent, (
            f"{r.name} decoded {decoded} of the {frames_sent} frames {s.name} sent ({describe(*peers)})"
        )
