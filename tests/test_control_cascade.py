"""One conference across three real media daemons: a controller and three daemons of 5
endpoints each; six participants (real SRTP from plain sockets) join one conference, which
spreads as its daemons fill (3, 2 and 1 participants, linked daemon to daemon), and every
participant receives every other's media, with the SSRCs the API gave it. Keys and routes
cross the links through the same hot path as local ones."""
from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from charter.v1 import controller_pb2 as pb
from charter.v1 import mediad_pb2
from participants import Peer, exchange
from processes import Cluster, cluster, conference_stub, mediad_stub


@pytest.fixture(scope="module")
def charter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("cascade"), daemons=3, ports_per_daemon=8, capacity=5) as running:
        yield running


def test_six_participants_over_three_daemons_each_receive_all_others(charter: Cluster) -> None:
    api = conference_stub(charter.controller)
    api.CreateConference(pb.CreateConferenceRequest(conference_id="spread"), timeout=10)
    ssrcs = random.sample(range(1, 2**32), 6)
    peers = [Peer(f"p{i}", [ssrcs[i]]) for i in range(6)]
    try:
        for peer in peers:
            peer.joined(api.Join(peer.join_request("spread"), timeout=10).participant)
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
