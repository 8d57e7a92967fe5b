"""A Join cannot aim a conference's media at a host that never asked for it: with real
processes and a daemon that trusts no receiver network, a participant that gives an address
and never sends gets the daemon's small budget of packets and then nothing (each held-back
packet counted in its stats), one that sends gets everything, and the silent one gets
everything too once it sends an SRTCP report with its key."""
from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest

from charter.v1 import controller_pb2 as pb
from charter.v1 import mediad_pb2
from controller.conferences import endpoint_id
from participants import Peer
from processes import Cluster, cluster, conference_stub, mediad_stub
from rtp import build_rtcp_receiver_report
from waits import wait_until

BUDGET = 20


@pytest.fixture(scope="module")
def charter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("proof"), daemons=1,
                 mediad_options=("--trusted-receivers", "", "--unproven-budget", str(BUDGET))) as running:
        yield running


def test_a_receiver_gets_a_budget_until_it_sends(charter: Cluster) -> None:
    api = conference_stub(charter.controller)
    conference = api.CreateConference(pb.CreateConferenceRequest(name="proof"), timeout=10)
    daemon = mediad_stub(charter.daemon(conference.daemon_id))
    ssrcs = random.sample(range(1, 2**32), 2)
    publisher = Peer("publisher", [ssrcs[0]])        # latched from what it sends: proven by sending
    listener = Peer("listener", [])                  # gives its address, never sends
    talker = Peer("talker", [ssrcs[1]])              # gives its address and sends
    peers = [publisher, listener, talker]

    def stats(peer: Peer) -> mediad_pb2.EndpointStats:
        reply = daemon.GetStats(mediad_pb2.GetStatsRequest(
            endpoint_id=endpoint_id(conference.conference_id, peer.participant_id)), timeout=10)
        (endpoint,) = reply.endpoints
        return endpoint

    def from_publisher(peer: Peer) -> int:
        return sum(1 for r in peer.received if r.publisher_id == "publisher")

    def publish(rounds: int) -> None:
        before = stats(publisher).counters.packets_in
        for k in range(rounds):
            publisher.send_round()
            if k % 10 == 9:
                time.sleep(0.005)
        wait_until(lambda: stats(publisher).counters.packets_in == before + rounds, what="the publisher's packets")
        for peer in (listener, talker):
            # Everything the daemon sent it has arrived (RTP only: it was sent no RTCP).
            wait_until(lambda p=peer: p.receive() >= 0 and len(p.received) == stats(p).counters.packets_out,
                       what=f"what the daemon sent {peer.participant_id}")

    try:
        for peer in peers:
            reply = api.Join(peer.join_request(conference.conference_id, give_address=peer is not publisher),
                             timeout=10)
            peer.joined(reply.participant)
        assert not stats(listener).proven and not stats(talker).proven
        talker.send_round()
        wait_until(lambda: stats(talker).proven, what="the talker proven by its first packet")
        publisher.send_round()
        wait_until(lambda: stats(publisher).proven, what="the publisher latched")
        publish(3 * BUDGET - 1)

        assert from_publisher(talker) == 3 * BUDGET
        # The listener was sent the talker's first packet and the publisher's 3 * BUDGET.
        listening = stats(listener)
        assert not listening.proven
        assert listening.counters.rtcp_out == 0  # all it got was media
        assert len(listener.received) == BUDGET
        assert sum(r.packets for r in listening.subscriptions) == BUDGET
        assert sum(r.dropped_unproven for r in listening.subscriptions) == 2 * BUDGET + 1
        assert [s.dropped_unproven for s in stats(talker).subscriptions] == [0]

        # The listener sends a report with its key from its address: it gets everything now.
        assert listener._tx is not None and listener.session is not None
        media = (listener.session.media_address.ip, listener.session.media_address.port)
        listener.sock.sendto(listener._tx.protect_rtcp(build_rtcp_receiver_report(0x715)), media)
        wait_until(lambda: stats(listener).proven, what="the listener proven by its report")
        received = from_publisher(listener)
        publish(BUDGET)
        assert from_publisher(listener) == received + BUDGET
        assert sum(r.dropped_unproven for r in stats(listener).subscriptions) == 2 * BUDGET + 1
    finally:
        for peer in peers:
            peer.close()
        api.EndConference(pb.EndConferenceRequest(conference_id=conference.conference_id), timeout=10)
