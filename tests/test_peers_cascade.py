"""Six real media participants in one conference spread over three real media daemons.

A controller and three daemons of 5 endpoints each; six participants join one conference,
which spreads as its daemons fill (3, 2 and 1 participants, the daemons linked pairwise).
Each publishes real encoded video (VP8 or H.264, from ffmpeg or GStreamer) and receives the
other five on its own receive port, decoded by GStreamer:

1. every receiver decodes at least 90 % of every other participant's frames;
2. the daemon of the lone participant is killed while the other five keep sending: that one
   moves to a daemon that is left, and the other five go on decoding each other with no
   more loss than before (their daemons, keys and streams are untouched);
3. once the moved participant is re-wired from its new session (and the others from theirs:
   its track comes with a new SSRC), everyone again decodes at least 90 % of everyone.
"""
from __future__ import annotations

import dataclasses
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from socket import SOCK_DGRAM

import pytest

from charter import sdp
from charter.processes import free_port
from charter.sdp import ParticipantSession
from charter.tracks import Track
from charter.v1 import controller_pb2 as pb
from charter.v1 import controller_pb2_grpc
from media_processes import SENDERS, MediaProcess, Picture, Running, Stream, gst_cannot_send, missing_tools
from media_receivers import GstReceiver
from processes import Cluster, cluster, conference_stub
from waits import settle, wait_until

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(missing_tools() is not None, reason=f"{missing_tools()}: peer tests need both"),
]

# Thirty decoders and six encoders share two cores with four Charter processes: small pictures.
PICTURE = Picture(160, 120, 15)
SECONDS = 5
FRAMES = SECONDS * PICTURE.fps
ENOUGH = 0.90
CONFERENCE = "spread-media"
# (participant, codec, payload type, sending tool)
PARTICIPANTS = [
    ("ann", "VP8", 96, "ffmpeg"),
    ("bob", "H264", 97, "gst"),
    ("cat", "H264", 97, "ffmpeg"),
    ("dan", "VP8", 96, "gst"),
    ("eve", "VP8", 96, "ffmpeg"),
    ("fay", "H264", 97, "gst"),
]
TOOL = {name: tool for name, _, _, tool in PARTICIPANTS}
NAMES = [name for name, *_ in PARTICIPANTS]


@pytest.fixture(scope="module")
def charter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("peers-cascade"), daemons=3, ports_per_daemon=8, capacity=5,
                 lease_ttl=2.0, check_exit=False) as running:
        yield running


class Conference:
    """The conference as its participants' tools see it: sessions from the API, a GStreamer
    receiver per participant, frames decoded per (receiver, publisher)."""

    def __init__(self, api: controller_pb2_grpc.ConferenceServiceStub, workdir: Path, running: Running) -> None:
        self.api = api
        self.workdir = workdir
        self.running = running
        self.sessions: dict[str, ParticipantSession] = {}
        self.daemons: dict[str, str] = {}
        self.receivers: dict[str, GstReceiver] = {}
        self.round = 0
        self.sends = 0

    def refresh(self) -> None:
        for name in NAMES:
            request = pb.GetParticipantRequest(conference_id=CONFERENCE, participant_id=name)
            participant = self.api.GetParticipant(request, timeout=10)
            self.sessions[name] = sdp.from_participant(participant)
            self.daemons[name] = participant.daemon_id

    def receive(self, names: list[str]) -> None:
        """(Re)start the receivers of `names` from their sessions as they are now."""
        self.round += 1
        for name in names:
            old = self.receivers.pop(name, None)
            if old is not None:
                old.stop()
        for name in names:
            streams = [Stream.from_media(m)
                       for m in sdp.parse(sdp.render(self.sessions[name], direction=sdp.RECV_ONLY)).media]
            assert len(streams) == len(NAMES) - 1, (name, streams)
            self.receivers[name] = self.running.add(GstReceiver(f"{name}-receiver-{self.round}", streams,
                                                                self.workdir))
        for name in names:
            self.receivers[name].wait_ready()

    def send(self, names: list[str], frames: int) -> list[MediaProcess]:
        """Senders of `names` for this round: each round's numbering starts above the last's
        (a publisher that stays keeps its key and SSRC)."""
        senders = []
        picture = dataclasses.replace(PICTURE, first_seq=1000 + 20000 * self.sends)
        self.sends += 1
        for name in names:
            (media,) = sdp.parse(sdp.render(self.sessions[name], direction=sdp.SEND_ONLY)).media
            sender = SENDERS[TOOL[name]](f"{name}-sender-{self.sends}", Stream.from_media(media), frames,
                                         self.workdir, picture)
            senders.append(self.running.add(sender))
        return senders

    def decoded(self, names: list[str]) -> dict[tuple[str, str], int]:
        """Frames each receiver of `names` decoded from each other participant of `names`."""
        return {
            (name, publisher): self.receivers[name].frames(subscription.ssrc)
            for name in names
            for publisher in names
            if publisher != name
            for subscription in self.sessions[name].received_from(publisher)
        }

    def settled(self, names: list[str]) -> dict[tuple[str, str], int]:
        settle(lambda: list(self.decoded(names).values()))
        return self.decoded(names)


