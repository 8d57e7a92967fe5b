"""End to end with real processes: a controller, two media daemons and three participants
sending real SRTP. Each receives the other two's media with the SSRCs and keys the API gave
it; a participant that leaves gets nothing more and its port is free again; ending the
conference frees every port and leaves no state on any daemon."""

from __future__ import annotations

import random
from collections.abc import Iterator

import grpc
import pytest

from charter.v1 import controller_pb2 as pb
from charter.v1 import media_pb2, mediad_pb2
from participants import Peer, exchange
from processes import Cluster, cluster, conference_stub, mediad_stub, udp_port_free


@pytest.fixture(scope="module")
def charter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("media"), daemons=2) as running:
        yield running


def expected(peer: Peer, session: pb.Participant) -> set[tuple[str, int, int]]:
    return {(s.publisher_id, s.track.ssrc, s.ssrc) for s in session.subscriptions}


def test_three_participants_exchange_media_then_leave_and_end(charter: Cluster) -> None:
    api = conference_stub(charter.controller)
    conference = api.CreateConference(pb.CreateConferenceRequest(name="three"), timeout=10)
    daemon = charter.daemon(conference.daemon_id)
    ssrcs = random.sample(range(1, 2**32), 4)
    alice = Peer("alice", [ssrcs[0]])
    bob = Peer("bob", [ssrcs[1], ssrcs[2]], kinds=[media_pb2.VIDEO, media_pb2.AUDIO])
    carol = Peer("carol", [ssrcs[3]])
    peers = [alice, bob, carol]
    try:
        # carol gives her address; alice and bob are latched onto when they first send.
        for peer in peers:
            reply = api.Join(peer.join_request(conference.conference_id, give_address=peer is carol), timeout=10)
            assert reply.participant.participant_id == peer.participant_id
            assert reply.participant.daemon_id == conference.daemon_id
            first, last = charter.port_ranges[conference.daemon_id]
            assert first <= reply.participant.media_address.port <= last
            peer.joined(reply.participant)
        assert len(bob.session.subscriptions) == 1  # alice's track, when bob joined

        sessions = {
            p.participant_id: api.GetParticipant(
                pb.GetParticipantRequest(conference_id=conference.conference_id, participant_id=p.participant_id),
                timeout=10,
            )
            for p in peers
        }
        for peer in peers:
            session = sessions[peer.participant_id]
            assert session.send_key == peer.session.send_key and session.receive_key == peer.session.receive_key
            others = {(p.participant_id, s) for p in peers if p is not peer for s in p.track_ssrcs}
            assert {(s.publisher_id, s.track.ssrc) for s in session.subscriptions} == others
            received_ssrcs = [s.ssrc for s in session.subscriptions]
            assert len(set(received_ssrcs)) == len(received_ssrcs)
            assert not set(received_ssrcs) & set(peer.track_ssrcs)
        ports = {p.participant_id: p.session.media_address.port for p in peers}
        assert len(set(ports.values())) == 3

        def everyone_has_everything() -> bool:
            return all(
                set(p.counts()) >= expected(p, sessions[p.participant_id])
                and min(p.counts()[k] for k in expected(p, sessions[p.participant_id])) >= 3
                for p in peers
            )

        exchange(peers, everyone_has_everything)
        for peer in peers:
            # Nothing arrives but the tracks and SSRCs the API gave (the keys already matched).
            assert set(peer.counts()) == expected(peer, sessions[peer.participant_id])

        # alice leaves: nothing more reaches her, her port is free, bob and carol go on.
        left = api.Leave(pb.LeaveRequest(conference_id=conference.conference_id, participant_id="alice"), timeout=10)
        assert not left.conference_ended
        alice.drain()
        alice.received.clear()
        assert udp_port_free(ports["alice"])
        with pytest.raises(grpc.RpcError) as error:
            api.GetParticipant(
                pb.GetParticipantRequest(conference_id=conference.conference_id, participant_id="alice"), timeout=10
            )
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        bob_now = api.GetParticipant(
            pb.GetParticipantRequest(conference_id=conference.conference_id, participant_id="bob"), timeout=10
        )
        assert {s.publisher_id for s in bob_now.subscriptions} == {"carol"}

        before = {p.participant_id: p.counts() for p in (bob, carol)}

        def fresh_media_between_bob_and_carol() -> bool:
            return all(sum(p.counts().values()) >= sum(before[p.participant_id].values()) + 10 for p in (bob, carol))

        for _ in range(20):
            alice.send_round()  # alice still sends: her old port is closed, nothing comes back
        exchange([bob, carol], fresh_media_between_bob_and_carol)
        alice.receive()
        assert alice.received == []
        for peer in (bob, carol):
            assert all(publisher != "alice" for publisher, _, _ in peer.counts() - before[peer.participant_id])

        # The conference ends: every port free, no state on any daemon.
        ended = api.EndConference(pb.EndConferenceRequest(conference_id=conference.conference_id), timeout=10)
        assert ended.participants_removed == 2
        assert all(udp_port_free(p) for p in charter.all_ports())
        for d in charter.daemons:
            endpoints = mediad_stub(d).ListEndpoints(
                mediad_pb2.ListEndpointsRequest(conference_id=conference.conference_id), timeout=10
            )
            assert list(endpoints.endpoints) == []
        assert mediad_stub(daemon).GetStats(mediad_pb2.GetStatsRequest(), timeout=10).endpoint_count == 0
        with pytest.raises(grpc.RpcError) as error:
            api.GetConference(pb.GetConferenceRequest(conference_id=conference.conference_id), timeout=10)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        for peer in peers:
            peer.close()


