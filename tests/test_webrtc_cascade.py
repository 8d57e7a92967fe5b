"""WebRTC participants (aiortc) in one conference spread over two real media daemons: each
daemon names its region, and each participant joins from one, so that the conference
spreads by placement near participants. Browsers' media crosses the relay link between the
daemons both ways (VP8 and Opus, ICE-lite and DTLS-SRTP at each end), a late joiner on the
far daemon is seen and sees everyone, and a leaver's copies leave the link."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from aiortc_peer import AiortcParticipant, allow_loopback, decode_each_other, describe
from charter.v1 import controller_pb2 as pb
from charter.v1 import controller_pb2_grpc, mediad_pb2
from processes import (
    Process,
    free_udp_range,
    live_daemons,
    mediad_stub,
    start_controller,
    start_mediad,
)
from waits import wait_until

pytestmark = pytest.mark.peers

REGIONS = {"mediad-eu": "eu-west", "mediad-us": "us-east"}


@pytest.fixture(scope="module")
def two_regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Process]]:
    """A controller (key "controller") and a daemon in each of two regions."""
    allow_loopback()
    workdir = tmp_path_factory.mktemp("webrtc-cascade")
    controller = start_controller(workdir, lease_ttl=2.0)
    started = {"controller": controller}
    try:
        for daemon_id, region in REGIONS.items():
            started[daemon_id] = start_mediad(workdir, controller.address, daemon_id, free_udp_range(16),
                                              options=("--region", region))
        wait_until(lambda: live_daemons(controller) == set(REGIONS), what="both daemons to register")
        yield started
    finally:
        for process in reversed(started.values()):
            process.stop()


def relayed_tracks(daemon: Process, conference_id: str) -> int:
    """The tracks the link ends on `daemon` publish (relayed copies)."""
    reply = mediad_stub(daemon).ListEndpoints(mediad_pb2.ListEndpointsRequest(conference_id=conference_id),
                                              timeout=10)
    return sum(len(e.tracks) for e in reply.endpoints if "/~link~" in e.endpoint_id)


def test_browsers_on_two_daemons_see_and_hear_each_other_across_the_link(two_regions: dict[str, Process]) -> None:
    controller = two_regions["controller"]

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = controller_pb2_grpc.ConferenceServiceStub(channel)
            await api.CreateConference(pb.CreateConferenceRequest(conference_id="far-apart"), timeout=10)
            ana = AiortcParticipant(api, "far-apart", "ana", region="eu-west")
            bo = AiortcParticipant(api, "far-apart", "bo", region="us-east")
            cy = AiortcParticipant(api, "far-apart", "cy", region="us-east")
            try:
                placed = {p.name: (await p.join()).daemon_id for p in (ana, bo)}
                assert placed == {"ana": "mediad-eu", "bo": "mediad-us"}
                await decode_each_other([ana, bo])
                audio = {p.name: p.received[q.participant_id].audio_frames
                         for p, q in ((ana, bo), (bo, ana))}
                await asyncio.sleep(1.0)
                for p, q in ((ana, bo), (bo, ana)):
                    assert p.received[q.participant_id].audio_frames > audio[p.name], f"{p.name} hears {q.name}"
                # A late joiner on the far daemon: ana's tracks cross the link once for both.
                assert (await cy.join()).daemon_id == "mediad-us"
                await decode_each_other([ana, bo, cy])
                assert relayed_tracks(two_regions["mediad-us"], "far-apart") == 2  # ana's video and audio
                assert relayed_tracks(two_regions["mediad-eu"], "far-apart") == 4  # bo's and cy's
                assert all(not p.errors for p in (ana, bo, cy)), describe(ana, bo, cy)
                # Leave answers once the far end dropped the leaver's copies.
                await cy.leave()
                assert relayed_tracks(two_regions["mediad-eu"], "far-apart") == 2
            finally:
                for peer in (ana, bo, cy):
                    await peer.leave()  # the last one out ends the conference

    asyncio.run(scenario())
    for daemon_id in REGIONS:
        held = mediad_stub(two_regions[daemon_id]).ListEndpoints(
            mediad_pb2.ListEndpointsRequest(conference_id="far-apart"), timeout=10).endpoints
        assert list(held) == [], daemon_id
