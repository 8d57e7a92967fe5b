"""controller.conferences.Conferences driven directly, in one process: MemoryStore, a Registry
on a clock the test moves, an EventHub and in-memory media daemons (tests/daemon_double.py,
held to the real daemon by tests/test_daemon_contract.py). No socket, no gRPC."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from types import SimpleNamespace

import grpc
import pytest

from charter.endpoints import EndpointSpec
from charter.errors import AlreadyExists, Internal, NotFound, ResourceExhausted, Unavailable
from charter.subscriptions import SubscriptionSpec
from charter.suites import DEFAULT_SUITE, SrtpSuite
from conference_world import LEASE_TTL, Watch, World, audio, routes_of, run, settle, summary, video
from controller import conferences as conferences_module
from controller import messages


def leftover(ep_id: str) -> EndpointSpec:
    """An endpoint some earlier attempt left on a daemon (its conference is the id's prefix)."""
    return EndpointSpec(ep_id, ep_id.split("/")[0], DEFAULT_SUITE, b"l" * 30, b"m" * 30, None)


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
        w = World()
        d1 = w.daemon("d1", ports=(30000, 30009), media_ip="192.0.2.7")
        await w.conferences.create("c", "", persistent=False)
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
        w = World()
        d1 = w.daemon("d1")
        await w.conferences.create("c", "", persistent=False)
        await w.join("c", "a", video(1))
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


def test_join_assigns_each_receiver_distinct_ssrcs_never_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SSRC source is made adversarial: it keeps offering 0, the participants' own track
    SSRCs and SSRCs already given out, so every rule of new_ssrc has to hold to pass."""
    pool = [0, 111, 112, 221, 331, 332, 1, 1, 2, 2, 3, 111, 4, 5, 6, 7, 8, 9]
    offered = itertools.cycle(pool)
    asked = []

    def randbits(k: int) -> int:
        assert k == 32
        asked.append(value := next(offered))
        return value

    monkeypatch.setattr(conferences_module, "secrets", SimpleNamespace(randbits=randbits, token_hex=secrets.token_hex))

    async def scenario() -> None:
        w = World()
        d1 = w.daemon("d1")
        await w.conferences.create("c", "", persistent=False)
        await w.join("c", "a", video(111), audio(112))
        await w.join("c", "b", video(221))
        await w.join("c", "c", video(331), audio(332))
        await w.join("c", "d")  # receives only
        conference = await w.conference("c")
        expected_counts = {"a": 3, "b": 4, "c": 3, "d": 5}
        for receiver in conference.participants.values():
            received = [s.ssrc for s in receiver.subscriptions.values()]
            assert len(received) == expected_counts[receiver.participant_id]
            assert len(set(received)) == len(received), (receiver.participant_id, received)
            assert 0 not in received
            assert not set(received) & receiver.own_ssrcs(), (receiver.participant_id, received)
        # The source was asked again after values it had to refuse.
        assert len(asked) > sum(expected_counts.values())
        assert d1.routes == routes_of(conference)

    run(scenario)


def test_every_participant_receives_every_other_participants_tracks() -> None:
    async def scenario() -> None:
        w = World()
        d1 = w.daemon("d1")
        await w.conferences.create("c", "", persistent=False)
        tracks = {"a": (video(10), audio(11)), "b": (audio(20),), "c": (), "d": (video(40), video(41), audio(42))}
        for participant_id, published in tracks.items():
            await w.join("c", participant_id, *published)
        conference = await w.conference("c")
        people = conference.participants

        # Each CreateEndpoint carried exactly the routes between the newcomer and everyone before it.
        specs = d1.created_specs()
        assert [s.endpoint_id for s in specs] == ["c/a", "c/b", "c/c", "c/d"]
        for k, spec in enumerate(specs):
            newcomer = people[list(tracks)[k]]
            earlier = [people[p] for p in list(tracks)[:k]]
            expected = {
                SubscriptionSpec(
                    e.endpoint_id, t.ssrc, newcomer.endpoint_id, newcomer.subscriptions[(e.participant_id, t.ssrc)].ssrc
                )
                for e in earlier
                for t in e.tracks
            } | {
                SubscriptionSpec(
                    newcomer.endpoint_id, t.ssrc, e.endpoint_id, e.subscriptions[(newcomer.participant_id, t.ssrc)].ssrc
                )
                for e in earlier
                for t in newcomer.tracks
            }
            assert set(spec.subscriptions) == expected and len(spec.subscriptions) == len(expected)

        # Everyone receives every other participant's every track, and the daemon holds just that.
        for receiver in people.values():
            assert set(receiver.subscriptions) == {
                (p.participant_id, t.ssrc) for p in people.values() if p is not receiver for t in p.tracks
            }
            for (publisher_id, track_ssrc), s in receiver.subscriptions.items():
                assert s.publisher_id == publisher_id and s.track.ssrc == track_ssrc
        total_tracks = sum(len(t) for t in tracks.values())
        assert len(d1.routes) == total_tracks * (len(tracks) - 1)
        assert d1.routes == routes_of(conference)

    run(scenario)


def test_join_replaces_an_endpoint_left_over_by_an_earlier_attempt() -> None:
    async def scenario() -> None:
        w = World()
        d1 = w.daemon("d1")
        await w.conferences.create("c", "", persistent=False)
        a = await w.join("c", "a", video(1))
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


def test_join_events_tell_each_receiver_its_ssrc() -> None:
    async def scenario() -> None:
        w = World()
        w.daemon("d1")
        await w.conferences.create("c", "", persistent=False)
        a = await w.join("c", "a", video(1))
        watch = await Watch.start(w.conferences, "c", "a")
        b = await w.join("c", "b", audio(2), video(3))
        await settle()
        assert watch.summaries(initial=False) == [
            ("joined", "b"),
            ("track added", "b", 2, {"a": a.subscriptions[("b", 2)].ssrc}),
            ("track added", "b", 3, {"a": a.subscriptions[("b", 3)].ssrc}),
        ]
        # What watcher "a" is sent: the SSRC it receives the track with.
        added = watch.events[-1]
        assert messages.event_to_proto(added, "a").track_added.ssrc == a.subscriptions[("b", 3)].ssrc
        assert messages.event_to_proto(added, "b").track_added.ssrc == 0
        assert ("a", 1) in b.subscriptions
        await watch.close()

    run(scenario)


# --- leaving -------------------------------------------------------------------------------


def test_leave_removes_the_routes_and_tells_each_watcher_its_ssrcs() -> None:
    async def scenario() -> None:
        w = World()
        d1 = w.daemon("d1")
        await w.conferences.create("c", "", persistent=False)
        a = await w.join("c", "a", video(1))
        await w.join("c", "b", video(2), audio(3))
        c = await w.join("c", "c", audio(4))
        before = {p: dict(x.subscriptions) for p, x in (("a", a), ("c", c))}
        watch = await Watch.start(w.conferences, "c")
        assert await w.conferences.leave("c", "b") is False
        await settle()
        assert [(x.method, x.request) for x in d1.calls[-1:]] == [("DeleteEndpoint", "c/b")]
        assert d1.endpoint_ids() == ["c/a", "c/c"]
        conference = await w.conference("c")
        assert (
            d1.routes
            == routes_of(conference)
            == {
                SubscriptionSpec("c/a", 1, "c/c", c.subscriptions[("a", 1)].ssrc),
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
        w = World()
        d1 = w.daemon("d1")
        await w.conferences.create("c", "", persistent=False)
        await w.join("c", "a", video(1))
        await w.join("c", "b", video(2))
        watch = await Watch.start(w.conferences, "c")
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
        w = World()
        d1 = w.daemon("d1")
        await w.conferences.create("c", "", persistent=True)
        await w.join("c", "a", video(1))
        watch = await Watch.start(w.conferences, "c")
        assert await w.conferences.leave("c", "a") is False
        await settle()
        assert (await w.conference("c")).participants == {}
        assert d1.calls_to("ReleaseConference") == [] and d1.endpoint_ids() == []
        assert watch.summaries(initial=False) == [("track removed", "a", 1, {}), ("left", "a")]
        assert not watch.ended
        await w.join("c", "b")
        await watch.close()

    run(scenario)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL])
def test_a_leave_whose_empty_conference_cannot_be_released_answers_success_and_keeps_it(
    code: grpc.StatusCode,
) -> None:
    """Not answered (Unavailable) or refused (Internal): the participant has left either way."""

    async def scenario() -> None:
        w = World()
        d1 = w.daemon("d1")
        await w.conferences.create("c", "", persistent=False)
        await w.join("c", "a", video(1), audio(2))
        watch = await Watch.start(w.conferences, "c")
        d1.fail("ReleaseConference", code=code)
        assert await w.conferences.leave("c", "a") is False
        await settle()
        conference = await w.conference("c")
        assert conference.participants == {}
        assert [(c.method, c.outcome) for c in d1.calls[-2:]] == [
            ("DeleteEndpoint", "ok"),
            ("ReleaseConference", "not answered"),
        ]
        assert d1.endpoint_ids() == []
        assert watch.summaries(initial=False) == [
            ("track removed", "a", 1, {}),
            ("track removed", "a", 2, {}),
            ("left", "a"),
        ]
        assert not watch.ended
        # The kept conference still works, and ends once its daemon answers.
        await w.join("c", "b", video(3))
        assert await w.conferences.leave("c", "b") is True
        await settle()
        assert watch.summaries(initial=False)[-1] == ("ended", "empty") and watch.ended
        with pytest.raises(NotFound):
            await w.conferences.get("c")

    run(scenario)


def test_a_leave_the_daemon_does_not_answer_keeps_the_participant() -> None:
    async def scenario() -> None:
        w = World()
        d1 = w.daemon("d1")
        await w.conferences.create("c", "", persistent=False)
        a = await w.join("c", "a", video(1))
        await w.join("c", "b", video(2))
        watch = await Watch.start(w.conferences, "c")
        sequence = (await w.conference("c")).sequence
        d1.fail("DeleteEndpoint")
        with pytest.raises(Unavailable, match="did not answer DeleteEndpoint"):
            await w.conferences.leave("c", "b")
        await settle()
        conference = await w.conference("c")
        assert list(conference.participants) == ["a", "b"] and conference.sequence == sequence
        assert ("b", 2) in a.subscriptions and d1.routes == routes_of(conference)
        assert watch.summaries(initial=False) == []
        assert await w.conferences.leave("c", "b") is False
        await watch.close()

    run(scenario)


# --- watching ------------------------------------------------------------------------------


def test_watch_starts_with_a_snapshot_then_sees_each_change_once_in_order() -> None:
    async def scenario() -> None:
        w = World()
        w.daemon("d1")
        await w.conferences.create("c", "", persistent=False)
        a = await w.join("c", "a", video(1), audio(2))
        b = await w.join("c", "b", audio(3))
        snapshot = (await w.conference("c")).sequence
        assert snapshot == 5  # joined a, its 2 tracks; joined b, its track

        first = await Watch.start(w.conferences, "c")
        assert all(e.initial and e.sequence == snapshot for e in first.events)
        assert first.summaries() == [
            ("joined", "a"),
            ("joined", "b"),
            ("track added", "a", 1, {"b": b.subscriptions[("a", 1)].ssrc}),
            ("track added", "a", 2, {"b": b.subscriptions[("a", 2)].ssrc}),
            ("track added", "b", 3, {"a": a.subscriptions[("b", 3)].ssrc}),
        ]

        c = await w.join("c", "c", video(4))
        second = await Watch.start(w.conferences, "c", "c")
        assert len(second.events) == 3 + 4 and all(e.initial for e in second.events)
        assert {e.sequence for e in second.events} == {snapshot + 2}
        received_from_a = {
            ssrc: {p.participant_id: p.subscriptions[("a", ssrc)].ssrc for p in (b, c)} for ssrc in (1, 2)
        }
        assert await w.conferences.leave("c", "a") is False
        assert await w.conferences.end("c") == 2
        await settle()

        changes = [
            ("joined", "c"),
            ("track added", "c", 4, {"a": a.subscriptions[("c", 4)].ssrc, "b": b.subscriptions[("c", 4)].ssrc}),
            ("track removed", "a", 1, received_from_a[1]),
            ("track removed", "a", 2, received_from_a[2]),
            ("left", "a"),
            ("ended", "ended"),
        ]
        later = [e for e in first.events if not e.initial]
        assert [summary(e) for e in later] == changes
        assert [e.sequence for e in later] == list(range(snapshot + 1, snapshot + 1 + len(changes)))
        # The later watcher sees the changes after its snapshot, with the same numbers.
        second_later = [e for e in second.events if not e.initial]
        assert [(e.sequence, summary(e)) for e in second_later] == [(e.sequence, summary(e)) for e in later[2:]]
        assert first.ended and second.ended and first.error is None and second.error is None

    run(scenario)


def test_a_watch_of_an_empty_conference_sees_its_first_join_and_its_end() -> None:
    async def scenario() -> None:
        w = World()
        w.daemon("d1")
        await w.conferences.create("c", "", persistent=True)
        watch = await Watch.start(w.conferences, "c")
        assert watch.events == [] and not watch.ended
        await w.join("c", "a")
        await w.conferences.end("c")
        await settle()
        assert watch.summaries() == [("joined", "a"), ("ended", "ended")]
        assert [e.sequence for e in watch.events] == [1, 2] and watch.ended

    run(scenario)


def test_a_watch_of_an_unknown_conference_or_participant_is_not_found() -> None:
    async def scenario() -> None:
        w = World()
        w.daemon("d1")
        await w.conferences.create("c", "", persistent=True)
        for conference_id, participant_id, message in [
            ("nowhere", "", "'nowhere' not found"),
            ("c", "zed", "'zed' is not"),
        ]:
            watch = await Watch.start(w.conferences, conference_id, participant_id)
            assert watch.ended and isinstance(watch.error, NotFound) and message in str(watch.error)

    run(scenario)


# --- placement -----------------------------------------------------------------------------


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
        w = World()
        d1, d2 = w.daemon("d1"), w.daemon("d2")
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
        w = World()
        d1, d2 = w.daemon("d1", capacity=1), w.daemon("d2", capacity=1)
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
        w = World()
        d1 = w.daemon("d1", ports=(20000, 20002))
        await w.conferences.create("c", "", persistent=False)
        await w.join("c", "a", video(1))
        d1.occupy(20001, 20002)  # another process holds them: the controller does not know
        watch = await Watch.start(w.conferences, "c")
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
        w = World()
        d1, d2 = w.daemon("d1"), w.daemon("d2")
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


# --- failures of a daemon call -------------------------------------------------------------


@pytest.mark.parametrize("done", [True, False], ids=["answer-lost", "not-done"])
def test_a_create_endpoint_without_answer_leaves_no_endpoint_and_fails_the_join(done: bool) -> None:
    async def scenario() -> None:
        w = World()
        d1 = w.daemon("d1")
        await w.conferences.create("c", "", persistent=False)
        a = await w.join("c", "a", video(1))
        watch = await Watch.start(w.conferences, "c")
        sequence = (await w.conference("c")).sequence
        d1.fail("CreateEndpoint", done=done)
        with pytest.raises(Unavailable, match="did not answer CreateEndpoint"):
            await w.join("c", "b", video(2))
        await settle()
        assert [(c.method, c.outcome, c.result) for c in d1.calls[-2:]] == [
            ("CreateEndpoint", "answer lost" if done else "not answered", None),
            ("DeleteEndpoint", "ok", done),
        ]
        assert d1.calls[-1].request == "c/b"
        assert d1.endpoint_ids() == ["c/a"] and d1.routes == set()
        conference = await w.conference("c")
        assert list(conference.participants) == ["a"] and conference.sequence == sequence
        assert a.subscriptions == {} and watch.summaries(initial=False) == []
        # Nothing is left that would stop the next attempt.
        b = await w.join("c", "b", video(2))
        assert d1.routes == routes_of(conference) and ("a", 1) in b.subscriptions
        await watch.close()

    run(scenario)


def test_a_lost_answer_after_a_replaced_leftover_is_cleaned_up_too() -> None:
    async def scenario() -> None:
        w = World()
        d1 = w.daemon("d1")
        await w.conferences.create("c", "", persistent=False)
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
        w = World()
        d1 = w.daemon("d1")
        await w.conferences.create("c", "", persistent=False)
        await w.join("c", "a", video(1))
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


def test_a_join_cancelled_mid_call_deletes_the_endpoint() -> None:
    async def scenario() -> None:
        w = World()
        d1 = w.daemon("d1")
        await w.conferences.create("c", "", persistent=False)
        a = await w.join("c", "a", video(1))
        watch = await Watch.start(w.conferences, "c")
        gate = d1.hold("CreateEndpoint")  # the daemon makes it; the answer is held
        joining = asyncio.create_task(w.join("c", "b", video(2)))
        await gate.entered.wait()
        assert d1.endpoint_ids() == ["c/a", "c/b"]
        joining.cancel()
        with pytest.raises(asyncio.CancelledError):
            await joining
        assert [(c.method, c.outcome) for c in d1.calls[-2:]] == [
            ("CreateEndpoint", "cancelled"),
            ("DeleteEndpoint", "ok"),
        ]
        assert d1.endpoint_ids() == ["c/a"] and d1.routes == set()
        assert list((await w.conference("c")).participants) == ["a"] and a.subscriptions == {}
        await settle()
        assert watch.summaries(initial=False) == []
        # The conference's lock was let go: the next join goes through.
        await asyncio.wait_for(w.join("c", "b", video(2)), 1)
        assert len(d1.routes) == 2
        await watch.close()

    run(scenario)


def test_end_a_daemon_does_not_answer_keeps_the_conference() -> None:
    async def scenario() -> None:
        w = World()
        d1 = w.daemon("d1")
        await w.conferences.create("c", "", persistent=False)
        await w.join("c", "a", video(1))
        watch = await Watch.start(w.conferences, "c")
        d1.fail("ReleaseConference")
        with pytest.raises(Unavailable, match="did not answer ReleaseConference"):
            await w.conferences.end("c")
        await settle()
        assert list((await w.conference("c")).participants) == ["a"] and d1.endpoint_ids() == ["c/a"]
        assert not watch.ended and watch.summaries(initial=False) == []
        assert await w.conferences.end("c") == 1
        await settle()
        assert watch.summaries(initial=False) == [("ended", "ended")] and watch.ended

    run(scenario)


# --- reconciliation ------------------------------------------------------------------------


def test_reconcile_deletes_the_endpoints_no_participant_owns() -> None:
    async def scenario() -> None:
        w = World()
        d1, d2 = w.daemon("d1"), w.daemon("d2")
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
        w = World()
        d1 = w.daemon("d1")
        await w.conferences.create("c", "", persistent=False)
        await w.join("c", "a", video(1))
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


# --- found while writing these -------------------------------------------------------------


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


def test_a_daemon_refusal_other_than_unavailable_fails_the_join_without_cleanup() -> None:
    """A refusal is an answer: the daemon made nothing (CreateEndpoint is all or nothing), so
    the controller deletes nothing; the caller gets the error as MediaDaemonClient maps it."""

    async def scenario() -> None:
        w = World()
        d1 = w.daemon("d1")
        await w.conferences.create("c", "", persistent=False)
        await w.join("c", "a", video(1))
        d1.fail("CreateEndpoint", code=grpc.StatusCode.INTERNAL)
        with pytest.raises(Internal, match=r"refused CreateEndpoint \(INTERNAL\)"):
            await w.join("c", "b", video(2))
        assert d1.endpoint_ids() == ["c/a"] and list((await w.conference("c")).participants) == ["a"]
        assert [c.method for c in d1.calls].count("DeleteEndpoint") == 0

    run(scenario)
