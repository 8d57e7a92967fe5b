"""Placement: which media daemon takes a conference or a participant, and when none can.

controller.conferences.Conferences driven in one process (tests/conference_world.py)."""

from __future__ import annotations

import pytest

from charter.errors import ResourceExhausted, Unavailable
from conference_world import LEASE_TTL, World, conference_with_a, run, settle, two_daemons, video


def test_conferences_go_to_the_least_loaded_daemon() -> None:
    async def scenario() -> None:
        w = World()
        for daemon_id in ("d3", "d1", "d2"):
            w.daemon(daemon_id, capacity=10)
        placed = [(await w.conferences.create(f"c{i}", "", persistent=False)).daemon_id for i in range(1, 5)]
        assert placed == ["d1", "d2", "d3", "d1"]  # empty ones by id, then by reserved load
        for p in "wxyz":
            await w.join("c2", p)  # d2: 4 endpoints + a reserve of 2 = 0.6
        # d1: 2 conferences reserve 0.4; d3: one reserve 0.2.
        assert (await w.conferences.create("c5", "", persistent=False)).daemon_id == "d3"
        # d1 and d3 both at 0.4 with two conferences: the smaller id.
        assert (await w.conferences.create("c6", "", persistent=False)).daemon_id == "d1"
        assert w.daemons.daemons["d2"].endpoint_ids("c2") == ["c2/w", "c2/x", "c2/y", "c2/z"]

    run(scenario)


def test_a_draining_daemon_takes_no_conference_and_no_participant() -> None:
    async def scenario() -> None:
        w, d1, d2 = two_daemons()
        await w.conferences.create("on-d1", "", persistent=False)
        await w.join("on-d1", "a", video(1))
        w.renew("d1", draining=True)
        for i in range(3):
            assert (await w.conferences.create(f"new-{i}", "", persistent=False)).daemon_id == "d2"
        calls = len(d1.calls)
        with pytest.raises(Unavailable, match="d1 of conference 'on-d1' is draining"):
            await w.join("on-d1", "b")
        assert len(d1.calls) == calls
        # Leaving still works on a draining daemon.
        assert await w.conferences.leave("on-d1", "a") is True
        assert d1.endpoint_ids() == [] and d2.endpoint_ids() == []
        w.renew("d2", draining=True)
        with pytest.raises(ResourceExhausted, match="d1: draining; d2: draining"):
            await w.conferences.create("more", "", persistent=False)

    run(scenario)


def test_full_daemons_are_resource_exhausted() -> None:
    async def scenario() -> None:
        w, d1, d2 = two_daemons(capacity=1)
        assert (await w.conferences.create("c1", "", persistent=False)).daemon_id == "d1"
        await w.join("c1", "a")
        assert (await w.conferences.create("c2", "", persistent=False)).daemon_id == "d2"
        await w.join("c2", "b")
        with pytest.raises(ResourceExhausted, match="d1: 1 of 1 endpoints in use; d2: 1 of 1 endpoints in use"):
            await w.conferences.create("c3", "", persistent=False)
        calls = len(d1.calls)
        with pytest.raises(ResourceExhausted, match="d1 of conference 'c1' is full \\(1 of 1 endpoints in use\\)"):
            await w.join("c1", "c")
        assert len(d1.calls) == calls and list((await w.conference("c1")).participants) == ["a"]
        assert d2.endpoint_ids() == ["c2/b"]

    run(scenario)


def test_a_daemon_that_refuses_for_lack_of_ports_fails_the_join_and_changes_nothing() -> None:
    async def scenario() -> None:
        w, d1, _ = await conference_with_a(ports=(20000, 20002))
        d1.occupy(20001, 20002)  # another process holds them: the controller does not know
        watch = await w.watch("c")
        with pytest.raises(ResourceExhausted, match="no free UDP port in 127.0.0.1:20000-20002"):
            await w.join("c", "b", video(2))
        await settle()
        conference = await w.conference("c")
        assert list(conference.participants) == ["a"] and conference.participants["a"].subscriptions == {}
        assert d1.endpoint_ids() == ["c/a"] and d1.routes == set()
        assert [c.method for c in d1.calls].count("DeleteEndpoint") == 0
        assert watch.summaries(initial=False) == []
        await watch.close()

    run(scenario)


def test_no_daemon_is_unavailable() -> None:
    async def scenario() -> None:
        w = World()
        with pytest.raises(Unavailable, match="no media daemon is registered"):
            await w.conferences.create("c", "", persistent=False)
        assert await w.conferences.page(10, "") == ([], "")

    run(scenario)


def test_an_expired_lease_takes_the_daemon_out_of_placement_and_its_conferences_out_of_reach() -> None:
    async def scenario() -> None:
        w, d1, d2 = two_daemons()
        assert (await w.conferences.create("c1", "", persistent=False)).daemon_id == "d1"
        await w.join("c1", "a", video(1))
        w.clock.advance(LEASE_TTL / 2)
        w.renew("d2")
        w.clock.advance(LEASE_TTL / 2 - 0.001)
        assert sorted(await w.conferences.candidates()) == ["d1", "d2"]
        w.clock.advance(0.001)  # d1's lease ends exactly now
        assert sorted(await w.conferences.candidates()) == ["d2"]
        assert (await w.conferences.create("c2", "", persistent=False)).daemon_id == "d2"
        calls = len(d1.calls)
        with pytest.raises(Unavailable, match="media daemon d1 of conference 'c1' is gone"):
            await w.join("c1", "b")
        # Leaving needs no daemon that is gone; the conference ends without calling it.
        assert await w.conferences.leave("c1", "a") is True
        assert len(d1.calls) == calls
        assert d1.endpoint_ids() == ["c1/a"]
        # It comes back holding the endpoint nobody owns now: reconciliation deletes it.
        w.register(d1)
        assert await w.conferences.reconcile("d1") == 1
        assert d1.endpoint_ids() == [] and d2.endpoint_ids() == []

    run(scenario)


def test_a_lease_ending_during_placement_places_on_what_was_live() -> None:
    """Placement reads the leases once: a lease that ends right after that read still places
    the conference on the daemon it chose (a second read used to find it gone: INTERNAL)."""

    async def scenario() -> None:
        w = World()
        d1 = w.daemon("d1")
        # The registry's clock reads just before the lease's end, then just after it.
        ticks = [w.clock.now + LEASE_TTL - 0.5, w.clock.now + LEASE_TTL + 0.5]
        w.registry.clock = lambda: ticks.pop(0) if len(ticks) > 1 else ticks[0]
        conference = await w.conferences.create("c", "", persistent=False)
        assert conference.daemon_id == "d1"
        assert d1.calls == []
        assert w.registry.get("d1") is None  # the next read finds the lease ended

    run(scenario)
