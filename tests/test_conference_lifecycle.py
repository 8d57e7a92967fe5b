"""A conference's life: created, listed, joined, left, ended.

controller.conferences.Conferences driven in one process (tests/conference_world.py)."""

from __future__ import annotations

import pytest

from charter.errors import AlreadyExists, NotFound
from charter.subscriptions import SubscriptionSpec
from charter.suites import DEFAULT_SUITE, SrtpSuite
from conference_world import World, audio, conference_with_a, one_conference, routes_of, run, settle, video
from controller import messages

# --- conferences ---------------------------------------------------------------------------


def test_create_get_page_and_end() -> None:
    async def scenario() -> None:
        w = World()
        d1 = w.daemon("d1")
        created = [await w.conferences.create(f"conf-{i}", f"name {i}", persistent=False) for i in (3, 1, 4, 2, 5)]
        generated = await w.conferences.create("", "generated", persistent=True)
        assert generated.conference_id.startswith("conf-") and generated.persistent
        assert all(c.daemon_id == "d1" and c.created_at == w.clock.now for c in created)
        got = await w.conferences.get("conf-4")
        assert (got.name, got.persistent, got.participants) == ("name 4", False, {})

        ids, token, pages = [], "", 0
        while True:
            page, token = await w.conferences.page(2, token)
            ids += [c.conference_id for c in page]
            pages += 1
            if not token:
                break
        assert ids == sorted(["conf-1", "conf-2", "conf-3", "conf-4", "conf-5", generated.conference_id])
        assert pages == 3
        # A page that ends exactly at the last conference has no next page.
        everything, token = await w.conferences.page(6, "")
        assert len(everything) == 6 and token == ""

        await w.join("conf-4", "a", video(1))
        await w.join("conf-4", "b", audio(2))
        assert d1.endpoint_ids() == ["conf-4/a", "conf-4/b"]
        assert await w.conferences.end("conf-4") == 2
        assert [c.request for c in d1.calls_to("ReleaseConference")] == ["conf-4"]
        assert d1.endpoint_ids() == [] and d1.routes == set()
        with pytest.raises(NotFound, match="'conf-4' not found"):
            await w.conferences.get("conf-4")
        with pytest.raises(NotFound):
            await w.conferences.end("conf-4")
        assert [c.conference_id for c in (await w.conferences.page(100, ""))[0]] == [i for i in ids if i != "conf-4"]

    run(scenario)


def test_a_taken_conference_id_is_refused() -> None:
    async def scenario() -> None:
        w = World()
        w.daemon("d1")
        await w.conferences.create("c", "first", persistent=False)
        with pytest.raises(AlreadyExists, match="'c' already exists"):
            await w.conferences.create("c", "second", persistent=True)
        assert (await w.conference("c")).name == "first"

    run(scenario)


# --- joining -------------------------------------------------------------------------------


def test_join_makes_the_endpoint_with_its_keys_tracks_and_address() -> None:
    async def scenario() -> None:
        w, d1 = await one_conference(ports=(30000, 30009), media_ip="192.0.2.7")
        send_key = bytes(range(30))
        a = await w.join("c", "a", video(11), audio(12), receive_address=("198.51.100.1", 5004), send_key=send_key)
        (spec,) = d1.created_specs()
        assert spec.endpoint_id == "c/a" == a.endpoint_id and spec.conference_id == "c"
        assert (spec.rx_key, spec.tx_key) == (send_key, a.receive_key) and len(a.receive_key) == 30
        assert spec.remote == ("198.51.100.1", 5004) and spec.tracks == (video(11), audio(12))
        assert spec.suite == DEFAULT_SUITE and spec.subscriptions == ()
        assert a.media_address == ("192.0.2.7", d1.endpoint("c/a").port)  # type: ignore[union-attr]
        assert a.joined_at == w.clock.now and a.daemon_id == "d1"

        b = await w.join("c", "", suite=SrtpSuite.AEAD_AES_128_GCM)
        assert b.participant_id.startswith("p-") and len(b.send_key) == len(b.receive_key) == 28
        assert b.media_address[1] != a.media_address[1]
        assert await w.conferences.get_participant("c", b.participant_id) is b

    run(scenario)


