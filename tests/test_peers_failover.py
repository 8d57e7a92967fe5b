"""Real decoders across a failover: an ffmpeg VP8 publisher and a GStreamer receiver in a
conference whose media daemon is killed with SIGKILL. Each follows its `participant_moved`
event as a SIP phone would follow a re-INVITE (a new SDP: new address, key and SSRC), and
GStreamer decodes the camera again on the other daemon.

The figures (kill -> moved event -> first decoded frame) are printed; bench/failover.py
measures them for many conferences."""
from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path
from socket import SOCK_DGRAM

import grpc
import pytest

from charter import sdp
from charter.processes import free_port
from charter.v1 import controller_pb2 as pb
from charter.v1.controller_pb2_grpc import ConferenceServiceStub
from media_processes import VIDEO_FPS, MediaProcess, Running, Stream, ffmpeg_sender, missing_tools
from media_receivers import GstReceiver
from processes import cluster, conference_stub
from waits import wait_until

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(missing_tools() is not None, reason=f"{missing_tools()}: peer tests need both"),
]

LEASE = 2.0
FRAMES = 40 * VIDEO_FPS  # longer than the test: the senders are stopped


Moves = list[tuple[float, pb.Participant]]


def moves(channel: grpc.Channel, conference_id: str, participant_id: str, into: Moves) -> None:
    """Read a participant's watch stream; each move's time and new session into `into`."""
    stream = ConferenceServiceStub(channel).WatchConference(
        pb.WatchConferenceRequest(conference_id=conference_id, participant_id=participant_id), timeout=90)
    try:
        for event in stream:
            if event.WhichOneof("event") == "participant_moved" and event.participant_moved.HasField("participant"):
                into.append((time.monotonic(), event.participant_moved.participant))
    except grpc.RpcError:
        pass


def camera_of(session: pb.Participant) -> Stream:
    (media,) = sdp.parse(sdp.render(sdp.from_participant(session), direction=sdp.SEND_ONLY)).media
    return Stream.from_media(media)


def seen_by(session: pb.Participant) -> Stream:
    (media,) = sdp.parse(sdp.render(sdp.from_participant(session), direction=sdp.RECV_ONLY)).media
    return Stream.from_media(media)


def test_ffmpeg_and_gstreamer_follow_their_conference_to_another_daemon(tmp_path: Path) -> None:
    with cluster(tmp_path, daemons=2, lease_ttl=LEASE, check_exit=False) as charter:
        api = conference_stub(charter.controller)
        conference = api.CreateConference(pb.CreateConferenceRequest(conference_id="peers-move"), timeout=10)
        ssrc = random.randrange(1, 2**32)
        camera = pb.JoinRequest(conference_id="peers-move", participant_id="cam")
        camera.tracks.add(ssrc=ssrc, kind=2, codec="VP8", payload_type=96, clock_rate=90000)
        camera.receive_address.ip, camera.receive_address.port = "127.0.0.1", free_port(SOCK_DGRAM)
        eye = pb.JoinRequest(conference_id="peers-move", participant_id="eye")
        eye.receive_address.ip, eye.receive_address.port = "127.0.0.1", free_port(SOCK_DGRAM)
        cam_session = api.Join(camera, timeout=10).participant
        eye_session = api.Join(eye, timeout=10).participant
        moved: dict[str, Moves] = {"cam": [], "eye": []}
        channel = grpc.insecure_channel(charter.controller.address)
        readers = [threading.Thread(target=moves, args=(channel, "peers-move", p, moved[p]), daemon=True)
                   for p in moved]
        for reader in readers:
            reader.start()
        try:
            with Running() as running:
                before = running.add(GstReceiver("eye-before", [seen_by(eye_session)], tmp_path))
                before.wait_ready()
                sender: MediaProcess = running.add(ffmpeg_sender("cam-before", camera_of(cam_session), FRAMES,
                                                                 tmp_path))
                first = seen_by(eye_session).ssrc
                wait_until(lambda: before.frames(first) >= VIDEO_FPS, timeout=30,
                           what=f"GStreamer to decode the camera before the failure: {before.process.describe()}")

                killed_at = time.monotonic()
                charter.daemon(conference.daemon_id).signal(signal.SIGKILL)
                wait_until(lambda: bool(moved["cam"] and moved["eye"]), timeout=LEASE + 15,
                           what="both participants' moved events")
                # Each follows its new session: the receiver first, so that the sender's first
                # frame (a key frame) reaches it.
                (eye_at, eye_new), (cam_at, cam_new) = moved["eye"][0], moved["cam"][0]
                sender.stop()
                before.stop()
                after = running.add(GstReceiver("eye-after", [seen_by(eye_new)], tmp_path))
                after.wait_ready()
                running.add(ffmpeg_sender("cam-after", camera_of(cam_new), FRAMES, tmp_path))
                second = seen_by(eye_new).ssrc
                assert second != first and eye_new.daemon_id != conference.daemon_id
                wait_until(lambda: after.frames(second) > 0, timeout=30,
                           what=f"GStreamer to decode the camera after the move: {after.process.describe()}")
                decoding_at = time.monotonic()
                print(f"moved events {cam_at - killed_at:.2f} s and {eye_at - killed_at:.2f} s after the SIGKILL "
                      f"(lease {LEASE:.0f} s); first frame decoded {decoding_at - max(cam_at, eye_at):.2f} s after "
                      "the later one (both peers restarted with their new SDP)")
                decoded = after.frames(second)
                time.sleep(3.0)
                assert after.frames(second) - decoded >= 2 * VIDEO_FPS, "the camera keeps coming"
        finally:
            channel.close()
