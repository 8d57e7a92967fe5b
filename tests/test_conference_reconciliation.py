"""Endpoints left on a daemon by earlier attempts: replaced on join, cleaned up after a lost
answer, deleted by reconciliation.

controller.conferences.Conferences driven in one process (tests/conference_world.py)."""

from __future__ import annotations

import asyncio

import pytest

from charter.errors import Unavailable
from conference_world import (
    World,
    audio,
    conference_with_a,
    leftover,
    one_conference,
    routes_of,
    run,
    settle,
    two_daemons,
    video,
)

# --- leftovers -----------------------------------------------------------------------------


def test_join_replaces_an_endpoint_left_over_by_an_earlier_attempt() -> None:
    async def scenario() -> None:
        w, d1, a = await conference_with_a()
        d1.seed(leftover("c/b"))
        b = await w.join("c", "b", audio(2))
        assert [(c.method, c.outcome) for c in d1.calls[1:]] == [
            ("CreateEndpoint", "ALREADY_EXISTS"),
            ("DeleteEndpoint", "ok"),
            ("CreateEndpoint", "ok"),
        ]
        assert d1.endpoint("c/b").spec.rx_key == b.send_key  # type: ignore[union-attr]
        assert d1.routes == routes_of(await w.conference("c")) and len(d1.routes) == 2
        assert a.subscriptions[("b", 2)].ssrc

    run(scenario)


def test_a_lost_answer_after_a_replaced_leftover_is_cleaned_up_too() -> None:
    async def scenario() -> None:
        w, d1 = await one_conference()
        d1.seed(leftover("c/a"))
        # The first CreateEndpoint meets the leftover; the one after its deletion is lost.
        d1.fail("CreateEndpoint", done=True, when=lambda spec: d1.endpoint(spec.endpoint_id) is None)
        with pytest.raises(Unavailable):
            await w.join("c", "a", video(1))
        assert [(c.method, c.outcome) for c in d1.calls] == [
            ("CreateEndpoint", "ALREADY_EXISTS"),
            ("DeleteEndpoint", "ok"),
            ("CreateEndpoint", "answer lost"),
            ("DeleteEndpoint", "ok"),
        ]
        assert d1.endpoint_ids() == [] and (await w.conference("c")).participants == {}

    run(scenario)


def test_an_endpoint_the_controller_could_not_delete_is_left_for_reconciliation() -> None:
    async def scenario() -> None:
        w, d1, _ = await conference_with_a()
        d1.fail("CreateEndpoint", done=True)
        d1.fail("DeleteEndpoint")
        with pytest.raises(Unavailable, match="CreateEndpoint"):
            await w.join("c", "b", audio(2))
        assert d1.endpoint_ids() == ["c/a", "c/b"]  # left behind, with its routes
        assert len(d1.routes) == 2
        assert await w.conferences.reconcile("d1") == 1
        assert d1.endpoint_ids() == ["c/a"] and d1.routes == set()
        assert list((await w.conference("c")).participants) == ["a"]

    run(scenario)


# --- reconciliation ------------------------------------------------------------------------


def test_reconcile_deletes_the_endpoints_no_participant_owns() -> None:
    async def scenario() -> None:
        w, d1, d2 = two_daemons()
        assert (await w.conferences.create("c1", "", persistent=False)).daemon_id == "d1"
        assert (await w.conferences.create("c2", "", persistent=False)).daemon_id == "d2"
        await w.join("c1", "a", video(1))
        await w.join("c1", "b", audio(2))
        await w.join("c2", "x", video(3))
        # Left on d1: an endpoint of c1 nobody owns, one of c2 (which lives on d2), one of an
        # ended conference.
        for ep_id in ("c1/ghost", "c2/x", "ended/p"):
            d1.seed(leftover(ep_id))
        before = set(d1.routes)
        calls = len(d1.calls)
        assert await w.conferences.reconcile("d1") == 3
        assert [(c.method, c.request) for c in d1.calls[calls:]] == [
            ("ListEndpoints", ""),
            ("ListEndpoints", "c1"),
            ("DeleteEndpoint", "c1/ghost"),
            ("ListEndpoints", "c2"),
            ("DeleteEndpoint", "c2/x"),
            ("ListEndpoints", "ended"),
            ("DeleteEndpoint", "ended/p"),
        ]
        assert d1.endpoint_ids() == ["c1/a", "c1/b"] and d1.routes == before == routes_of(await w.conference("c1"))
        assert d2.endpoint_ids() == ["c2/x"]
        assert await w.conferences.reconcile("d1") == 0
        assert await w.conferences.reconcile("unknown") == 0

    run(scenario)


def test_reconcile_leaves_a_join_in_flight_alone() -> None:
    async def scenario() -> None:
        w, d1, _ = await conference_with_a()
        gate = d1.hold("CreateEndpoint")
        joining = asyncio.create_task(w.join("c", "b", video(2)))
        await gate.entered.wait()
        reconciling = asyncio.create_task(w.conferences.reconcile("d1"))
        await settle()
        assert not reconciling.done()  # it saw c/b and waits for the conference's lock
        gate.release()
        await joining
        assert await reconciling == 0
        assert d1.endpoint_ids() == ["c/a", "c/b"] and len(d1.routes) == 2

    run(scenario)


def test_reconcile_fails_when_the_daemon_does_not_answer() -> None:
    async def scenario() -> None:
        w = World()
        d1 = w.daemon("d1")
        d1.fail("ListEndpoints")
        with pytest.raises(Unavailable, match="ListEndpoints"):
            await w.conferences.reconcile("d1")

    run(scenario)
