"""Leases, room and shutdown with real processes: a daemon that stops renewing leaves
placement and comes back when it resumes; daemons register again with a restarted
controller; no room is RESOURCE_EXHAUSTED, no daemon UNAVAILABLE; SIGTERM drains in order."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import grpc
import pytest

from charter.v1 import controller_pb2 as pb
from charter.v1 import mediad_pb2
from charter.v1.controller_pb2_grpc import ConferenceServiceStub as conference_stub_on
from processes import (
    cluster,
    conference_stub,
    live_daemons,
    mediad_stub,
    start_controller,
    udp_port_free,
)
from waits import wait_until

LEASE = 3.0


def test_stalled_daemon_leaves_placement_and_returns(tmp_path: Path) -> None:
    with cluster(tmp_path, daemons=2, lease_ttl=LEASE) as charter:
        api = conference_stub(charter.controller)
        stalled = charter.daemon("mediad-1")
        stalled.signal(signal.SIGSTOP)  # alive but silent: no renewals
        try:
            wait_until(lambda: live_daemons(charter.controller) == {"mediad-0"}, what="mediad-1's lease to expire")
            placed = [api.CreateConference(pb.CreateConferenceRequest(), timeout=10).daemon_id for _ in range(4)]
            assert placed == ["mediad-0"] * 4
        finally:
            stalled.signal(signal.SIGCONT)
        # Its next renewal is refused (NOT_FOUND), so it registers again.
        wait_until(
            lambda: live_daemons(charter.controller) == {"mediad-0", "mediad-1"}, what="mediad-1 to register again"
        )
        assert api.CreateConference(pb.CreateConferenceRequest(), timeout=10).daemon_id == "mediad-1"
        assert "registering again" in stalled.log()


def test_endpoints_of_a_conference_ended_while_the_daemon_stalled_are_deleted(tmp_path: Path) -> None:
    with cluster(tmp_path, daemons=1, lease_ttl=LEASE) as charter:
        api = conference_stub(charter.controller)
        api.CreateConference(pb.CreateConferenceRequest(conference_id="orphan"), timeout=10)
        port = api.Join(
            pb.JoinRequest(conference_id="orphan", participant_id="a"), timeout=10
        ).participant.media_address.port
        api.CreateConference(pb.CreateConferenceRequest(conference_id="kept"), timeout=10)
        api.Join(pb.JoinRequest(conference_id="kept", participant_id="b"), timeout=10)
        daemon = charter.daemons[0]
        daemon.signal(signal.SIGSTOP)
        try:
            wait_until(lambda: live_daemons(charter.controller) == set(), what="the lease to expire")
            # The controller forgets the conference; the stalled daemon cannot be told.
            api.EndConference(pb.EndConferenceRequest(conference_id="orphan"), timeout=10)
        finally:
            daemon.signal(signal.SIGCONT)
        endpoints = mediad_stub(daemon)

        def only_kept_left() -> bool:
            listed = endpoints.ListEndpoints(mediad_pb2.ListEndpointsRequest(), timeout=5).endpoints
            return [e.endpoint_id for e in listed] == ["kept/b"]

        wait_until(only_kept_left, what="the daemon to register again and drop the orphan endpoint")
        assert udp_port_free(port)
        assert "leftover endpoints deleted" in charter.controller.log()


def test_daemons_register_again_with_a_restarted_controller(tmp_path: Path) -> None:
    with cluster(tmp_path, daemons=2, lease_ttl=LEASE) as charter:
        port = int(charter.controller.address.rsplit(":", 1)[1])
        assert charter.controller.stop() == 0
        (tmp_path / "again").mkdir()
        charter.controller = start_controller(tmp_path / "again", lease_ttl=LEASE, port=port)
        wait_until(
            lambda: live_daemons(charter.controller) == {"mediad-0", "mediad-1"}, what="both daemons to register again"
        )
        conference = conference_stub(charter.controller).CreateConference(pb.CreateConferenceRequest(), timeout=10)
        assert conference.daemon_id in {"mediad-0", "mediad-1"}


def test_no_daemon_is_unavailable(tmp_path: Path) -> None:
    controller = start_controller(tmp_path)
    try:
        with pytest.raises(grpc.RpcError) as error:
            conference_stub(controller).CreateConference(pb.CreateConferenceRequest(), timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no media daemon is registered" in error.value.details()
    finally:
        assert controller.stop() == 0


def test_no_room_is_resource_exhausted(tmp_path: Path) -> None:
    with cluster(tmp_path, daemons=1, capacity=2) as charter:
        api = conference_stub(charter.controller)
        conference = api.CreateConference(pb.CreateConferenceRequest(conference_id="small"), timeout=10)
        for name in ("a", "b"):
            api.Join(pb.JoinRequest(conference_id="small", participant_id=name), timeout=10)
        with pytest.raises(grpc.RpcError) as error:
            api.Join(pb.JoinRequest(conference_id="small", participant_id="c"), timeout=10)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "mediad-0" in error.value.details() and "full (2 of 2 endpoints" in error.value.details()
        with pytest.raises(grpc.RpcError) as error:
            api.CreateConference(pb.CreateConferenceRequest(), timeout=10)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "no media daemon has room" in error.value.details()
        # Nothing was lost by the refusals; leaving makes room again.
        assert [
            p.participant_id
            for p in api.GetConference(pb.GetConferenceRequest(conference_id="small"), timeout=10).participants
        ] == ["a", "b"]
        api.Leave(pb.LeaveRequest(conference_id="small", participant_id="b"), timeout=10)
        api.Join(pb.JoinRequest(conference_id="small", participant_id="c"), timeout=10)
        assert conference.daemon_id == "mediad-0"


def test_controller_sigterm_ends_watches_and_releases_daemons(tmp_path: Path) -> None:
    with cluster(tmp_path, daemons=1) as charter:
        api = conference_stub(charter.controller)
        api.CreateConference(pb.CreateConferenceRequest(conference_id="live"), timeout=10)
        port = api.Join(
            pb.JoinRequest(conference_id="live", participant_id="a"), timeout=10
        ).participant.media_address.port
        events: list[pb.ConferenceEvent] = []
        with grpc.insecure_channel(charter.controller.address) as channel:
            stream = conference_stub_on(channel).WatchConference(
                pb.WatchConferenceRequest(conference_id="live"), timeout=60
            )
            reader = threading.Thread(target=lambda: events.extend(stream))
            reader.start()
            wait_until(lambda: len(events) >= 1, what="the initial event")
            assert charter.controller.stop() == 0
            reader.join(20)
        assert not reader.is_alive()
        assert events[-1].conference_ended.reason == "shutdown"
        daemon = mediad_stub(charter.daemons[0])
        assert daemon.ListEndpoints(mediad_pb2.ListEndpointsRequest(), timeout=10).endpoints == []
        assert udp_port_free(port)


def test_mediad_sigterm_hands_its_conferences_over_and_stops(tmp_path: Path) -> None:
    """A rolling upgrade: the daemon that is told to stop drains (NOT_SERVING, no new
    endpoints), the controller moves its conference to the other daemon, and once its
    endpoints are released it exits 0 and leaves placement by itself."""
    with cluster(tmp_path, daemons=2) as charter:
        api = conference_stub(charter.controller)
        conference = api.CreateConference(pb.CreateConferenceRequest(conference_id="draining"), timeout=10)
        api.Join(pb.JoinRequest(conference_id="draining", participant_id="a"), timeout=10)
        leaving = charter.daemon(conference.daemon_id)
        other = next(d for d in charter.daemons if d is not leaving)
        leaving.signal(signal.SIGTERM)
        # It takes nothing new (or has stopped already: the move takes a moment only).
        with pytest.raises(grpc.RpcError) as error:
            mediad_stub(leaving).CreateEndpoint(
                mediad_pb2.CreateEndpointRequest(
                    endpoint_id="x/y", conference_id="x", rx_key=os.urandom(30), tx_key=os.urandom(30)
                ),
                timeout=10,
            )
        assert error.value.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE)
        assert leaving.process.wait(30) == 0, "it stops once its conference is elsewhere"
        moved = api.GetConference(pb.GetConferenceRequest(conference_id="draining"), timeout=10)
        assert moved.daemon_id == other.name and [p.participant_id for p in moved.participants] == ["a"]
        held = mediad_stub(other).ListEndpoints(mediad_pb2.ListEndpointsRequest(), timeout=10).endpoints
        assert [e.endpoint_id for e in held] == ["draining/a"]
        wait_until(lambda: live_daemons(charter.controller) == {other.name}, what="the drained daemon to deregister")