def test_last_participant_leaving_ends_the_conference(charter: Cluster) -> None:
    api = conference_stub(charter.controller)
    conference = api.CreateConference(pb.CreateConferenceRequest(), timeout=10)
    peer = Peer("solo", [random.randrange(1, 2**32)])
    try:
        reply = api.Join(peer.join_request(conference.conference_id), timeout=10)
        port = reply.participant.media_address.port
        assert not udp_port_free(port)
        left = api.Leave(pb.LeaveRequest(conference_id=conference.conference_id, participant_id="solo"), timeout=10)
        assert left.conference_ended
        assert udp_port_free(port)
        with pytest.raises(grpc.RpcError) as error:
            api.GetConference(pb.GetConferenceRequest(conference_id=conference.conference_id), timeout=10)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        peer.close()


def test_gcm_suite_and_participant_chosen_send_key(charter: Cluster) -> None:
    import base64
    import os

    api = conference_stub(charter.controller)
    conference = api.CreateConference(pb.CreateConferenceRequest(), timeout=10)
    own_key = os.urandom(28)
    a = Peer("gcm-a", [random.randrange(1, 2**32)])
    b = Peer("gcm-b", [random.randrange(1, 2**32)])
    try:
        request = a.join_request(conference.conference_id)
        request.suite = media_pb2.AEAD_AES_128_GCM
        request.send_key = base64.b64encode(own_key).decode()
        a.joined(api.Join(request, timeout=10).participant)
        assert base64.b64decode(a.session.send_key) == own_key
        request = b.join_request(conference.conference_id)
        request.suite = media_pb2.AEAD_AES_128_GCM
        b.joined(api.Join(request, timeout=10).participant)
        assert b.session.suite == media_pb2.AEAD_AES_128_GCM
        exchange([a, b], lambda: sum(a.counts().values()) >= 3 and sum(b.counts().values()) >= 3)
    finally:
        api.EndConference(pb.EndConferenceRequest(conference_id=conference.conference_id), timeout=10)
        a.close()
        b.close()


