"""Independent media tools through Charter: ffmpeg and GStreamer publish VP8, H.264 and
Opus through `charter up` (controller and media daemon processes) to two subscribers each,
one ffmpeg and one GStreamer, configured only from the SDP of their Join; every subscriber
decodes at least 90 % of the frames sent, counted from its decoder's output. Wrong keys:
a subscriber decodes nothing, a publisher's packets are dropped and counted."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from socket import SOCK_DGRAM

import pytest

from charter import sdp
from charter.processes import free_port
from charter.tracks import Track
from charter_up import CharterUp, charter_up
from media_processes import SENDERS, Running, Stream, ffmpeg_sender, gst_cannot_send, gst_sender, missing_tools
from media_receivers import FfmpegReceiver, GstReceiver
from waits import settle

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(missing_tools() is not None, reason=f"{missing_tools()}: peer tests need both"),
]

LOCALHOST = "127.0.0.1"
# About 3 s of media each: 30 fps video, 20 ms Opus frames.
FRAMES = {"video": 90, "audio": 150}
ENOUGH = 0.90
TRACKS = {
    "VP8": Track(0x1234_5678, "video", "VP8", 96, 90000, name="camera"),
    "H264": Track(0x9ABC_DEF0, "video", "H264", 97, 90000, name="camera"),
    "opus": Track(0x0F0F_0F0F, "audio", "opus", 111, 48000, channels=2, name="microphone"),
}


@pytest.fixture(scope="module")
def charter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CharterUp]:
    with charter_up(tmp_path_factory.mktemp("charter-up")) as system:
        yield system


def charter_sdp(charter: CharterUp, conference: str, participant: str, *extra: str) -> str:
    """The SDP as `charter sdp` prints it (the command line a user runs)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "sdp",
            conference,
            participant,
            "--controller",
            charter.controller_address,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def sender_stream(session: sdp.ParticipantSession) -> Stream:
    (media,) = sdp.parse(sdp.render(session, direction=sdp.SEND_ONLY)).media
    return Stream.from_media(media)


@pytest.mark.parametrize(
    ("codec", "publisher"),
    [("VP8", "ffmpeg"), ("VP8", "gst"), ("H264", "ffmpeg"), ("H264", "gst"), ("opus", "ffmpeg"), ("opus", "gst")],
)
def test_published_stream_is_decoded_by_ffmpeg_and_gstreamer_subscribers(
    charter: CharterUp, tmp_path: Path, codec: str, publisher: str
) -> None:
    if publisher == "gst" and gst_cannot_send(codec):
        pytest.skip(str(gst_cannot_send(codec)))
    conference = f"{codec.lower()}-from-{publisher}"
    track = TRACKS[codec]
    frames = FRAMES[track.kind]
    charter.create_conference(conference)
    publishing = charter.join(conference, "publisher", [track])
    charter.join(conference, "ffmpeg-subscriber", receive_address=(LOCALHOST, free_port(SOCK_DGRAM)))
    gst_session = charter.join(conference, "gst-subscriber", receive_address=(LOCALHOST, free_port(SOCK_DGRAM)))

    # ffmpeg reads the SDP file `charter sdp` writes, as it is.
    ffmpeg_sdp = charter_sdp(charter, conference, "ffmpeg-subscriber", "--direction", "recv")
    # GStreamer's pipeline is built from the SDP the API returns.
    gst_sdp = charter.api_sdp(conference, "gst-subscriber")
    assert gst_sdp == sdp.render(gst_session)
    gst_streams = [Stream.from_media(m) for m in sdp.parse(gst_sdp).media]
    ssrc = gst_streams[0].ssrc
    with Running() as running:
        ffmpeg_receiver = running.add(FfmpegReceiver("ffmpeg-subscriber", ffmpeg_sdp, tmp_path))
        gst_receiver = running.add(GstReceiver("gst-subscriber", gst_streams, tmp_path))
        ffmpeg_receiver.wait_ready()
        gst_receiver.wait_ready()
        sender = running.add(SENDERS[publisher]("publisher", sender_stream(publishing), frames, tmp_path))
        assert sender.wait(60) == 0, sender.describe()
        settle(lambda: [ffmpeg_receiver.frames(), gst_receiver.frames(ssrc)])
    decoded = {"ffmpeg": ffmpeg_receiver.frames(), "gst": gst_receiver.frames(ssrc)}
    print(f"{codec} from {publisher}: {frames} frames sent, decoded {decoded}")

    published = charter.endpoint_stats(conference, "publisher")
    assert published.counters.packets_in >= frames  # at least a packet per frame
    # Nothing reached the daemon that it had to drop: no stray RTCP or probe from any peer.
    for participant in ("publisher", "ffmpeg-subscriber", "gst-subscriber"):
        counters = charter.endpoint_stats(conference, participant).counters
        assert sum(counters.drops.values()) == 0, (participant, dict(counters.drops))
    for name, count in decoded.items():
        receiver = ffmpeg_receiver if name == "ffmpeg" else gst_receiver
        assert count >= ENOUGH * frames, f"{name} decoded {count} of {frames} frames\n{receiver.process.describe()}"
        assert count <= frames + 1, f"{name} decoded {count} frames, only {frames} were sent"
    charter.end_conference(conference)


