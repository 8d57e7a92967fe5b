"""The controller's API against real processes: every kind of bad request, the watch
stream, placement by load, paging, and the media daemon's idempotent operations."""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from charter.v1 import controller_pb2 as pb
from charter.v1 import media_pb2, mediad_pb2
from processes import Cluster, cluster, conference_stub, mediad_stub, registry_stub, udp_port_free
from waits import wait_until


@pytest.fixture(scope="module")
def charter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("api"), daemons=2) as running:
        yield running


@pytest.fixture
def api(charter: Cluster) -> Iterator[Any]:
    stub = conference_stub(charter.controller)
    yield stub
    # Each test leaves no conference behind, whatever happened in it.
    for conference in stub.ListConferences(pb.ListConferencesRequest(page_size=1000), timeout=10).conferences:
        stub.EndConference(pb.EndConferenceRequest(conference_id=conference.conference_id), timeout=10)


def video(ssrc: int, **changes: Any) -> media_pb2.Track:
    track = media_pb2.Track(ssrc=ssrc, kind=media_pb2.VIDEO, codec="VP8", payload_type=96, clock_rate=90000)
    for key, value in changes.items():
        setattr(track, key, value)
    return track


def join(
    conference_id: str, participant_id: str = "", tracks: list[media_pb2.Track] | None = None, **fields: Any
) -> pb.JoinRequest:
    request = pb.JoinRequest(conference_id=conference_id, participant_id=participant_id, tracks=tracks or [])
    for key, value in fields.items():
        if key == "receive_address":
            request.receive_address.CopyFrom(value)
        else:
            setattr(request, key, value)
    return request


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


INVALID_JOINS = [
    (dict(conference_id=""), "conference_id"),
    (dict(conference_id="no spaces"), "conference_id"),
    (dict(participant_id="x" * 65), "participant_id"),
    (dict(tracks=[video(0)]), "tracks[0].ssrc"),
    (dict(tracks=[video(5, kind=media_pb2.TRACK_KIND_UNSPECIFIED)]), "tracks[0].kind"),
    (dict(tracks=[video(5, codec="")]), "tracks[0].codec"),
    (dict(tracks=[video(5, payload_type=200)]), "tracks[0].payload_type"),
    (dict(tracks=[video(5, clock_rate=0)]), "tracks[0].clock_rate"),
    (dict(tracks=[video(5), video(5)]), "tracks[1].ssrc"),
    (dict(receive_address=media_pb2.Address(ip="not-an-ip", port=5000)), "receive_address.ip"),
    (dict(receive_address=media_pb2.Address(ip="::1", port=5000)), "receive_address.ip"),
    (dict(receive_address=media_pb2.Address(ip="127.0.0.1", port=0)), "receive_address.port"),
    # Not one receiver: media would go nowhere, or to many.
    (dict(receive_address=media_pb2.Address(ip="0.0.0.0", port=5000)), "receive_address.ip"),
    (dict(receive_address=media_pb2.Address(ip="255.255.255.255", port=5000)), "receive_address.ip"),
    (dict(receive_address=media_pb2.Address(ip="224.0.0.1", port=5000)), "receive_address.ip"),
    (dict(receive_address=media_pb2.Address(ip="240.0.0.1", port=5000)), "receive_address.ip"),
    (dict(send_key="%%%"), "send_key"),
    (dict(send_key=base64.b64encode(b"short").decode()), "send_key"),
    # Valid but wrong: a key anyone can guess, a codec Charter does not forward (or of the
    # other kind), a payload type that reads as RTCP on the multiplexed port.
    (dict(send_key=base64.b64encode(bytes(30)).decode()), "send_key"),
    (dict(send_key=base64.b64encode(b"\x5a" * 30).decode()), "send_key"),
    (dict(tracks=[video(5, codec="MPV")]), "tracks[0].codec"),
    (dict(tracks=[video(5, codec="opus")]), "tracks[0].codec"),
    (dict(tracks=[video(5, payload_type=72)]), "tracks[0].payload_type"),
    (dict(tracks=[video(5, payload_type=76)]), "tracks[0].payload_type"),
    (dict(suite=99), "suite"),
    (dict(display_name="n" * 300), "display_name"),
]


