"""One conference across three real media daemons: a controller and three daemons of 5
endpoints each; six participants (real SRTP from plain sockets) join one conference, which
spreads as its daemons fill (3, 2 and 1 participants, linked daemon to daemon), and every
participant receives every other's media, with the SSRCs the API gave it. Keys and routes
cross the links through the same hot path as local ones."""
from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from charter.v1 import controller_pb2 as pb
from charter.v1 import controller_pb2_grpc, mediad_pb2
from participants import Peer, exchange
from processes import (
    Cluster,
    cluster,
    conference_stub,
    free_udp_range,
    live_daemons,
    mediad_stub,
    registry_stub,
    start_controller,
    start_mediad,
)
from waits import wait_until


@pytest.fixture(scope="module")
def charter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("cascade"), daemons=3, ports_per_daemon=8, capacity=5, lease_ttl=2.0,
                 check_exit=False) as running:
        yield running


def join_all(api: controller_pb2_grpc.ConferenceServiceStub, conference_id: str, prefix: str,
             count: int) -> list[Peer]:
    """A new conference and `count` participants in it, each publishing one track."""
    api.CreateConference(pb.CreateConferenceRequest(conference_id=conference_id), timeout=10)
    ssrcs = random.sample(range(1, 2**32), count)
    peers = [Peer(f"{prefix}{i}", [ssrcs[i]]) for i in range(count)]
    for peer in peers:
        peer.joined(api.Join(peer.join_request(conference_id), timeout=10).participant)
    return peers


def test_six_participants_over_three_daemons_each_receive_all_others(charter: Cluster) -> None:
    api = conference_stub(charter.controller)
    peers = join_all(api, "spread", "p", 6)
    try:
        placed = [peer.session.daemon_id for peer in peers if peer.session is not None]
        assert sorted(placed.count(d) for d in set(placed)) == [1, 2, 3], placed

        def everyone_has_everyone() -> bool:
            return all(len(p.counts()) == 5 and min(p.counts().values()) >= 5 for p in peers)

        exchange(peers, everyone_has_everyone, timeout=30)
        for peer in peers:
            assert peer.session is not None
            expected = {(s.publisher_id, s.track.ssrc, s.ssrc) for s in peer.session.subscriptions}
            got = set(peer.counts())
            # Subscriptions made after it joined are in the conference, not in its Join answer.
            assert got >= expected and {k[0] for k in got} == {q.participant_id for q in peers} - {peer.participant_id}
        # The links: an end on each daemon per other daemon of the conference.
        for daemon in charter.daemons:
            held = mediad_stub(daemon).ListEndpoints(mediad_pb2.ListEndpointsRequest(conference_id="spread"),
                                                     timeout=10).endpoints
            links = [e.endpoint_id for e in held if "/~link~" in e.endpoint_id]
            assert len(links) == 2, (daemon.name, [e.endpoint_id for e in held])
        api.EndConference(pb.EndConferenceRequest(conference_id="spread"), timeout=10)
        for daemon in charter.daemons:
            assert mediad_stub(daemon).ListEndpoints(mediad_pb2.ListEndpointsRequest(conference_id="spread"),
                                                     timeout=10).endpoints == []
    finally:
        for peer in peers:
            peer.close()


def test_a_killed_daemon_of_a_spread_conference_moves_only_its_participants(charter: Cluster) -> None:
    api = conference_stub(charter.controller)
    peers = join_all(api, "part", "q", 4)
    try:
        placed = {peer.participant_id: peer.session.daemon_id for peer in peers if peer.session is not None}
        alone = [d for d in set(placed.values()) if list(placed.values()).count(d) == 1]
        assert alone, placed
        victim = alone[0]
        (moving,) = [p for p in peers if placed[p.participant_id] == victim]
        staying = [p for p in peers if p is not moving]
        exchange(peers, lambda: all(len(p.counts()) == 3 for p in peers), timeout=30)
        keys = {p.participant_id: p.session.send_key for p in staying if p.session is not None}

        charter.daemon(victim).signal(signal.SIGKILL)

        def moved() -> bool:
            session = api.GetParticipant(pb.GetParticipantRequest(conference_id="part",
                                                                  participant_id=moving.participant_id), timeout=10)
            return session.daemon_id != victim
        wait_until(moved, timeout=30, what="the participant of the killed daemon to move")
        for peer in peers:
            peer.joined(api.GetParticipant(pb.GetParticipantRequest(conference_id="part",
                                                                    participant_id=peer.participant_id), timeout=10))
            peer.received.clear()
        # The others kept their daemons and keys; everyone receives everyone again.
        for peer in staying:
            assert peer.session is not None
            assert peer.session.daemon_id == placed[peer.participant_id]
            assert peer.session.send_key == keys[peer.participant_id]
        exchange(peers, lambda: all(len(p.counts()) == 3 and min(p.counts().values()) >= 3 for p in peers),
                 timeout=30)
        for peer in peers:
            assert peer.session is not None
            assert set(peer.counts()) == {(s.publisher_id, s.track.ssrc, s.ssrc) for s in peer.session.subscriptions}
    finally:
        for peer in peers:
            peer.close()


def test_participants_are_placed_on_daemons_of_their_region(tmp_path: Path) -> None:
    """Two daemons that name their regions (--region): a participant that joins with a region
    goes to that region's daemon, and the conference spreads to it while its first daemon
    has room; their media crosses the link between them."""
    controller = start_controller(tmp_path, lease_ttl=2.0)
    started = [controller]
    try:
        for daemon_id, region in (("mediad-eu", "eu-west"), ("mediad-us", "us-east")):
            started.append(start_mediad(tmp_path, controller.address, daemon_id, free_udp_range(8),
                                        options=("--region", region)))
        wait_until(lambda: live_daemons(controller) == {"mediad-eu", "mediad-us"}, what="both daemons to register")
        listed = registry_stub(controller).ListDaemons(pb.ListDaemonsRequest(), timeout=10).daemons
        assert {d.daemon.daemon_id: d.daemon.region for d in listed} == {"mediad-eu": "eu-west",
                                                                           "mediad-us": "us-east"}
        api = conference_stub(controller)
        api.CreateConference(pb.CreateConferenceRequest(conference_id="near"), timeout=10)
        ssrcs = random.sample(range(1, 2**32), 3)
        peers = [Peer(name, [ssrc]) for name, ssrc in zip(("eve", "sam", "una"), ssrcs, strict=True)]
        try:
            for peer, region in zip(peers, ("eu-west", "us-east", "eu-west"), strict=True):
                request = peer.join_request("near")
                request.region = region
                peer.joined(api.Join(request, timeout=10).participant)
            placed = {p.participant_id: (p.session.daemon_id, p.session.region) for p in peers if p.session}
            assert placed == {"eve": ("mediad-eu", "eu-west"), "sam": ("mediad-us", "us-east"),
                              "una": ("mediad-eu", "eu-west")}
            exchange(peers, lambda: all(len(p.counts()) == 2 and min(p.counts().values()) >= 5 for p in peers),
                     timeout=30)
            with pytest.raises(grpc.RpcError) as refused:
                api.Join(pb.JoinRequest(conference_id="near", participant_id="x", region="not a region"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "region" in str(refused.value.details())
        finally:
            for peer in peers:
                peer.close()
    finally:
        for process in started:  # the controller first: it releases the conference
            process.stop()
