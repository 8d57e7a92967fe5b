"""The contract between the controller and a media daemon, as the controller's DaemonClient
sees it: each scenario runs against the in-memory double (tests/daemon_double.py) and against
MediaDaemonClient talking to a real `python -m mediad` (alone: --controller ''), so the double
the in-process tests rely on cannot drift from the real daemon. Errors are compared as the
real client raises them, with the daemon's own messages."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest

from charter.endpoints import EndpointSpec
from charter.errors import AlreadyExists, Internal, NotFound, ResourceExhausted, Unavailable
from charter.subscriptions import SubscriptionSpec, parse_subscription_spec
from charter.suites import DEFAULT_SUITE
from charter.tracks import Track, parse_track
from charter.v1 import mediad_pb2, mediad_pb2_grpc
from controller.daemons import DaemonClient, MediaDaemonClient
from daemon_double import DaemonDouble, DaemonDoubles
from processes import Process, free_udp_range, start_mediad

DAEMON_ID = "contract-mediad"
PORTS = 4


@dataclass(frozen=True)
class View:
    """An endpoint as the daemon holds it: its port, its tracks, the routes sending to it."""

    port: int
    tracks: dict[int, Track]
    receives: set[SubscriptionSpec]
    remote: tuple[str, int] | None = None
    """Its fixed remote; None while it latches."""


@dataclass
class Target:
    client: DaemonClient
    ports: tuple[int, int]
    drain: Callable[[bool], Awaitable[None]]
    view: Callable[[str], Awaitable[View | None]]


Scenario = Callable[[Target], Awaitable[None]]


def unused_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mediad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, tuple[int, int]]]:
    ports = free_udp_range(PORTS)
    process = start_mediad(tmp_path_factory.mktemp("contract"), "", DAEMON_ID, ports)
    try:
        yield process, ports
    finally:
        assert process.stop() == 0, process.log()[-3000:]


async def _double_target(double: DaemonDouble) -> Target:
    async def drain(resume: bool) -> None:
        double.drain(resume)

    async def view(endpoint_id: str) -> View | None:
        held = double.endpoint(endpoint_id)
        if held is None:
            return None
        return View(held.port, dict(held.tracks), double.routes_to(endpoint_id), held.spec.remote)

    return Target(double, (double.port_first, double.port_last), drain, view)


def _real_target(process: Process, ports: tuple[int, int], channel: grpc.aio.Channel) -> Target:
    stub = mediad_pb2_grpc.MediaDaemonStub(channel)

    async def drain(resume: bool) -> None:
        await stub.Drain(mediad_pb2.DrainRequest(resume=resume), timeout=5)

    async def view(endpoint_id: str) -> View | None:
        try:
            e = await stub.GetEndpoint(mediad_pb2.GetEndpointRequest(endpoint_id=endpoint_id), timeout=5)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return View(
            e.local_address.port,
            {t.ssrc: parse_track("track", t) for t in e.tracks},
            {parse_subscription_spec("subscription", s) for s in e.subscriptions},
            None if e.latching or not e.HasField("remote") else (e.remote.ip, e.remote.port),
        )

    return Target(MediaDaemonClient(DAEMON_ID, process.address), ports, drain, view)


@pytest.fixture(params=["double", "mediad"])
def run(request: pytest.FixtureRequest) -> Callable[[Scenario], None]:
    """Runs a scenario on a fresh double, or on the module's mediad (left empty and not
    draining afterwards, whatever the scenario did)."""

    def runner(scenario: Scenario) -> None:
        async def main() -> None:
            channel = None
            if request.param == "double":
                target = await _double_target(DaemonDouble(DAEMON_ID, ports=(31000, 31000 + PORTS - 1)))
            else:
                process, ports = request.getfixturevalue("mediad")
                channel = grpc.aio.insecure_channel(process.address)
                target = _real_target(process, ports, channel)
            try:
                await scenario(target)
            finally:
                await target.drain(True)
                for endpoint_id in await target.client.list_endpoints():
                    await target.client.delete_endpoint(endpoint_id)
                await target.client.close()
                if channel is not None:
                    await channel.close()

        asyncio.run(main())

    return runner


def video(ssrc: int, codec: str = "VP8") -> Track:
    return Track(ssrc=ssrc, kind="video", codec=codec, payload_type=96, clock_rate=90000)


def audio(ssrc: int) -> Track:
    return Track(ssrc=ssrc, kind="audio", codec="opus", payload_type=111, clock_rate=48000, channels=2)


def spec(
    endpoint_id: str,
    conference_id: str = "c",
    *,
    key: int = 1,
    tracks: tuple[Track, ...] = (),
    routes: tuple[SubscriptionSpec, ...] = (),
) -> EndpointSpec:
    return EndpointSpec(
        endpoint_id, conference_id, DEFAULT_SUITE, known_key(key), known_key(key + 100), None, tracks, routes
    )


def known_key(n: int) -> bytes:
    """A master key and salt told apart by `n` (not one byte repeated: that is refused)."""
    return bytes([n]) * 15 + bytes(range(15))


def route(source: str, track_ssrc: int, target: str, ssrc: int) -> SubscriptionSpec:
    return SubscriptionSpec(source, track_ssrc, target, ssrc)


def test_create_is_idempotent_and_other_parameters_are_refused_unless_replaced(run: Callable[[Scenario], None]) -> None:
    async def scenario(t: Target) -> None:
        port = await t.client.create_endpoint(spec("c/a"))
        assert t.ports[0] <= port <= t.ports[1]
        assert await t.client.create_endpoint(spec("c/a")) == port
        assert await t.client.list_endpoints() == {"c/a": "c"}
        with pytest.raises(AlreadyExists, match="exists with other parameters"):
            await t.client.create_endpoint(spec("c/a", key=2))
        with pytest.raises(AlreadyExists, match="exists with other parameters"):
            await t.client.create_endpoint(spec("c/a", "other"))
        assert (await t.view("c/a")).port == port  # type: ignore[union-attr]
        replaced = await t.client.create_endpoint(spec("c/a", key=2), replace=True)
        # The old port went to the back of the free ports: the new endpoint has another one.
        assert replaced != port and t.ports[0] <= replaced <= t.ports[1]
        assert await t.client.create_endpoint(spec("c/a", key=2)) == replaced
        assert await t.client.list_endpoints() == {"c/a": "c"}

    run(scenario)


def test_a_latching_endpoint_takes_a_fixed_remote_when_asked_again(run: Callable[[Scenario], None]) -> None:
    # The two ends of a relay link between daemons: the first is made latching, and told
    # the second's address once that is made; its port, tracks and routes stay.
    async def scenario(t: Target) -> None:
        port = await t.client.create_endpoint(spec("c/link", tracks=(video(1),)))
        assert (await t.view("c/link")).remote is None  # type: ignore[union-attr]
        fixed = dataclasses.replace(spec("c/link"), remote=("127.0.0.1", 40000))
        assert await t.client.create_endpoint(fixed) == port
        held = await t.view("c/link")
        assert held is not None and held.remote == ("127.0.0.1", 40000) and set(held.tracks) == {1}
        assert await t.client.create_endpoint(fixed) == port, "asked again, the same"
        with pytest.raises(AlreadyExists, match="exists with other parameters"):
            await t.client.create_endpoint(dataclasses.replace(fixed, remote=("127.0.0.1", 40002)))
        with pytest.raises(AlreadyExists, match="exists with other parameters"):
            await t.client.create_endpoint(dataclasses.replace(spec("c/link", key=3), remote=("127.0.0.1", 40000)))

    run(scenario)


def test_a_retry_adds_what_is_new_and_refuses_a_changed_track(run: Callable[[Scenario], None]) -> None:
    async def scenario(t: Target) -> None:
        a = await t.client.create_endpoint(spec("c/a", tracks=(video(1),)))
        await t.client.create_endpoint(spec("c/b", key=2, tracks=(video(2),), routes=(route("c/a", 1, "c/b", 10),)))
        assert await t.client.create_endpoint(spec("c/a", tracks=(video(1), audio(3)))) == a
        assert set((await t.view("c/a")).tracks) == {1, 3}  # type: ignore[union-attr]
        again = spec("c/b", key=2, tracks=(video(2),), routes=(route("c/a", 1, "c/b", 10), route("c/a", 3, "c/b", 11)))
        await t.client.create_endpoint(again)
        assert (await t.view("c/b")).receives == {route("c/a", 1, "c/b", 10), route("c/a", 3, "c/b", 11)}  # type: ignore[union-attr]
        with pytest.raises(AlreadyExists, match="SSRC 1 and another description"):
            await t.client.create_endpoint(spec("c/a", tracks=(video(1, codec="H264"),)))
        assert (await t.view("c/a")).tracks == {1: video(1), 3: audio(3)}  # type: ignore[union-attr]
        # A retry is not all or nothing: its new tracks are added before its routes are checked.
        with pytest.raises(Internal, match=r"CreateEndpoint \(NOT_FOUND\).*'c/x' not found"):
            await t.client.create_endpoint(
                spec("c/b", key=2, tracks=(video(2), video(4)), routes=(route("c/x", 1, "c/b", 12),))
            )
        assert set((await t.view("c/b")).tracks) == {2, 4}  # type: ignore[union-attr]

    run(scenario)


def test_routes_are_made_all_or_nothing(run: Callable[[Scenario], None]) -> None:
    async def scenario(t: Target) -> None:
        await t.client.create_endpoint(spec("c/a", tracks=(video(1),)))
        await t.client.create_endpoint(spec("c/b", key=2, tracks=(audio(2),)))
        good = route("c/a", 1, "c/c", 10)
        also = route("c/a", 1, "c/b", 20)
        refusals = [
            (
                (good, also, route("c/x", 1, "c/c", 11)),
                Internal,
                r"NOT_FOUND.*track_endpoint_id: endpoint 'c/x' not found",
            ),
            ((good, also, route("c/b", 2, "c/y", 11)), Internal, r"NOT_FOUND.*endpoint_id: endpoint 'c/y' not found"),
            ((good, also, route("c/a", 99, "c/c", 11)), Internal, r"NOT_FOUND.*has no track with SSRC 99"),
            ((good, route("c/c", 5, "c/c", 11)), Internal, r"INVALID_ARGUMENT.*cannot receive its own track"),
            (
                (good, route("c/b", 2, "c/c", 10)),
                AlreadyExists,
                r"subscriptions\[1\]\.ssrc: endpoint 'c/c' already receives SSRC 10",
            ),
        ]
        for routes, error, message in refusals:
            for replace in (False, True):
                with pytest.raises(error, match=message):
                    await t.client.create_endpoint(
                        spec("c/c", key=3, tracks=(video(5),), routes=routes), replace=replace
                    )
                assert await t.client.list_endpoints() == {"c/a": "c", "c/b": "c"}, routes
                assert (await t.view("c/b")).receives == set()  # type: ignore[union-attr]
        routes = (good, route("c/b", 2, "c/c", 11), route("c/c", 5, "c/a", 10), route("c/c", 5, "c/b", 10))
        await t.client.create_endpoint(spec("c/c", key=3, tracks=(video(5),), routes=routes))
        assert (await t.view("c/c")).receives == {good, route("c/b", 2, "c/c", 11)}  # type: ignore[union-attr]
        assert (await t.view("c/a")).receives == {route("c/c", 5, "c/a", 10)}  # type: ignore[union-attr]
        # A route that exists answers again; the same track with another SSRC, or an SSRC the
        # receiver already gets, is refused.
        await t.client.create_endpoint(spec("c/c", key=3, tracks=(video(5),), routes=(good,)))
        with pytest.raises(AlreadyExists, match="already receives this track with SSRC 10"):
            await t.client.create_endpoint(spec("c/c", key=3, routes=(route("c/a", 1, "c/c", 12),)))
        with pytest.raises(AlreadyExists, match="'c/c' already receives SSRC 11"):
            await t.client.create_endpoint(spec("c/d", key=4, tracks=(video(7),), routes=(route("c/d", 7, "c/c", 11),)))
        assert "c/d" not in await t.client.list_endpoints()

    run(scenario)


def test_deleting_an_endpoint_removes_the_routes_from_and_to_it(run: Callable[[Scenario], None]) -> None:
    async def scenario(t: Target) -> None:
        await t.client.create_endpoint(spec("c/a", tracks=(video(1),)))
        await t.client.create_endpoint(spec("c/b", key=2, tracks=(audio(2),), routes=(route("c/a", 1, "c/b", 10),)))
        c_routes = (
            route("c/a", 1, "c/c", 10),
            route("c/b", 2, "c/c", 11),
            route("c/c", 3, "c/a", 10),
            route("c/c", 3, "c/b", 11),
        )
        await t.client.create_endpoint(spec("c/c", key=3, tracks=(video(3),), routes=c_routes))
        assert await t.client.delete_endpoint("c/b") is True
        assert await t.client.delete_endpoint("c/b") is False
        assert (await t.view("c/a")).receives == {route("c/c", 3, "c/a", 10)}  # type: ignore[union-attr]
        assert (await t.view("c/c")).receives == {route("c/a", 1, "c/c", 10)}  # type: ignore[union-attr]
        assert await t.view("c/b") is None
        # Its SSRCs are free again at its receivers.
        await t.client.create_endpoint(spec("c/b", key=5, tracks=(audio(2),), routes=c_routes[1:2] + c_routes[3:]))
        assert (await t.view("c/c")).receives == {route("c/a", 1, "c/c", 10), route("c/b", 2, "c/c", 11)}  # type: ignore[union-attr]

    run(scenario)


def test_removing_tracks_removes_the_routes_from_them_and_is_idempotent(run: Callable[[Scenario], None]) -> None:
    # A link end's relayed copies of a publisher that left: the tracks go with their routes,
    # the endpoint's other tracks and routes stay.
    async def scenario(t: Target) -> None:
        await t.client.create_endpoint(spec("c/link", tracks=(video(1), audio(2), video(3))))
        await t.client.create_endpoint(spec("c/a", key=2, routes=(route("c/link", 1, "c/a", 10),
                                                                   route("c/link", 2, "c/a", 11),
                                                                   route("c/link", 3, "c/a", 12))))
        await t.client.create_endpoint(spec("c/b", key=3, tracks=(video(4),),
                                            routes=(route("c/link", 1, "c/b", 10), route("c/link", 3, "c/b", 11))))
        await t.client.create_endpoint(spec("c/link", routes=(route("c/b", 4, "c/link", 20),)))
        assert await t.client.remove_tracks("c/link", [1, 2, 99]) == 2
        held = await t.view("c/link")
        assert held is not None and held.tracks == {3: video(3)}
        assert held.receives == {route("c/b", 4, "c/link", 20)}, "routes to it stay"
        assert (await t.view("c/a")).receives == {route("c/link", 3, "c/a", 12)}  # type: ignore[union-attr]
        assert (await t.view("c/b")).receives == {route("c/link", 3, "c/b", 11)}  # type: ignore[union-attr]
        # A retry finds nothing to remove and changes nothing.
        assert await t.client.remove_tracks("c/link", [1, 2]) == 0
        assert await t.client.remove_tracks("c/link", []) == 0
        assert (await t.view("c/link")).tracks == {3: video(3)}  # type: ignore[union-attr]
        # Its SSRCs are free: the track can be added again, and routed with the old SSRCs.
        await t.client.create_endpoint(spec("c/link", tracks=(audio(1),)))
        await t.client.create_endpoint(spec("c/a", key=2, routes=(route("c/link", 1, "c/a", 10),)))
        assert (await t.view("c/a")).receives == {route("c/link", 3, "c/a", 12),  # type: ignore[union-attr]
                                                  route("c/link", 1, "c/a", 10)}
        with pytest.raises(NotFound, match=r"media daemon contract-mediad: endpoint 'c/x' not found"):
            await t.client.remove_tracks("c/x", [1])
        with pytest.raises(Internal, match=r"RemoveTracks \(INVALID_ARGUMENT\).*endpoint_id: is required"):
            await t.client.remove_tracks("", [1])
        assert set((await t.view("c/link")).tracks) == {1, 3}  # type: ignore[union-attr]

    run(scenario)


def test_release_conference_and_list_by_conference(run: Callable[[Scenario], None]) -> None:
    async def scenario(t: Target) -> None:
        await t.client.create_endpoint(spec("c1/a", "c1"))
        await t.client.create_endpoint(spec("c1/b", "c1"))
        await t.client.create_endpoint(spec("c2/a", "c2"))
        assert await t.client.list_endpoints("c1") == {"c1/a": "c1", "c1/b": "c1"}
        assert await t.client.list_endpoints("none") == {}
        assert await t.client.release_conference("c1") == 2
        assert await t.client.release_conference("c1") == 0
        assert await t.client.release_conference("none") == 0
        assert await t.client.list_endpoints() == {"c2/a": "c2"}
        with pytest.raises(Internal, match=r"INVALID_ARGUMENT.*conference_id: is required"):
            await t.client.release_conference("")
        with pytest.raises(Internal, match=r"INVALID_ARGUMENT.*endpoint_id: is required"):
            await t.client.delete_endpoint("")

    run(scenario)


def test_ports_come_from_the_range_until_it_is_full(run: Callable[[Scenario], None]) -> None:
    async def scenario(t: Target) -> None:
        ports = [await t.client.create_endpoint(spec(f"c/{i}")) for i in range(PORTS)]
        assert sorted(ports) == list(range(t.ports[0], t.ports[1] + 1))
        with pytest.raises(
            ResourceExhausted, match=rf"has no room: this media daemon is full \({PORTS} of {PORTS} endpoints\)"
        ):
            await t.client.create_endpoint(spec("c/more"))
        # A retry needs no new port.
        assert await t.client.create_endpoint(spec("c/0")) == ports[0]
        assert await t.client.delete_endpoint("c/2")
        assert await t.client.create_endpoint(spec("c/more")) == ports[2]

    run(scenario)


def test_a_draining_daemon_takes_no_new_endpoint(run: Callable[[Scenario], None]) -> None:
    async def scenario(t: Target) -> None:
        await t.client.create_endpoint(spec("c/a"))
        await t.drain(False)
        with pytest.raises(Unavailable, match="takes no new endpoints: this media daemon is draining"):
            await t.client.create_endpoint(spec("c/b"))
        with pytest.raises(Unavailable):
            await t.client.create_endpoint(spec("c/a", key=2), replace=True)  # deleted, then refused
        assert await t.client.list_endpoints() == {}
        await t.drain(True)
        port = await t.client.create_endpoint(spec("c/b"))
        assert t.ports[0] <= port <= t.ports[1]
        await t.drain(False)
        # A retry of an endpoint it holds still answers, with its port; deleting still works.
        assert await t.client.create_endpoint(spec("c/b")) == port
        assert await t.client.delete_endpoint("c/b") is True
        assert await t.client.list_endpoints() == {}

    run(scenario)


@pytest.mark.parametrize("kind", ["double", "nobody"])
def test_a_daemon_nobody_answers_for_is_unavailable(kind: str) -> None:
    async def scenario() -> None:
        address = f"127.0.0.1:{unused_tcp_port()}"
        client: DaemonClient = (
            DaemonDoubles().get(DAEMON_ID, address)
            if kind == "double"
            else MediaDaemonClient(DAEMON_ID, address, timeout=5)
        )
        try:
            calls: list[Awaitable[object]] = [
                client.create_endpoint(spec("c/a"), replace=True),
                client.delete_endpoint("c/a"),
                client.release_conference("c"),
                client.list_endpoints(),
                client.remove_tracks("c/a", [1]),
            ]
            for call in calls:
                with pytest.raises(
                    Unavailable, match=f"media daemon {DAEMON_ID} did not answer .* \\(UNAVAILABLE\\): try again"
                ):
                    await call
        finally:
            await client.close()

    asyncio.run(scenario())


def test_the_double_records_its_calls_as_rpcs() -> None:
    """Not a contract case but what makes the double usable: one recorded call per RPC, as
    MediaDaemonClient makes them (a replace is CreateEndpoint, DeleteEndpoint, CreateEndpoint)."""

    async def scenario() -> None:
        double = DaemonDouble(DAEMON_ID)
        await double.create_endpoint(spec("c/a"))
        await double.create_endpoint(spec("c/a", key=2), replace=True)
        assert [(c.method, c.outcome) for c in double.calls] == [
            ("CreateEndpoint", "ok"),
            ("CreateEndpoint", "ALREADY_EXISTS"),
            ("DeleteEndpoint", "ok"),
            ("CreateEndpoint", "ok"),
        ]
        assert double.created_specs() == [spec("c/a"), spec("c/a", key=2)]

    asyncio.run(scenario())


def test_route_options_are_kept_and_rtx_ssrcs_are_taken(run: Callable[[Scenario], None]) -> None:
    async def scenario(t: Target) -> None:
        await t.client.create_endpoint(spec("c/a", tracks=(video(1), audio(3))))
        browser = SubscriptionSpec(
            "c/a", 1, "c/b", 10, payload_type=102, strip_extensions=True, rtx_ssrc=11, rtx_payload_type=103,
            wait_for_key_frame=True,
        )
        await t.client.create_endpoint(spec("c/b", key=2, routes=(browser,)))
        assert (await t.view("c/b")).receives == {browser}  # type: ignore[union-attr]
        # A route's RTX SSRC is one the receiver gets: no other route may send it.
        with pytest.raises(AlreadyExists, match=r"subscriptions\[0\]\.ssrc: endpoint 'c/b' already receives SSRC 11"):
            await t.client.create_endpoint(spec("c/b", key=2, routes=(route("c/a", 3, "c/b", 11),)))
        clash = SubscriptionSpec("c/a", 3, "c/c", 21, rtx_ssrc=20, rtx_payload_type=97)
        refusal = r"subscriptions\[1\]\.rtx_ssrc: endpoint 'c/c' already receives SSRC 20"
        with pytest.raises(AlreadyExists, match=refusal):
            await t.client.create_endpoint(spec("c/c", key=3, routes=(route("c/a", 1, "c/c", 20), clash)))
        assert await t.client.list_endpoints() == {"c/a": "c", "c/b": "c"}
        assert (await t.view("c/b")).receives == {browser}  # type: ignore[union-attr]

    run(scenario)
