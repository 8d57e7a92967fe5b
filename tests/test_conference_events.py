"""What a WatchConference stream sees: its snapshot, then each change once, in order.

controller.conferences.Conferences driven in one process (tests/conference_world.py)."""

from __future__ import annotations

from charter.errors import FailedPrecondition, InvalidArgument, NotFound
from conference_world import audio, conference_with_a, one_conference, run, settle, summary, video
from controller import messages
from controller.store import EVENTS_KEPT


def test_join_events_tell_each_receiver_its_ssrc() -> None:
    async def scenario() -> None:
        w, _, a = await conference_with_a()
        watch = await w.watch("c", "a")
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


def test_watch_starts_with_a_snapshot_then_sees_each_change_once_in_order() -> None:
    async def scenario() -> None:
        w, _ = await one_conference()
        a = await w.join("c", "a", video(1), audio(2))
        b = await w.join("c", "b", audio(3))
        snapshot = (await w.conference("c")).sequence
        assert snapshot == 5  # joined a, its 2 tracks; joined b, its track

        first = await w.watch("c")
        assert all(e.initial and e.sequence == snapshot for e in first.events)
        assert first.summaries() == [
            ("joined", "a"),
            ("joined", "b"),
            ("track added", "a", 1, {"b": b.subscriptions[("a", 1)].ssrc}),
            ("track added", "a", 2, {"b": b.subscriptions[("a", 2)].ssrc}),
            ("track added", "b", 3, {"a": a.subscriptions[("b", 3)].ssrc}),
        ]

        c = await w.join("c", "c", video(4))
        second = await w.watch("c", "c")
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
        w, _ = await one_conference(persistent=True)
        watch = await w.watch("c")
        assert watch.events == [] and not watch.ended
        await w.join("c", "a")
        await w.conferences.end("c")
        await settle()
        assert watch.summaries() == [("joined", "a"), ("ended", "ended")]
        assert [e.sequence for e in watch.events] == [1, 2] and watch.ended

    run(scenario)


def test_a_watch_of_an_unknown_conference_or_participant_is_not_found() -> None:
    async def scenario() -> None:
        w, _ = await one_conference(persistent=True)
        for conference_id, participant_id, message in [
            ("nowhere", "", "'nowhere' not found"),
            ("c", "zed", "'zed' is not"),
        ]:
            watch = await w.watch(conference_id, participant_id)
            assert watch.ended and isinstance(watch.error, NotFound) and message in str(watch.error)

    run(scenario)


def test_a_watch_resumed_after_an_event_gets_every_later_one_once() -> None:
    async def scenario() -> None:
        w, _, _ = await conference_with_a()
        first = await w.watch("c")
        await w.join("c", "b", audio(2))
        await settle()
        seen = first.events[-1].sequence
        await first.close()  # the stream breaks here
        await w.join("c", "d", video(4))  # ... and these happen meanwhile
        await w.conferences.leave("c", "b")
        resumed = await w.watch("c", after_sequence=seen)
        await w.join("c", "e", audio(5))
        await settle()
        sequences = [e.sequence for e in resumed.events]
        assert sequences == list(range(seen + 1, (await w.conference("c")).sequence + 1)), "none lost, none twice"
        assert not any(e.initial for e in resumed.events)
        assert resumed.summaries()[:2] == [("joined", "d"), ("track added", "d", 4, resumed.summaries()[1][3])]
        assert ("left", "b") in resumed.summaries() and resumed.summaries()[-2] == ("joined", "e")
        await resumed.close()

    run(scenario)


def test_a_watch_cannot_resume_from_the_future_or_from_events_no_longer_kept() -> None:
    async def scenario() -> None:
        w, _, _ = await conference_with_a()
        last = (await w.conference("c")).sequence
        future = await w.watch("c", after_sequence=last + 1)
        assert isinstance(future.error, InvalidArgument) and "after_sequence" in str(future.error)
        for i in range(EVENTS_KEPT // 2 + 1):  # two events per join and leave
            await w.join("c", f"p{i}")
            await w.conferences.leave("c", f"p{i}")
        gone = await w.watch("c", after_sequence=1)
        assert isinstance(gone.error, FailedPrecondition) and "no longer kept" in str(gone.error)
        kept = await w.watch("c", after_sequence=(await w.conference("c")).sequence - 3)
        assert kept.error is None and len(kept.events) == 3
        await kept.close()

    run(scenario)
