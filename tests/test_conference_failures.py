"""A daemon call that fails (no answer, a lost answer, a refusal, a cancelled caller): what the
controller keeps and what it undoes.

controller.conferences.Conferences driven in one process (tests/conference_world.py)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from charter.errors import Internal, NotFound, Unavailable
from conference_world import audio, conference_with_a, one_conference, routes_of, run, settle, video

# --- joining -------------------------------------------------------------------------------


@pytest.mark.parametrize("done", [True, False], ids=["answer-lost", "not-done"])
def test_a_create_endpoint_without_answer_leaves_no_endpoint_and_fails_the_join(done: bool) -> None:
    async def scenario() -> None:
        w, d1, a = await conference_with_a()
        watch = await w.watch("c")
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


def test_a_join_cancelled_mid_call_deletes_the_endpoint() -> None:
    async def scenario() -> None:
        w, d1, a = await conference_with_a()
        watch = await w.watch("c")
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


def test_a_daemon_refusal_other_than_unavailable_fails_the_join_without_cleanup() -> None:
    """A refusal is an answer: the daemon made nothing (CreateEndpoint is all or nothing), so
    the controller deletes nothing; the caller gets the error as MediaDaemonClient maps it."""

    async def scenario() -> None:
        w, d1, _ = await conference_with_a()
        d1.fail("CreateEndpoint", code=grpc.StatusCode.INTERNAL)
        with pytest.raises(Internal, match=r"refused CreateEndpoint \(INTERNAL\)"):
            await w.join("c", "b", video(2))
        assert d1.endpoint_ids() == ["c/a"] and list((await w.conference("c")).participants) == ["a"]
        assert [c.method for c in d1.calls].count("DeleteEndpoint") == 0

    run(scenario)


# --- leaving and ending --------------------------------------------------------------------


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL])
def test_a_leave_whose_empty_conference_cannot_be_released_answers_success_and_keeps_it(
    code: grpc.StatusCode,
) -> None:
    """Not answered (Unavailable) or refused (Internal): the participant has left either way."""

    async def scenario() -> None:
        w, d1 = await one_conference()
        await w.join("c", "a", video(1), audio(2))
        watch = await w.watch("c")
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
        w, d1, a = await conference_with_a()
        await w.join("c", "b", video(2))
        watch = await w.watch("c")
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


def test_end_a_daemon_does_not_answer_keeps_the_conference() -> None:
    async def scenario() -> None:
        w, d1, _ = await conference_with_a()
        watch = await w.watch("c")
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
