"""A controller with a durable store (a SQLite file) killed with SIGKILL mid-conference and
started again: media never stops (the participants keep talking to the daemon meanwhile),
and the restarted controller has every conference, participant, subscription and key; the
daemon registers again and keeps every endpoint (the store knows them all). A SIGTERM
keeps the conferences too: with a durable store, stopping the controller is a restart."""
from __future__ import annotations

import random
import signal
import threading
from pathlib import Path

import grpc

from charter.v1 import controller_pb2 as pb
from charter.v1 import mediad_pb2
from participants import Peer, exchange
from processes import Process, cluster, conference_stub, live_daemons, mediad_stub, start_controller
from waits import wait_until

LEASE = 3.0
DRAIN = 1.0
"""A durable controller keeps its conferences when it stops, so at the end the daemons would
wait out their drain for a controller gone: not long."""


def received_from(peer: Peer, publisher: str) -> int:
    return sum(n for (who, _, _), n in peer.counts().items() if who == publisher)


def read_until_broken(stream: object, into: list[pb.ConferenceEvent]) -> None:
    try:
        for event in stream:  # type: ignore[attr-defined]
            into.append(event)
    except grpc.RpcError:
        pass  # the controller went away


def more_media(alice: Peer, bob: Peer) -> None:
    """Five more packets each way."""
    want = received_from(alice, "bob") + 5, received_from(bob, "alice") + 5
    exchange([alice, bob], lambda: received_from(alice, "bob") >= want[0] and received_from(bob, "alice") >= want[1])


def restarted(tmp_path: Path, port: int, store: str) -> Process:
    """The controller started again on its port and store, once the daemon registered again."""
    log_dir = tmp_path / "again"
    log_dir.mkdir()
    controller = start_controller(log_dir, lease_ttl=LEASE, port=port, store=store)
    wait_until(lambda: live_daemons(controller) == {"mediad-0"}, what="the daemon to register again")
    return controller


def test_a_killed_controller_restarts_with_every_conference_and_media_never_stops(tmp_path: Path) -> None:
    store = str(tmp_path / "state" / "controller.sqlite3")
    with cluster(tmp_path, daemons=1, lease_ttl=LEASE, store=store, check_exit=False,
                 drain_timeout=DRAIN) as charter:
        api = conference_stub(charter.controller)
        api.CreateConference(pb.CreateConferenceRequest(conference_id="durable", name="Kept"), timeout=10)
        alice, bob = Peer("alice", [random.randrange(1, 2**32)]), Peer("bob", [random.randrange(1, 2**32)])
        peers = [alice, bob]
        try:
            for peer in peers:
                peer.joined(api.Join(peer.join_request("durable", give_address=True), timeout=10).participant)
            before = {p.participant_id: api.GetParticipant(
                pb.GetParticipantRequest(conference_id="durable", participant_id=p.participant_id), timeout=10)
                for p in peers}
            exchange(peers, lambda: received_from(alice, "bob") >= 3 and received_from(bob, "alice") >= 3)
            watched: list[pb.ConferenceEvent] = []
            watch = api.WatchConference(pb.WatchConferenceRequest(conference_id="durable"), timeout=60)
            reader = threading.Thread(target=read_until_broken, args=(watch, watched))
            reader.start()
            wait_until(lambda: len(watched) >= 4, what="the watch's initial events")

            port = int(charter.controller.address.rsplit(":", 1)[1])
            charter.controller.signal(signal.SIGKILL)
            assert charter.controller.process.wait(10) == -signal.SIGKILL
            reader.join(10)
            seen = watched[-1].sequence
            # The controller is gone: media goes on between the participants and the daemon.
            more_media(alice, bob)

            charter.controller = restarted(tmp_path, port, store)
            api = conference_stub(charter.controller)
            conference = api.GetConference(pb.GetConferenceRequest(conference_id="durable"), timeout=10)
            assert conference.name == "Kept" and [p.participant_id for p in conference.participants] == ["alice", "bob"]
            for peer in peers:
                after = api.GetParticipant(
                    pb.GetParticipantRequest(conference_id="durable", participant_id=peer.participant_id), timeout=10)
                assert after == before[peer.participant_id], "keys, subscriptions and address as they were"
            # The re-registration reconciled: the daemon kept every endpoint, media flows on.
            endpoints = mediad_stub(charter.daemons[0]).ListEndpoints(mediad_pb2.ListEndpointsRequest(), timeout=10)
            assert sorted(e.endpoint_id for e in endpoints.endpoints) == ["durable/alice", "durable/bob"]
            more_media(alice, bob)

            # And the restarted controller changes it as before; the broken watch resumes after
            # the last event it saw: what happened since, once each, then what happens next.
            api.Leave(pb.LeaveRequest(conference_id="durable", participant_id="bob"), timeout=10)
            assert [p.participant_id for p in api.GetConference(
                pb.GetConferenceRequest(conference_id="durable"), timeout=10).participants] == ["alice"]
            resumed = api.WatchConference(
                pb.WatchConferenceRequest(conference_id="durable", after_sequence=seen), timeout=20)
            missed = [next(resumed), next(resumed)]
            resumed.cancel()
            assert [e.sequence for e in missed] == [seen + 1, seen + 2] and not any(e.initial for e in missed)
            assert missed[0].track_removed.publisher_id == "bob" and missed[1].participant_left.participant_id == "bob"
        finally:
            for peer in peers:
                peer.close()