def test_stats_unary_and_streaming(charter: Cluster) -> None:
    from google.protobuf.duration_pb2 import Duration

    api = conference_stub(charter.controller)
    conference = api.CreateConference(pb.CreateConferenceRequest(), timeout=10)
    a = Peer("stats-a", [random.randrange(1, 2**32)])
    b = Peer("stats-b", [random.randrange(1, 2**32)])
    try:
        for peer in (a, b):
            peer.joined(api.Join(peer.join_request(conference.conference_id), timeout=10).participant)
        exchange([a, b], lambda: sum(a.counts().values()) >= 5 and sum(b.counts().values()) >= 5)
        daemon = mediad_stub(charter.daemon(conference.daemon_id))
        stats = daemon.GetStats(mediad_pb2.GetStatsRequest(conference_id=conference.conference_id), timeout=10)
        assert len(stats.endpoints) == 2 and stats.endpoint_count >= 2
        for endpoint in stats.endpoints:
            assert endpoint.counters.packets_in >= 5 and endpoint.counters.packets_out >= 5
            assert endpoint.idle_seconds >= 0
            assert [t.packets >= 5 for t in endpoint.tracks] == [True]
            assert [s.packets >= 5 for s in endpoint.subscriptions] == [True]
        # The conference's own totals and counts, not the daemon's: once b has left, a's alone
        # (the daemon's totals keep what b's closed endpoint counted).
        assert stats.totals.packets_in == sum(e.counters.packets_in for e in stats.endpoints)
        assert (stats.endpoint_count, stats.track_count, stats.subscription_count) == (2, 2, 2)
        api.Leave(pb.LeaveRequest(conference_id=conference.conference_id, participant_id=b.participant_id), timeout=10)
        alone = daemon.GetStats(mediad_pb2.GetStatsRequest(conference_id=conference.conference_id), timeout=10)
        (left,) = alone.endpoints
        assert alone.totals.packets_in == left.counters.packets_in and alone.totals.bytes_out == left.counters.bytes_out
        assert (alone.endpoint_count, alone.track_count, alone.subscription_count) == (1, 1, 0)
        whole = daemon.GetStats(mediad_pb2.GetStatsRequest(), timeout=10)
        assert whole.totals.packets_in >= stats.totals.packets_in > alone.totals.packets_in
        b = Peer("stats-b2", [random.randrange(1, 2**32)])
        b.joined(api.Join(b.join_request(conference.conference_id), timeout=10).participant)
        exchange([a, b], lambda: sum(a.counts().values()) >= 5 and sum(b.counts().values()) >= 5)

        stream = daemon.WatchStats(
            mediad_pb2.WatchStatsRequest(conference_id=conference.conference_id, interval=Duration(nanos=100_000_000)),
            timeout=30,
        )
        seen = []
        for message in stream:
            a.send_round()
            seen.append(sum(e.counters.packets_in for e in message.endpoints))
            if len(seen) == 3:
                stream.cancel()
                break
        assert seen == sorted(seen) and seen[0] >= 10
        with pytest.raises(grpc.RpcError) as error:
            next(iter(daemon.WatchStats(mediad_pb2.WatchStatsRequest(interval=Duration(nanos=1000)), timeout=10)))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error.value.details().startswith("interval:")
    finally:
        api.EndConference(pb.EndConferenceRequest(conference_id=conference.conference_id), timeout=10)
        a.close()
        b.close()


def test_receive_only_participant_gets_media_without_ever_sending(charter: Cluster) -> None:
    api = conference_stub(charter.controller)
    conference = api.CreateConference(pb.CreateConferenceRequest(), timeout=10)
    publisher = Peer("publisher", [random.randrange(1, 2**32)])
    viewer = Peer("viewer", [])  # like ffmpeg as a receiver: gives its address, never sends
    try:
        publisher.joined(api.Join(publisher.join_request(conference.conference_id), timeout=10).participant)
        viewer.joined(
            api.Join(viewer.join_request(conference.conference_id, give_address=True), timeout=10).participant
        )
        (subscription,) = viewer.session.subscriptions
        exchange(
            [publisher, viewer],
            lambda: viewer.counts()[("publisher", publisher.track_ssrcs[0], subscription.ssrc)] >= 5,
        )
        assert set(viewer.counts()) == {("publisher", publisher.track_ssrcs[0], subscription.ssrc)}
    finally:
        api.EndConference(pb.EndConferenceRequest(conference_id=conference.conference_id), timeout=10)
        publisher.close()
        viewer.close()
