"""How much one caller may take of the controller: calls per second and open watch streams
(controller/limits.py, with a clock the test moves), participants per conference, the end
of a conference nobody joins (in process), and the same limits, with the largest request
the controller reads, through a real controller: RESOURCE_EXHAUSTED naming the limit and
the setting, and nothing changed by a refused call."""
from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from charter.errors import ResourceExhausted
from charter.tokens import ApiKeys, Grant
from charter.v1 import controller_pb2 as pb
from conference_world import World, run, video
from controller.limits import CallerLimits, Limits, caller_of
from processes import cluster, conference_stub, start_controller
from waits import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_caller_gets_bursts_of_twice_its_rate_then_its_rate() -> None:
    clock = Clock()
    limits = CallerLimits(Limits(calls_per_second=5), clock)
    for _ in range(10):
        limits.admit("ipv4:10.0.0.1")
    with pytest.raises(ResourceExhausted, match=r"calls more than 5 times a second \(the controller's --max-calls"):
        limits.admit("ipv4:10.0.0.1")
    limits.admit("ipv4:10.0.0.2")  # another caller is not held up
    clock.now += 1.0
    for _ in range(5):
        limits.admit("ipv4:10.0.0.1")
    with pytest.raises(ResourceExhausted):
        limits.admit("ipv4:10.0.0.1")


def test_watch_streams_per_caller_are_counted_while_open() -> None:
    limits = CallerLimits(Limits(watches_per_caller=2))
    with limits.watching("a"), limits.watching("a"):
        with pytest.raises(ResourceExhausted, match="2 watch streams open"):
            with limits.watching("a"):
                pass
        with limits.watching("b"):
            pass
    with limits.watching("a"), limits.watching("a"):
        pass  # closed streams count no more


@pytest.mark.parametrize(("peer", "caller"), [("ipv4:127.0.0.1:53412", "ipv4:127.0.0.1"),
                                               ("ipv6:[::1]:4000", "ipv6:[::1]"), ("unix:/tmp/s", "unix:/tmp/s")])
def test_the_caller_is_the_address_without_its_port(peer: str, caller: str) -> None:
    assert caller_of(peer) == caller


def test_a_full_conference_takes_nobody_more_and_an_unused_one_ends() -> None:
    async def scenario() -> None:
        w = World()
        w.conferences.limits = Limits(participants_per_conference=2, unused_conference_seconds=60)
        w.daemon("d1")
        await w.conferences.create("full", "", persistent=False)
        await w.join("full", "a", video(1))
        await w.join("full", "b", video(2))
        with pytest.raises(ResourceExhausted, match="has 2 participants, the most a conference takes"):
            await w.join("full", "c", video(3))
        assert list((await w.conference("full")).participants) == ["a", "b"]
        await w.conferences.create("unused", "", persistent=False)
        await w.conferences.create("kept", "", persistent=True)
        assert await w.conferences.end_unused_now() == 0
        w.clock.advance(61)
        assert await w.conferences.end_unused_now() == 1
        assert {c.conference_id for c in (await w.conferences.page(10, ""))[0]} == {"full", "kept"}

    run(scenario)


def test_a_participant_publishes_at_most_its_tracks_and_a_daemon_takes_at_most_its_conferences() -> None:
    async def scenario() -> None:
        w = World()
        w.conferences.limits = Limits(tracks_per_participant=2, conferences_per_daemon=2)
        w.daemon("d1", capacity=1000)
        await w.conferences.create("one", "", persistent=False)
        with pytest.raises(ResourceExhausted, match=r"publishes 3 tracks, more than the 2 one may \(the "
                           "controller's --max-tracks"):
            await w.join("one", "a", video(1), video(2), video(3))
        assert not (await w.conference("one")).participants
        await w.join("one", "a", video(1), video(2))
        await w.conferences.create("two", "", persistent=False)
        with pytest.raises(ResourceExhausted, match=r"d1: 2 conferences, its most \(--max-conferences-per-daemon"):
            await w.conferences.create("three", "", persistent=False)
        w.daemon("d2", capacity=1000)
        assert (await w.conferences.create("three", "", persistent=False)).daemon_id == "d2"

    run(scenario)