def short_of(counts: dict[tuple[str, str], int], frames: int, what: str) -> None:
    print(f"{what}: {frames} frames sent by each; decoded (receiver, publisher) -> frames:")
    for (name, publisher), count in sorted(counts.items()):
        print(f"  {name} <- {publisher} {count:4d}  {100 * count / frames:5.1f} %")
    short = {pair: count for pair, count in counts.items() if count < ENOUGH * frames}
    assert not short, f"{what}: decoded fewer than {ENOUGH:.0%} of {frames} frames: {short}"
    assert all(count <= frames + 1 for count in counts.values()), counts


def test_six_real_participants_over_three_daemons_and_one_daemon_killed(charter: Cluster, tmp_path: Path) -> None:
    for _, codec, _, tool in PARTICIPANTS:
        if tool == "gst" and gst_cannot_send(codec):
            pytest.skip(str(gst_cannot_send(codec)))
    api = conference_stub(charter.controller)
    api.CreateConference(pb.CreateConferenceRequest(conference_id=CONFERENCE), timeout=10)
    ssrcs = random.sample(range(1, 2**32), len(PARTICIPANTS))
    for (name, codec, payload_type, _), ssrc in zip(PARTICIPANTS, ssrcs, strict=True):
        request = pb.JoinRequest(conference_id=CONFERENCE, participant_id=name,
                                 tracks=[Track(ssrc, "video", codec, payload_type, 90000, name="camera").to_proto()])
        request.receive_address.ip, request.receive_address.port = "127.0.0.1", free_port(SOCK_DGRAM)
        api.Join(request, timeout=10)

    with Running() as running:
        conference = Conference(api, tmp_path, running)
        conference.refresh()
        placed = dict(conference.daemons)
        assert sorted(list(placed.values()).count(d) for d in set(placed.values())) == [1, 2, 3], placed

        # 1. Everyone to everyone, across the three daemons.
        conference.receive(NAMES)
        for sender in conference.send(NAMES, FRAMES):
            assert sender.wait(SECONDS * 4) == 0, sender.describe()
        short_of(conference.settled(NAMES), FRAMES, "six over three daemons")

        # 2. The lone participant's daemon killed while the other five send.
        (moving,) = [name for name in NAMES if list(placed.values()).count(placed[name]) == 1]
        staying = [name for name in NAMES if name != moving]
        victim = placed[moving]
        keys = {name: (conference.sessions[name].send_key, conference.sessions[name].receive_key)
                for name in staying}
        before = conference.decoded(staying)
        senders = conference.send(staying, FRAMES)
        wait_until(lambda: all(now > before[pair] for pair, now in conference.decoded(staying).items()),
                   what="the five to decode each other again")
        charter.daemon(victim).signal(signal.SIGKILL)

        def moved() -> bool:
            request = pb.GetParticipantRequest(conference_id=CONFERENCE, participant_id=moving)
            return api.GetParticipant(request, timeout=10).daemon_id not in ("", victim)
        wait_until(moved, timeout=30, what=f"{moving} to move off the killed daemon")
        for sender in senders:
            assert sender.wait(SECONDS * 4) == 0, sender.describe()
        after = conference.settled(staying)
        short_of({pair: after[pair] - before[pair] for pair in before}, FRAMES,
                 f"the five others while {moving}'s daemon was killed")
        conference.refresh()
        for name in staying:
            session = conference.sessions[name]
            assert conference.daemons[name] == placed[name], (name, conference.daemons[name])
            assert (session.send_key, session.receive_key) == keys[name], name
        assert conference.daemons[moving] != victim

        # 3. Re-wired from the sessions as they are now: everyone to everyone again.
        conference.receive(NAMES)
        for sender in conference.send(NAMES, FRAMES):
            assert sender.wait(SECONDS * 4) == 0, sender.describe()
        short_of(conference.settled(NAMES), FRAMES, f"six over two daemons after {moving} moved")
    api.EndConference(pb.EndConferenceRequest(conference_id=CONFERENCE), timeout=10)
