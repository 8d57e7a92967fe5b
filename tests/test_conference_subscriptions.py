"""Who receives which track, with which SSRC, and the routes the daemon holds for it.

controller.conferences.Conferences driven in one process (tests/conference_world.py)."""

from __future__ import annotations

import itertools
import secrets
from types import SimpleNamespace

import pytest

from charter.subscriptions import SubscriptionSpec
from conference_world import audio, one_conference, routes_of, run, video
from controller import conferences as conferences_module


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
        w, d1 = await one_conference()
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
        w, d1 = await one_conference()
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
                    e.endpoint_id, t.ssrc, newcomer.endpoint_id,
                    newcomer.subscriptions[(e.participant_id, t.ssrc)].ssrc, wait_for_key_frame=t.kind == "video",
                )
                for e in earlier
                for t in e.tracks
            } | {
                SubscriptionSpec(
                    newcomer.endpoint_id, t.ssrc, e.endpoint_id,
                    e.subscriptions[(newcomer.participant_id, t.ssrc)].ssrc, wait_for_key_frame=t.kind == "video",
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