@pytest.mark.parametrize("fields, field", INVALID_JOINS, ids=[f for _, f in INVALID_JOINS])
def test_invalid_join_names_the_field(api: Any, fields: dict[str, Any], field: str) -> None:
    conference = api.CreateConference(pb.CreateConferenceRequest(), timeout=10)
    request = join(conference.conference_id, "p1", [video(1)])
    for key, value in fields.items():
        if key == "receive_address":
            request.receive_address.CopyFrom(value)
        elif key == "tracks":
            del request.tracks[:]
            request.tracks.extend(value)
        else:
            setattr(request, key, value)
    error = refused(lambda: api.Join(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(field + ":"), error.details()
    assert (
        api.GetConference(pb.GetConferenceRequest(conference_id=conference.conference_id), timeout=10).participants
        == []
    )


def test_invalid_conference_requests(api: Any) -> None:
    cases = [
        (
            lambda: api.CreateConference(pb.CreateConferenceRequest(conference_id="bad id!"), timeout=10),
            "conference_id",
        ),
        (lambda: api.CreateConference(pb.CreateConferenceRequest(name="n" * 300), timeout=10), "name"),
        (lambda: api.GetConference(pb.GetConferenceRequest(), timeout=10), "conference_id"),
        (lambda: api.EndConference(pb.EndConferenceRequest(), timeout=10), "conference_id"),
        (lambda: api.ListConferences(pb.ListConferencesRequest(page_size=5000), timeout=10), "page_size"),
        (lambda: api.GetParticipant(pb.GetParticipantRequest(conference_id="c"), timeout=10), "participant_id"),
        (lambda: api.Leave(pb.LeaveRequest(participant_id="p"), timeout=10), "conference_id"),
        (lambda: next(iter(api.WatchConference(pb.WatchConferenceRequest(), timeout=10))), "conference_id"),
    ]
    for call, field in cases:
        error = refused(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert error.details().startswith(field + ":"), error.details()


def test_unknown_ids_are_not_found(api: Any) -> None:
    conference = api.CreateConference(pb.CreateConferenceRequest(), timeout=10)
    cid = conference.conference_id
    cases = [
        lambda: api.GetConference(pb.GetConferenceRequest(conference_id="nope"), timeout=10),
        lambda: api.EndConference(pb.EndConferenceRequest(conference_id="nope"), timeout=10),
        lambda: api.Join(join("nope", "p"), timeout=10),
        lambda: api.GetParticipant(pb.GetParticipantRequest(conference_id=cid, participant_id="nobody"), timeout=10),
        lambda: api.Leave(pb.LeaveRequest(conference_id=cid, participant_id="nobody"), timeout=10),
        lambda: next(iter(api.WatchConference(pb.WatchConferenceRequest(conference_id="nope"), timeout=10))),
        lambda: next(
            iter(api.WatchConference(pb.WatchConferenceRequest(conference_id=cid, participant_id="nobody"), timeout=10))
        ),
    ]
    for call in cases:
        error = refused(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "not found" in error.details() or "is not in" in error.details()


def test_media_is_never_sent_to_charters_own_ports(api: Any, charter: Cluster) -> None:
    """Join's receive_address cannot aim a daemon's output at the controller, a daemon's gRPC
    port or a daemon's media ports (a loop through Charter itself)."""
    conference = api.CreateConference(pb.CreateConferenceRequest(), timeout=10)
    controller_ip, controller_port = charter.controller.address.rsplit(":", 1)
    daemon = charter.daemons[0]
    daemon_ip, daemon_port = daemon.address.rsplit(":", 1)
    first, last = charter.port_ranges[daemon.name]
    for ip, port in ((controller_ip, int(controller_port)), (daemon_ip, int(daemon_port)), ("127.0.0.1", first),
                     ("127.0.0.1", last)):
        request = join(conference.conference_id, "aimer", [video(1)])
        request.receive_address.CopyFrom(media_pb2.Address(ip=ip, port=port))
        error = refused(lambda request=request: api.Join(request, timeout=10))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith("receive_address.port:") and "a port of Charter itself" in error.details()


def test_duplicates_are_already_exists(api: Any) -> None:
    api.CreateConference(pb.CreateConferenceRequest(conference_id="dup"), timeout=10)
    error = refused(lambda: api.CreateConference(pb.CreateConferenceRequest(conference_id="dup"), timeout=10))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and "dup" in error.details()
    first = api.Join(join("dup", "twice", [video(7)]), timeout=10).participant
    error = refused(lambda: api.Join(join("dup", "twice", [video(8)]), timeout=10))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and "twice" in error.details()
    # Nothing of the first join was lost.
    again = api.GetParticipant(pb.GetParticipantRequest(conference_id="dup", participant_id="twice"), timeout=10)
    assert again.media_address == first.media_address and again.send_key == first.send_key
    # An SSRC another participant publishes: receivers could not tell the two streams apart.
    error = refused(lambda: api.Join(join("dup", "copycat", [video(7)]), timeout=10))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error.details().startswith("tracks[0].ssrc: 7 is published by participant 'twice'"), error.details()
    assert [p.participant_id for p in api.GetConference(
        pb.GetConferenceRequest(conference_id="dup"), timeout=10).participants] == ["twice"]


def test_generated_ids_and_receive_only_participant(api: Any, charter: Cluster) -> None:
    conference = api.CreateConference(pb.CreateConferenceRequest(name="room"), timeout=10)
    assert conference.conference_id and conference.name == "room"
    publisher = api.Join(join(conference.conference_id, "", [video(11)]), timeout=10).participant
    viewer = api.Join(
        join(conference.conference_id, "", [], receive_address=media_pb2.Address(ip="127.0.0.1", port=9)), timeout=10
    ).participant
    assert publisher.participant_id and viewer.participant_id and publisher.participant_id != viewer.participant_id
    assert viewer.receive_address.port == 9
    assert [(s.publisher_id, s.track.ssrc) for s in viewer.subscriptions] == [(publisher.participant_id, 11)]
    got = api.GetConference(pb.GetConferenceRequest(conference_id=conference.conference_id), timeout=10)
    assert [p.participant_id for p in got.participants] == [publisher.participant_id, viewer.participant_id]
    endpoints = (
        mediad_stub(charter.daemon(conference.daemon_id))
        .ListEndpoints(mediad_pb2.ListEndpointsRequest(conference_id=conference.conference_id), timeout=10)
        .endpoints
    )
    remote = {e.endpoint_id.split("/")[1]: e for e in endpoints}[viewer.participant_id]
    assert not remote.latching and remote.remote.port == 9


def test_watch_conference_tells_every_change(api: Any) -> None:
    api.CreateConference(pb.CreateConferenceRequest(conference_id="watched"), timeout=10)
    api.Join(join("watched", "w1", [video(100)]), timeout=10)
    events: list[pb.ConferenceEvent] = []
    errors: list[BaseException] = []
    stream = api.WatchConference(pb.WatchConferenceRequest(conference_id="watched", participant_id="w1"), timeout=60)

    def read() -> None:
        try:
            for event in stream:
                events.append(event)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        wait_until(lambda: len(events) >= 2, what="the initial events")
        api.Join(
            join("watched", "w2", [video(200), video(201, kind=media_pb2.AUDIO, codec="opus", clock_rate=48000)]),
            timeout=10,
        )
        w1 = api.GetParticipant(pb.GetParticipantRequest(conference_id="watched", participant_id="w1"), timeout=10)
        assigned = {s.track.ssrc: s.ssrc for s in w1.subscriptions}
        api.Leave(pb.LeaveRequest(conference_id="watched", participant_id="w2"), timeout=10)
        api.EndConference(pb.EndConferenceRequest(conference_id="watched"), timeout=10)
        reader.join(20)
    finally:
        stream.cancel()
    assert not reader.is_alive() and not errors, errors
    kinds = [(e.WhichOneof("event"), e.initial) for e in events]
    assert kinds == [
        ("participant_joined", True),
        ("track_added", True),
        ("participant_joined", False),
        ("track_added", False),
        ("track_added", False),
        ("track_removed", False),
        ("track_removed", False),
        ("participant_left", False),
        ("conference_ended", False),
    ]
    assert events[1].track_added.publisher_id == "w1" and events[1].track_added.ssrc == 0
    assert events[2].participant_joined.participant.participant_id == "w2"
    added = {e.track_added.track.ssrc: e.track_added.ssrc for e in events[3:5]}
    assert added == assigned and all(added.values())
    removed = {e.track_removed.track_ssrc: e.track_removed.ssrc for e in events[5:7]}
    assert removed == assigned
    assert events[7].participant_left.participant_id == "w2"
    assert events[8].conference_ended.reason == "ended"
    live = [e.sequence for e in events if not e.initial]
    assert live == list(range(live[0], live[0] + len(live)))


def test_conferences_spread_over_daemons_by_load(api: Any, charter: Cluster) -> None:
    registry = registry_stub(charter.controller)
    busy = api.CreateConference(pb.CreateConferenceRequest(conference_id="busy"), timeout=10)
    for i in range(3):
        api.Join(join("busy", f"p{i}"), timeout=10)
    others = [api.CreateConference(pb.CreateConferenceRequest(conference_id=f"light{i}"), timeout=10) for i in range(2)]
    assert all(o.daemon_id != busy.daemon_id for o in others)
    daemons = {d.daemon.daemon_id: d for d in registry.ListDaemons(pb.ListDaemonsRequest(), timeout=10).daemons}
    assert daemons[busy.daemon_id].endpoints_assigned == 3 and daemons[busy.daemon_id].conferences == 1
    assert daemons[others[0].daemon_id].conferences == 2
    api.EndConference(pb.EndConferenceRequest(conference_id="busy"), timeout=10)
    # Both daemons are empty of endpoints now; the one with fewer conferences takes the next.
    again = api.CreateConference(pb.CreateConferenceRequest(), timeout=10)
    assert again.daemon_id == busy.daemon_id


def test_list_conferences_in_pages(api: Any) -> None:
    for i in range(5):
        api.CreateConference(pb.CreateConferenceRequest(conference_id=f"page-{i}"), timeout=10)
    seen, token = [], ""
    while True:
        page = api.ListConferences(pb.ListConferencesRequest(page_size=2, page_token=token), timeout=10)
        assert len(page.conferences) <= 2
        seen += [c.conference_id for c in page.conferences]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"page-{i}" for i in range(5)]


def test_media_daemon_operations_are_idempotent(charter: Cluster) -> None:
    daemon = mediad_stub(charter.daemons[0])
    keys: dict[str, Any] = dict(rx_key=os.urandom(30), tx_key=os.urandom(30))
    create = mediad_pb2.CreateEndpointRequest(endpoint_id="idem/a", conference_id="idem", tracks=[video(1)], **keys)
    first = daemon.CreateEndpoint(create, timeout=10)
    again = daemon.CreateEndpoint(create, timeout=10)
    assert again.local_address == first.local_address and len(again.tracks) == 1
    changed = mediad_pb2.CreateEndpointRequest(
        endpoint_id="idem/a", conference_id="idem", rx_key=os.urandom(30), tx_key=keys["tx_key"]
    )
    assert refused(lambda: daemon.CreateEndpoint(changed, timeout=10)).code() == grpc.StatusCode.ALREADY_EXISTS
    bad = mediad_pb2.CreateEndpointRequest(
        endpoint_id="idem/x", conference_id="idem", rx_key=b"123", tx_key=keys["tx_key"]
    )
    error = refused(lambda: daemon.CreateEndpoint(bad, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("rx_key:")
    daemon.CreateEndpoint(
        mediad_pb2.CreateEndpointRequest(endpoint_id="idem/b", conference_id="idem", **keys), timeout=10
    )
    route = mediad_pb2.SubscriptionSpec(track_endpoint_id="idem/a", track_ssrc=1, endpoint_id="idem/b", ssrc=77)
    assert daemon.Subscribe(mediad_pb2.SubscribeRequest(subscriptions=[route]), timeout=10).created == 1
    assert daemon.Subscribe(mediad_pb2.SubscribeRequest(subscriptions=[route]), timeout=10).created == 0
    other_ssrc = mediad_pb2.SubscriptionSpec(track_endpoint_id="idem/a", track_ssrc=1, endpoint_id="idem/b", ssrc=78)
    assert (
        refused(lambda: daemon.Subscribe(mediad_pb2.SubscribeRequest(subscriptions=[other_ssrc]), timeout=10)).code()
        == grpc.StatusCode.ALREADY_EXISTS
    )
    missing = mediad_pb2.SubscriptionSpec(track_endpoint_id="idem/a", track_ssrc=999, endpoint_id="idem/b", ssrc=79)
    assert (
        refused(lambda: daemon.Subscribe(mediad_pb2.SubscribeRequest(subscriptions=[missing]), timeout=10)).code()
        == grpc.StatusCode.NOT_FOUND
    )

    assert daemon.DeleteEndpoint(mediad_pb2.DeleteEndpointRequest(endpoint_id="idem/a"), timeout=10).deleted
    assert (
        refused(
            lambda: daemon.DeleteEndpoint(mediad_pb2.DeleteEndpointRequest(endpoint_id="idem/a"), timeout=10)
        ).code()
        == grpc.StatusCode.NOT_FOUND
    )
    assert not daemon.DeleteEndpoint(
        mediad_pb2.DeleteEndpointRequest(endpoint_id="idem/a", allow_missing=True), timeout=10
    ).deleted
    assert udp_port_free(first.local_address.port)
    b = daemon.GetEndpoint(mediad_pb2.GetEndpointRequest(endpoint_id="idem/b"), timeout=10)
    assert list(b.subscriptions) == []  # went with the track's endpoint
    assert (
        daemon.ReleaseConference(
            mediad_pb2.ReleaseConferenceRequest(conference_id="idem"), timeout=10
        ).endpoints_deleted
        == 1
    )
    assert daemon.ListEndpoints(mediad_pb2.ListEndpointsRequest(conference_id="idem"), timeout=10).endpoints == []


@pytest.mark.parametrize("ip", ["::1", "localhost", "256.1.1.1", ""])
def test_media_daemon_takes_only_an_ipv4_address_as_remote(charter: Cluster, ip: str) -> None:
    daemon = mediad_stub(charter.daemons[0])
    request = mediad_pb2.CreateEndpointRequest(
        endpoint_id="remote/a",
        conference_id="remote",
        rx_key=os.urandom(30),
        tx_key=os.urandom(30),
        remote=media_pb2.Address(ip=ip, port=5000),
    )
    error = refused(lambda: daemon.CreateEndpoint(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("remote.ip:"), (
        error.details()
    )
    assert daemon.ListEndpoints(mediad_pb2.ListEndpointsRequest(conference_id="remote"), timeout=10).endpoints == []


def test_registry_refuses_bad_registrations(charter: Cluster) -> None:
    registry = registry_stub(charter.controller)
    error = refused(lambda: registry.Register(pb.RegisterRequest(), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("daemon:")
    daemon = pb.Daemon(daemon_id="x", grpc_address="127.0.0.1:1", media_ip="127.0.0.1", capacity=0)
    daemon.port_range.first, daemon.port_range.last = 30000, 30010
    error = refused(lambda: registry.Register(pb.RegisterRequest(daemon=daemon), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("daemon.capacity:")
    error = refused(
        lambda: registry.KeepAlive(pb.KeepAliveRequest(daemon_id="mediad-0", lease_id="forged"), timeout=10)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND and "register again" in error.details()


def test_drain_and_resume_through_the_api(charter: Cluster) -> None:
    daemon = mediad_stub(charter.daemons[1])
    request = mediad_pb2.CreateEndpointRequest(
        endpoint_id="drain/a", conference_id="drain", rx_key=os.urandom(30), tx_key=os.urandom(30)
    )
    try:
        assert daemon.Drain(mediad_pb2.DrainRequest(), timeout=10).draining
        error = refused(lambda: daemon.CreateEndpoint(request, timeout=10))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "draining" in error.details()
    finally:
        assert not daemon.Drain(mediad_pb2.DrainRequest(resume=True), timeout=10).draining
    assert daemon.CreateEndpoint(request, timeout=10).local_address.port
    assert (
        daemon.ReleaseConference(
            mediad_pb2.ReleaseConferenceRequest(conference_id="drain"), timeout=10
        ).endpoints_deleted
        == 1
    )


def test_join_replaces_a_leftover_endpoint_of_the_same_id(api: Any, charter: Cluster) -> None:
    conference = api.CreateConference(pb.CreateConferenceRequest(conference_id="leftover"), timeout=10)
    daemon = mediad_stub(charter.daemon(conference.daemon_id))
    stale = daemon.CreateEndpoint(
        mediad_pb2.CreateEndpointRequest(
            endpoint_id="leftover/p", conference_id="leftover", rx_key=os.urandom(30), tx_key=os.urandom(30)
        ),
        timeout=10,
    )
    joined = api.Join(join("leftover", "p", [video(3)]), timeout=10).participant
    endpoints = daemon.ListEndpoints(mediad_pb2.ListEndpointsRequest(conference_id="leftover"), timeout=10).endpoints
    assert [(e.endpoint_id, e.local_address.port) for e in endpoints] == [("leftover/p", joined.media_address.port)]
    assert [t.ssrc for t in endpoints[0].tracks] == [3]
    assert stale.local_address.port == joined.media_address.port or udp_port_free(stale.local_address.port)


def test_persistent_conference_outlives_its_last_participant(api: Any) -> None:
    api.CreateConference(pb.CreateConferenceRequest(conference_id="room", persistent=True), timeout=10)
    api.Join(join("room", "only"), timeout=10)
    assert not api.Leave(pb.LeaveRequest(conference_id="room", participant_id="only"), timeout=10).conference_ended
    kept = api.GetConference(pb.GetConferenceRequest(conference_id="room"), timeout=10)
    assert kept.persistent and list(kept.participants) == []
    api.Join(join("room", "again"), timeout=10)
    assert api.EndConference(pb.EndConferenceRequest(conference_id="room"), timeout=10).participants_removed == 1