def test_wrong_keys_decode_nothing_and_are_counted(charter: CharterUp, tmp_path: Path) -> None:
    """Mallory and Trudy use keys of their own: they decode none of Alice's frames, and
    what Mallory sends fails authentication at the daemon, so Bob never gets any of it."""
    conference = "wrong-keys"
    frames = FRAMES["video"]
    charter.create_conference(conference)
    alice = charter.join(conference, "alice", [TRACKS["VP8"]])
    mallory = charter.join(conference, "mallory", [TRACKS["opus"]], receive_address=(LOCALHOST, free_port(SOCK_DGRAM)))
    trudy = charter.join(conference, "trudy", receive_address=(LOCALHOST, free_port(SOCK_DGRAM)))
    charter.join(conference, "bob", receive_address=(LOCALHOST, free_port(SOCK_DGRAM)))
    bob = charter.session(conference, "bob")

    mallory_stream = Stream.from_media(sdp.parse(sdp.render(mallory, direction=sdp.RECV_ONLY)).media[0])
    trudy_from_alice = trudy.received_from("alice")[0].ssrc
    wrong_key = base64.b64encode(os.urandom(30)).decode()
    trudy_sdp = sdp.render(trudy, ssrc=trudy_from_alice).replace(trudy.receive_key, wrong_key)
    bob_streams = [Stream.from_media(m) for m in sdp.parse(sdp.render(bob)).media]
    from_alice = bob.received_from("alice")[0].ssrc
    from_mallory = bob.received_from("mallory")[0].ssrc
    with Running() as running:
        mallory_gst = running.add(GstReceiver("mallory-gst", [mallory_stream.with_key(os.urandom(30))], tmp_path))
        trudy_ffmpeg = running.add(FfmpegReceiver("trudy-ffmpeg", trudy_sdp, tmp_path))
        bob_gst = running.add(GstReceiver("bob-gst", bob_streams, tmp_path))
        for receiver in (mallory_gst, trudy_ffmpeg, bob_gst):
            receiver.wait_ready()
        alice_sender = running.add(ffmpeg_sender("alice", sender_stream(alice), frames, tmp_path))
        mallory_send = sender_stream(mallory).with_key(os.urandom(30))
        mallory_sender = running.add(gst_sender("mallory", mallory_send, FRAMES["audio"], tmp_path))
        assert alice_sender.wait(60) == 0, alice_sender.describe()
        assert mallory_sender.wait(60) == 0, mallory_sender.describe()
        settle(lambda: [bob_gst.frames(from_alice), mallory_gst.frames(mallory_stream.ssrc), trudy_ffmpeg.frames()])

    decoded = {
        "bob from alice": bob_gst.frames(from_alice),
        "bob from mallory": bob_gst.frames(from_mallory),
        "mallory (gst) from alice": mallory_gst.frames(mallory_stream.ssrc),
        "trudy (ffmpeg) from alice": trudy_ffmpeg.frames(),
    }
    print(
        f"wrong keys: {frames} video frames from alice, {FRAMES['audio']} audio frames from mallory, decoded {decoded}"
    )
    assert decoded["bob from alice"] >= ENOUGH * frames, bob_gst.process.describe()
    assert decoded["mallory (gst) from alice"] == 0
    assert decoded["trudy (ffmpeg) from alice"] == 0
    assert decoded["bob from mallory"] == 0

    # Alice's packets did reach Mallory's and Trudy's receive ports: only the key was wrong.
    for name in ("mallory", "trudy"):
        endpoint = charter.endpoint_stats(conference, name)
        assert sum(s.packets for s in endpoint.subscriptions) >= frames, endpoint
    # Everything Mallory sent failed authentication (a packet per Opus frame), so no packet
    # of its track was forwarded.
    counters = charter.endpoint_stats(conference, "mallory").counters
    print(f"mallory's endpoint: drops {dict(counters.drops)}, packets_in {counters.packets_in}")
    assert counters.drops["auth_failed"] >= FRAMES["audio"]
    assert counters.packets_in == 0
    assert all(t.packets == 0 for t in charter.endpoint_stats(conference, "mallory").tracks)
    charter.end_conference(conference)
