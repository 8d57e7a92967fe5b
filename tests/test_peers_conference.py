"""A conference of four: each participant publishes 8 s of real encoded video (VP8 or
H.264, from ffmpeg or GStreamer) through `charter up` and receives the other three on its
one receive port; every receiver decodes at least 95 % of every other participant's frames."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from socket import SOCK_DGRAM

import pytest

from charter import sdp
from charter.processes import free_port
from charter.tracks import Track
from charter_up import CharterUp, charter_up
from media_processes import SENDERS, VIDEO_FPS, Running, Stream, gst_cannot_send, missing_tools, random_ssrcs
from media_receivers import GstReceiver
from waits import settle

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(missing_tools() is not None, reason=f"{missing_tools()}: peer tests need both"),
]

SECONDS = 8
FRAMES = SECONDS * VIDEO_FPS
ENOUGH = 0.95
# (participant, codec, payload type, sending tool)
PARTICIPANTS = [
    ("ada", "VP8", 96, "ffmpeg"),
    ("ben", "VP8", 96, "gst"),
    ("cy", "H264", 97, "ffmpeg"),
    ("dee", "H264", 97, "gst"),
]


@pytest.fixture(scope="module")
def charter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CharterUp]:
    with charter_up(tmp_path_factory.mktemp("charter-up")) as system:
        yield system


def test_four_participants_all_to_all_for_8_seconds(charter: CharterUp, tmp_path: Path) -> None:
    for _, codec, _, tool in PARTICIPANTS:
        if tool == "gst" and gst_cannot_send(codec):
            pytest.skip(str(gst_cannot_send(codec)))
    conference = "all-to-all"
    charter.create_conference(conference)
    ssrcs = random_ssrcs()
    for participant, codec, payload_type, _ in PARTICIPANTS:
        track = Track(next(ssrcs), "video", codec, payload_type, 90000, name="camera")
        charter.join(conference, participant, [track], receive_address=("127.0.0.1", free_port(SOCK_DGRAM)))
    # Everyone's subscriptions as they are once all have joined.
    sessions = {p: charter.session(conference, p) for p, *_ in PARTICIPANTS}

    receivers: dict[str, GstReceiver] = {}

    def decoded() -> dict[tuple[str, str], int]:
        return {
            (name, publisher): receivers[name].frames(track.ssrc)
            for name, session in sessions.items()
            for publisher, *_ in PARTICIPANTS
            for track in session.received_from(publisher)
        }

    with Running() as running:
        for participant, session in sessions.items():
            streams = [Stream.from_media(m) for m in sdp.parse(sdp.render(session, direction=sdp.RECV_ONLY)).media]
            assert len(streams) == len(PARTICIPANTS) - 1
            receivers[participant] = running.add(GstReceiver(f"{participant}-receiver", streams, tmp_path))
        for receiver in receivers.values():
            receiver.wait_ready()
        senders = []
        for participant, _, _, tool in PARTICIPANTS:
            (media,) = sdp.parse(sdp.render(sessions[participant], direction=sdp.SEND_ONLY)).media
            stream = Stream.from_media(media)
            senders.append(running.add(SENDERS[tool](f"{participant}-sender", stream, FRAMES, tmp_path)))
        for sender in senders:
            assert sender.wait(SECONDS * 4) == 0, sender.describe()
        settle(lambda: list(decoded().values()))

    counts = decoded()
    print(f"all-to-all: {FRAMES} frames sent by each; decoded (receiver, publisher) -> frames:")
    for (name, publisher), count in sorted(counts.items()):
        print(f"  {name:>4} <- {publisher:<4} {count:4d}  {100 * count / FRAMES:5.1f} %")
    assert len(counts) == len(PARTICIPANTS) * (len(PARTICIPANTS) - 1)
    short = {pair: count for pair, count in counts.items() if count < ENOUGH * FRAMES}
    assert not short, f"decoded fewer than {ENOUGH:.0%} of {FRAMES} frames: {short}"
    assert all(count <= FRAMES + 1 for count in counts.values()), counts
    for participant, *_ in PARTICIPANTS:
        counters = charter.endpoint_stats(conference, participant).counters
        assert sum(counters.drops.values()) == 0, (participant, dict(counters.drops))
    charter.end_conference(conference)