def test_a_sigterm_keeps_the_conferences_of_a_durable_controller(tmp_path: Path) -> None:
    store = str(tmp_path / "controller.sqlite3")
    with cluster(tmp_path, daemons=1, lease_ttl=LEASE, store=store, check_exit=False,
                 drain_timeout=DRAIN) as charter:
        api = conference_stub(charter.controller)
        api.CreateConference(pb.CreateConferenceRequest(conference_id="kept"), timeout=10)
        api.Join(pb.JoinRequest(conference_id="kept", participant_id="a"), timeout=10)
        port = int(charter.controller.address.rsplit(":", 1)[1])
        assert charter.controller.stop() == 0
        # Nothing was released on the daemon: its media goes on.
        endpoints = mediad_stub(charter.daemons[0]).ListEndpoints(mediad_pb2.ListEndpointsRequest(), timeout=10)
        assert [e.endpoint_id for e in endpoints.endpoints] == ["kept/a"]
        charter.controller = restarted(tmp_path, port, store)
        participants = conference_stub(charter.controller).GetConference(
            pb.GetConferenceRequest(conference_id="kept"), timeout=10).participants
        assert [p.participant_id for p in participants] == ["a"]


def test_a_daemon_that_died_while_the_controller_was_down_is_handled_when_it_comes_back(tmp_path: Path) -> None:
    store = str(tmp_path / "controller.sqlite3")
    with cluster(tmp_path, daemons=2, lease_ttl=LEASE, store=store, check_exit=False,
                 drain_timeout=DRAIN) as charter:
        api = conference_stub(charter.controller)
        conference = api.CreateConference(pb.CreateConferenceRequest(conference_id="orphan"), timeout=10)
        alice = Peer("alice", [random.randrange(1, 2**32)])
        try:
            alice.joined(api.Join(alice.join_request("orphan", give_address=True), timeout=10).participant)
            seen = api.GetConference(pb.GetConferenceRequest(conference_id="orphan"), timeout=10)
            assert seen.daemon_id == conference.daemon_id
            last = next(api.WatchConference(pb.WatchConferenceRequest(conference_id="orphan"), timeout=10)).sequence
            port = int(charter.controller.address.rsplit(":", 1)[1])
            charter.controller.signal(signal.SIGKILL)
            charter.controller.process.wait(10)
            dead = charter.daemon(conference.daemon_id)
            dead.signal(signal.SIGKILL)
            dead.process.wait(10)
            survivor = next(d for d in charter.daemons if d is not dead)

            log_dir = tmp_path / "again"
            log_dir.mkdir()
            charter.controller = start_controller(log_dir, lease_ttl=LEASE, port=port, store=store)
            api = conference_stub(charter.controller)
            # Alice's watch resumes after what she saw: her move comes, with her new session.
            resumed = api.WatchConference(
                pb.WatchConferenceRequest(conference_id="orphan", participant_id="alice", after_sequence=last),
                timeout=30)
            moved = next(e for e in resumed if e.WhichOneof("event") == "participant_moved").participant_moved
            resumed.cancel()
            assert moved.daemon_id == survivor.name and moved.participant.send_key != alice.session.send_key
            state = api.GetConference(pb.GetConferenceRequest(conference_id="orphan"), timeout=10)
            assert state.daemon_id == survivor.name and [p.participant_id for p in state.participants] == ["alice"]
        finally:
            alice.close()
