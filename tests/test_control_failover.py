"""A media daemon killed (SIGKILL) or hung (SIGSTOP) under a live conference of real SRTP
participants: its lease expires, the controller moves the conference to the other daemon,
every participant gets its `participant_moved` event with its new session on its watch
stream, follows it (new address, keys, SSRCs) and gets media again; nothing is lost. A hung
daemon that wakes up registers again and the copies it still holds are deleted.

The figures (kill -> moved event -> media again) are printed; bench/ measures them."""
from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from charter.v1 import controller_pb2 as pb
from charter.v1 import mediad_pb2
from participants import Peer, exchange
from processes import Cluster, cluster, conference_stub, mediad_stub
from waits import wait_until

LEASE = 2.0


class Watch:
    """A participant's WatchConference stream, read in a thread."""

    def __init__(self, charter: Cluster, conference_id: str, participant_id: str) -> None:
        self.events: list[tuple[float, pb.ConferenceEvent]] = []
        self._channel = grpc.insecure_channel(charter.controller.address)
        stub = conference_stub_on(self._channel)
        self._stream = stub.WatchConference(
            pb.WatchConferenceRequest(conference_id=conference_id, participant_id=participant_id), timeout=120)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                self.events.append((time.monotonic(), event))
        except grpc.RpcError:
            pass

    def moved(self) -> tuple[float, pb.ParticipantMoved] | None:
        for at, event in self.events:
            if event.WhichOneof("event") == "participant_moved" and event.participant_moved.HasField("participant"):
                return at, event.participant_moved
        return None

    def close(self) -> None:
        self._stream.cancel()
        self._thread.join(5)
        self._channel.close()


def conference_stub_on(channel: grpc.Channel) -> object:
    from charter.v1.controller_pb2_grpc import ConferenceServiceStub

    return ConferenceServiceStub(channel)


def received(peer: Peer, publisher: str, ssrc: int | None = None) -> int:
    return sum(n for (who, _, got), n in peer.counts().items() if who == publisher and (ssrc is None or got == ssrc))


@pytest.mark.parametrize("failure", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_the_conference_of_a_failed_daemon_moves_and_media_comes_back(tmp_path: Path, failure: int) -> None:
    with cluster(tmp_path, daemons=2, lease_ttl=LEASE, check_exit=False) as charter:
        api = conference_stub(charter.controller)
        conference = api.CreateConference(pb.CreateConferenceRequest(conference_id="moving"), timeout=10)
        failing = charter.daemon(conference.daemon_id)
        other = next(d for d in charter.daemons if d is not failing)
        alice, bob = Peer("alice", [random.randrange(1, 2**32)]), Peer("bob", [random.randrange(1, 2**32)])
        peers = [alice, bob]
        watches: dict[str, Watch] = {}
        try:
            for peer in peers:
                peer.joined(api.Join(peer.join_request("moving", give_address=True), timeout=10).participant)
                watches[peer.participant_id] = Watch(charter, "moving", peer.participant_id)
            exchange(peers, lambda: received(alice, "bob") >= 3 and received(bob, "alice") >= 3)

            failed_at = time.monotonic()
            failing.signal(failure)
            wait_until(lambda: all(w.moved() for w in watches.values()), timeout=LEASE + 15,
                       what="every participant's moved event")
            for peer in peers:
                at, moved = watches[peer.participant_id].moved()  # type: ignore[misc]
                assert moved.daemon_id == other.name and moved.reason == "daemon lost"
                assert moved.participant.media_address.port != peer.session.media_address.port
                peer.joined(moved.participant)  # the participant follows: new address, keys, SSRCs
                print(f"{peer.participant_id}: moved event {at - failed_at:.2f} s after the daemon "
                      f"{'died' if failure == signal.SIGKILL else 'hung'} (lease {LEASE:.0f} s)")
            new_ssrcs = {p.participant_id: p.session.subscriptions[0].ssrc for p in peers}
            moved_at = max(w.moved()[0] for w in watches.values())  # type: ignore[index]
            exchange(peers, lambda: received(alice, "bob", new_ssrcs["alice"]) >= 3
                     and received(bob, "alice", new_ssrcs["bob"]) >= 3)
            print(f"media again {time.monotonic() - moved_at:.2f} s after the last moved event")
            state = api.GetConference(pb.GetConferenceRequest(conference_id="moving"), timeout=10)
            assert state.daemon_id == other.name and [p.participant_id for p in state.participants] == ["alice", "bob"]

            if failure == signal.SIGSTOP:
                # The hung daemon wakes up: it registers again and its stale copies are deleted.
                failing.signal(signal.SIGCONT)
                daemon = mediad_stub(failing)
                wait_until(lambda: not daemon.ListEndpoints(mediad_pb2.ListEndpointsRequest(), timeout=5).endpoints,
                           timeout=30, what="the woken daemon's stale endpoints to be deleted")
        finally:
            for watch in watches.values():
                watch.close()
            for peer in peers:
                peer.close()