def test_a_caller_may_have_so_many_live_conferences(tmp_path: Path) -> None:
    """Counted per token holder: another token of the same key is another caller; ending a
    conference frees its place."""
    with cluster(tmp_path, daemons=1, controller_options=["--auth", "token", "--max-conferences-per-caller",
                                                          "2"]) as charter:
        keys = ApiKeys(Path(charter.controller.log_path).parent / "api-keys.json")
        ops = (("authorization", "Bearer " + keys.token(Grant("*", ("create", "end")), 600)),)
        team = (("authorization", "Bearer " + keys.token(Grant("team", ("create",)), 600)),)
        api = conference_stub(charter.controller)
        for name in ("c1", "c2"):
            api.CreateConference(pb.CreateConferenceRequest(conference_id=name), timeout=10, metadata=ops)
        with pytest.raises(grpc.RpcError) as error:
            api.CreateConference(pb.CreateConferenceRequest(conference_id="c3"), timeout=10, metadata=ops)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "has created 2 conferences that have not ended" in error.value.details()
        assert "--max-conferences-per-caller" in error.value.details()
        listed = api.ListConferences(pb.ListConferencesRequest(), timeout=10, metadata=(
            ("authorization", "Bearer " + keys.token(Grant("*", ("read",)), 600)),))
        assert {c.conference_id for c in listed.conferences} == {"c1", "c2"}, "the refused call made nothing"
        api.CreateConference(pb.CreateConferenceRequest(conference_id="team"), timeout=10, metadata=team)
        api.EndConference(pb.EndConferenceRequest(conference_id="c1"), timeout=10, metadata=ops)
        api.CreateConference(pb.CreateConferenceRequest(conference_id="c3"), timeout=10, metadata=ops)


def test_a_real_controller_refuses_what_is_over_its_limits(tmp_path: Path) -> None:
    controller = start_controller(tmp_path, options=["--max-calls-per-second", "20"])
    try:
        api = conference_stub(controller)
        # Too large a request: refused before it is read (the largest is 256 kB).
        with pytest.raises(grpc.RpcError) as error:
            api.Join(pb.JoinRequest(conference_id="x", offer="v=0\r\n" + "a=x\r\n" * 60_000), timeout=10)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Calls per second: a burst of more than twice the rate is refused in part.
        codes = []
        for _ in range(60):
            try:
                api.ListConferences(pb.ListConferencesRequest(), timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as refused:
                codes.append(refused.code())
                if refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    assert "calls more than 20 times a second" in refused.details()
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and codes[0] == grpc.StatusCode.OK
    finally:
        assert controller.stop() == 0


def test_a_real_controller_limits_the_watch_streams_of_a_caller(tmp_path: Path) -> None:
    with cluster(tmp_path, daemons=1, controller_options=["--max-watches-per-caller", "2"]) as charter:
        api = conference_stub(charter.controller)
        api.CreateConference(pb.CreateConferenceRequest(conference_id="watched", persistent=True), timeout=10)
        opened = [api.WatchConference(pb.WatchConferenceRequest(conference_id="watched"), timeout=30)
                  for _ in range(2)]
        readers = [threading.Thread(target=_drain, args=(s,), daemon=True) for s in opened]
        for reader in readers:
            reader.start()
        third = api.WatchConference(pb.WatchConferenceRequest(conference_id="watched"), timeout=10)
        with pytest.raises(grpc.RpcError) as error:
            next(third)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 watch streams open" in error.value.details() and "--max-watches-per-caller" in error.value.details()
        for stream in opened:
            stream.cancel()
        # Once they are closed, a new one opens.
        wait_until(lambda: _watch_opens(api), what="a watch stream to open again")


def _drain(stream: object) -> None:
    try:
        for _ in stream:  # type: ignore[attr-defined]
            pass
    except grpc.RpcError:
        pass


def _watch_opens(api: object) -> bool:
    """A watch stream of the (empty) conference stays open: no event comes, its deadline ends it."""
    stream = api.WatchConference(pb.WatchConferenceRequest(conference_id="watched"), timeout=1)  # type: ignore[attr-defined]
    try:
        next(stream)
        return True
    except grpc.RpcError as error:
        return bool(error.code() == grpc.StatusCode.DEADLINE_EXCEEDED)