def test_join_refusals_call_no_daemon() -> None:
    async def scenario() -> None:
        w, d1, _ = await conference_with_a()
        calls = len(d1.calls)
        with pytest.raises(NotFound, match="'nowhere' not found"):
            await w.join("nowhere", "a")
        with pytest.raises(AlreadyExists, match="'a' is already in conference 'c'"):
            await w.join("c", "a", video(2))
        assert len(d1.calls) == calls
        assert list((await w.conference("c")).participants) == ["a"]
        with pytest.raises(NotFound, match="'zed' is not in conference 'c'"):
            await w.conferences.get_participant("c", "zed")

    run(scenario)


# --- leaving -------------------------------------------------------------------------------


def test_leave_removes_the_routes_and_tells_each_watcher_its_ssrcs() -> None:
    async def scenario() -> None:
        w, d1, a = await conference_with_a()
        await w.join("c", "b", video(2), audio(3))
        c = await w.join("c", "c", audio(4))
        before = {p: dict(x.subscriptions) for p, x in (("a", a), ("c", c))}
        watch = await w.watch("c")
        assert await w.conferences.leave("c", "b") is False
        await settle()
        assert [(x.method, x.request) for x in d1.calls[-1:]] == [("DeleteEndpoint", "c/b")]
        assert d1.endpoint_ids() == ["c/a", "c/c"]
        conference = await w.conference("c")
        assert (
            d1.routes
            == routes_of(conference)
            == {
                SubscriptionSpec("c/a", 1, "c/c", c.subscriptions[("a", 1)].ssrc, wait_for_key_frame=True),
                SubscriptionSpec("c/c", 4, "c/a", a.subscriptions[("c", 4)].ssrc),
            }
        )
        assert watch.summaries(initial=False) == [
            ("track removed", "b", 2, {"a": before["a"][("b", 2)].ssrc, "c": before["c"][("b", 2)].ssrc}),
            ("track removed", "b", 3, {"a": before["a"][("b", 3)].ssrc, "c": before["c"][("b", 3)].ssrc}),
            ("left", "b"),
        ]
        removed = watch.events[-2]
        assert messages.event_to_proto(removed, "c").track_removed.ssrc == before["c"][("b", 3)].ssrc
        assert messages.event_to_proto(removed, "c").track_removed.track_ssrc == 3
        assert set(a.subscriptions) == {("c", 4)} and set(c.subscriptions) == {("a", 1)}
        with pytest.raises(NotFound, match="'b' is not in conference 'c'"):
            await w.conferences.leave("c", "b")
        with pytest.raises(NotFound):
            await w.conferences.leave("nowhere", "a")
        await watch.close()

    run(scenario)


def test_the_last_leave_ends_a_conference_that_is_not_persistent() -> None:
    async def scenario() -> None:
        w, d1, _ = await conference_with_a()
        await w.join("c", "b", video(2))
        watch = await w.watch("c")
        assert await w.conferences.leave("c", "a") is False
        assert await w.conferences.leave("c", "b") is True
        await settle()
        with pytest.raises(NotFound):
            await w.conferences.get("c")
        assert [c.request for c in d1.calls_to("ReleaseConference")] == ["c"]
        assert d1.endpoint_ids() == []
        assert watch.summaries(initial=False)[-3:] == [("track removed", "b", 2, {}), ("left", "b"), ("ended", "empty")]
        assert watch.ended and watch.error is None

    run(scenario)


def test_the_last_leave_keeps_a_persistent_conference() -> None:
    async def scenario() -> None:
        w, d1, _ = await conference_with_a(persistent=True)
        watch = await w.watch("c")
        assert await w.conferences.leave("c", "a") is False
        await settle()
        assert (await w.conference("c")).participants == {}
        assert d1.calls_to("ReleaseConference") == [] and d1.endpoint_ids() == []
        assert watch.summaries(initial=False) == [("track removed", "a", 1, {}), ("left", "a")]
        assert not watch.ended
        await w.join("c", "b")
        await watch.close()

    run(scenario)
