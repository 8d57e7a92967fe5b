"""One conference across daemons, in process (the daemon double): when the conference's
daemon runs short, the next participants go to another one, and the two are linked by a
relay endpoint on each (both ends sending to each other); every route that crosses goes
publisher -> its daemon's end of the link -> the other end -> the receiver, each track once
over the link whatever the number of its receivers there. Leaving, the relayed copies are
forgotten and removed from the far link ends (the daemons hold what the controller stored),
and a daemon nobody of the conference is on any more loses its link ends; ending
releases the conference on every daemon; a daemon of it that is lost moves only the
participants that were on it."""
from __future__ import annotations

import asyncio

from charter.subscriptions import SubscriptionSpec
from conference_world import LEASE_TTL, World, audio, run, settle, two_daemons, video
from controller.model import Conference

CAPACITY = 4  # endpoints per daemon: d1 takes 2 participants, keeps 1 for a link end


def test_a_conference_spreads_over_two_daemons_through_a_relay_link() -> None:
    async def scenario() -> None:
        w, d1, d2 = two_daemons(capacity=CAPACITY)
        await w.conferences.create("c", "", persistent=False)
        for name, ssrc in (("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)):
            await w.join("c", name, video(ssrc))
        conference = await w.conference("c")
        placed = {p.participant_id: p.daemon_id for p in conference.participants.values()}
        assert placed == {"a": "d1", "b": "d1", "c": "d1", "d": "d2", "e": "d2"}
        assert d1.endpoint_ids("c") == ["c/a", "c/b", "c/c", "c/~link~d2"]
        assert d2.endpoint_ids("c") == ["c/d", "c/e", "c/~link~d1"]
        (link,) = conference.links.values()
        assert link.daemons == ("d1", "d2")
        # Both ends fixed, each at the other.
        end1, end2 = d1.endpoint("c/~link~d2"), d2.endpoint("c/~link~d1")
        assert end1 is not None and end2 is not None
        assert end1.spec.remote == ("127.0.0.1", end2.port) and end2.spec.remote == ("127.0.0.1", end1.port)
        assert end1.spec.tx_key == end2.spec.rx_key and end2.spec.tx_key == end1.spec.rx_key
        # Every track crosses once: a, b, c to d2, d and e to d1.
        assert set(link.relayed) == {("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)}
        relayed = link.relayed
        for publisher, ssrc in (("a", 1), ("b", 2), ("c", 3)):
            assert SubscriptionSpec(f"c/{publisher}", ssrc, "c/~link~d2", relayed[(publisher, ssrc)]) in d1.routes
            assert relayed[(publisher, ssrc)] in end2.tracks
        for receiver in ("d", "e"):
            got = conference.participants[receiver].subscriptions
            for publisher, ssrc in (("a", 1), ("b", 2), ("c", 3)):
                assert SubscriptionSpec("c/~link~d1", relayed[(publisher, ssrc)], f"c/{receiver}",
                                        got[(publisher, ssrc)].ssrc, wait_for_key_frame=True) in d2.routes
        for receiver in ("a", "b", "c"):
            got = conference.participants[receiver].subscriptions
            for publisher, ssrc in (("d", 4), ("e", 5)):
                assert SubscriptionSpec("c/~link~d2", relayed[(publisher, ssrc)], f"c/{receiver}",
                                        got[(publisher, ssrc)].ssrc, wait_for_key_frame=True) in d1.routes
        # Local routes stay local. A receiver's video starts at a key frame; a link end takes all.
        assert SubscriptionSpec("c/d", 4, "c/e", conference.participants["e"].subscriptions[("d", 4)].ssrc,
                                wait_for_key_frame=True) in d2.routes

        # d and e leave: d2 holds nothing of the conference, the link is gone on both sides.
        await w.conferences.leave("c", "d")
        assert (await w.conference("c")).links[frozenset(("d1", "d2"))].relayed.keys() == {
            ("a", 1), ("b", 2), ("c", 3), ("e", 5)}
        await w.conferences.leave("c", "e")
        assert (await w.conference("c")).links == {}
        assert d2.endpoint_ids("c") == [] and d1.endpoint_ids("c") == ["c/a", "c/b", "c/c"]

        # Spread again, then end: released on both daemons.
        await w.join("c", "f", video(6))
        assert d2.endpoint_ids("c") == ["c/f", "c/~link~d1"]
        await w.conferences.end("c")
        assert d1.endpoint_ids() == [] and d2.endpoint_ids() == []

    run(scenario)


def held_copies(w: World, conference: Conference) -> dict[str, set[int]]:
    """Link end -> the SSRCs of the tracks it holds, on its daemon (the double)."""
    held = {}
    for link in conference.links.values():
        for daemon_id in link.daemons:
            end = w.daemons.daemons[daemon_id].endpoint(link.end("c", daemon_id))
            assert end is not None
            held[link.end("c", daemon_id)] = set(end.tracks)
    return held


def stored_copies(conference: Conference) -> dict[str, set[int]]:
    """Link end -> the SSRCs of the relayed copies it publishes, as the controller stored them."""
    stored: dict[str, set[int]] = {}
    for link in conference.links.values():
        for daemon_id in link.daemons:
            stored[link.end("c", daemon_id)] = {
                relayed for (publisher, _), relayed in link.relayed.items()
                if conference.participants[publisher].daemon_id != daemon_id}
    return stored


def test_a_publisher_that_leaves_takes_its_relayed_copies_off_the_far_link_ends() -> None:
    async def scenario() -> None:
        w, d1, d2 = two_daemons(capacity=CAPACITY)
        await w.conferences.create("c", "", persistent=False)
        await w.join("c", "a", video(1), audio(11))
        for name, ssrc in (("b", 2), ("c", 3), ("d", 4), ("e", 5)):
            await w.join("c", name, video(ssrc))
        conference = await w.conference("c")
        relayed = dict(conference.links[frozenset(("d1", "d2"))].relayed)
        a_copies = {relayed[("a", 1)], relayed[("a", 11)]}
        far = d2.endpoint("c/~link~d1")
        assert far is not None and a_copies <= set(far.tracks)
        assert {r.track_ssrc for r in d2.routes_from("c/~link~d1")} >= a_copies

        await w.conferences.leave("c", "a")
        conference = await w.conference("c")
        assert held_copies(w, conference) == stored_copies(conference)
        assert set(far.tracks) == {relayed[("b", 2)], relayed[("c", 3)]}
        assert {r.track_ssrc for r in d2.routes_from("c/~link~d1")} == {relayed[("b", 2)], relayed[("c", 3)]}
        assert [c.request for c in d2.calls_to("RemoveTracks")] == [("c/~link~d1", (relayed[("a", 1)],
                                                                                      relayed[("a", 11)]))]
        assert d1.calls_to("RemoveTracks") == []  # nothing of a's crossed from d2

        # A publisher on d2 leaves: its copy goes from d1's end, e's stays.
        await w.conferences.leave("c", "d")
        conference = await w.conference("c")
        assert held_copies(w, conference) == stored_copies(conference)
        near = d1.endpoint("c/~link~d2")
        assert near is not None and set(near.tracks) == {relayed[("e", 5)]}
        # The last of d2 leaves: its link closes, and nothing is removed from ends that close.
        await w.conferences.leave("c", "e")
        assert (await w.conference("c")).links == {}
        assert len(d1.calls_to("RemoveTracks")) == 1 and len(d2.calls_to("RemoveTracks")) == 1

    run(scenario)


def test_people_coming_and_going_leave_no_copies_on_the_link_ends() -> None:
    async def scenario() -> None:
        w, d1, d2 = two_daemons(capacity=CAPACITY)
        await w.conferences.create("c", "", persistent=False)
        for name, ssrc in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
            await w.join("c", name, video(ssrc))
        for round_ in range(5):
            await w.join("c", f"x{round_}", video(100 + round_), audio(200 + round_))
            await w.conferences.leave("c", f"x{round_}")
            conference = await w.conference("c")
            assert held_copies(w, conference) == stored_copies(conference)
        # a, b, c on d1 and d on d2: three copies on d2's end, one on d1's.
        assert {k: len(v) for k, v in held_copies(w, conference).items()} == {"c/~link~d1": 3, "c/~link~d2": 1}

    run(scenario)


def test_a_link_end_that_keeps_a_copy_does_not_fail_the_leave() -> None:
    async def scenario() -> None:
        w, d1, d2 = two_daemons(capacity=CAPACITY)
        await w.conferences.create("c", "", persistent=False)
        for name, ssrc in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
            await w.join("c", name, video(ssrc))
        copy = (await w.conference("c")).links[frozenset(("d1", "d2"))].relayed[("a", 1)]
        d2.fail("RemoveTracks")
        assert await w.conferences.leave("c", "a") is False
        conference = await w.conference("c")
        assert "a" not in conference.participants and d1.endpoint("c/a") is None
        assert ("a", 1) not in conference.links[frozenset(("d1", "d2"))].relayed
        assert [c.outcome for c in d2.calls_to("RemoveTracks")] == ["not answered"]
        far = d2.endpoint("c/~link~d1")
        assert far is not None and copy in far.tracks  # left there, forwarding nothing

    run(scenario)


def test_the_usage_placement_reads_counts_every_endpoint_where_it_is() -> None:
    async def scenario() -> None:
        w, _, _ = two_daemons(capacity=CAPACITY)
        await w.conferences.create("c", "", persistent=False)
        for name, ssrc in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
            await w.join("c", name, video(ssrc))
        usage = await w.store.daemon_usage()
        assert (usage["d1"].conferences, usage["d1"].endpoints) == (1, 4)   # a, b, c and the link end
        assert (usage["d2"].conferences, usage["d2"].endpoints) == (0, 2)   # d and the link end

    run(scenario)


def test_a_lost_daemon_of_a_spread_conference_moves_only_its_participants() -> None:
    async def scenario() -> None:
        w, d1, d2 = two_daemons(capacity=CAPACITY)
        d3 = w.daemon("d3", capacity=CAPACITY)
        await w.conferences.create("c", "", persistent=False)
        for name, ssrc in (("a", 1), ("b", 2), ("d", 4)):
            await w.join("c", name, video(ssrc))
        before = await w.conference("c")
        placed = {p.participant_id: p.daemon_id for p in before.participants.values()}
        assert placed == {"a": "d1", "b": "d1", "d": "d2"}
        keys = {p.participant_id: p.send_key for p in before.participants.values()}
        watch = await w.watch("c", "a")
        # d2's lease ends: d moves, placed as a join would be: d1 has room for it now that
        # its link end is gone. a and b keep their endpoints and keys.
        w.clock.advance(LEASE_TTL / 2)
        w.renew("d1")
        w.renew("d3")
        w.clock.advance(LEASE_TTL / 2 + 0.01)
        w.registry.expire()
        for _ in range(100):
            conference = await w.conference("c")
            if "d2" not in conference.daemons():
                break
            await asyncio.sleep(0.01)
        assert {p.participant_id: p.daemon_id for p in conference.participants.values()} == {
            "a": "d1", "b": "d1", "d": "d1"}
        assert conference.participants["a"].send_key == keys["a"] and conference.participants["d"].send_key != keys["d"]
        assert conference.links == {}
        assert d1.endpoint_ids("c") == ["c/a", "c/b", "c/d"] and d3.endpoint_ids("c") == []
        got = conference.participants["a"].subscriptions[("d", 4)]
        assert SubscriptionSpec("c/d", 4, "c/a", got.ssrc, wait_for_key_frame=True) in d1.routes
        await settle()
        kinds = [s[0] for s in watch.summaries(initial=False)]
        assert kinds == ["track removed", "moved", "track added"], kinds
        await watch.close()

    run(scenario)


def test_a_participant_being_moved_is_still_there_for_readers_until_its_move_is_done() -> None:
    # GetParticipant and watch snapshots read without the conference's lock: a move made in
    # place would show them the conference without the participant while its new endpoint
    # is being made.
    async def scenario() -> None:
        w, d1, _ = two_daemons(capacity=CAPACITY)
        w.daemon("d3", capacity=CAPACITY)
        await w.conferences.create("c", "", persistent=False)
        for name, ssrc in (("a", 1), ("b", 2), ("d", 4)):
            await w.join("c", name, video(ssrc))
        gate = d1.hold("CreateEndpoint", when=lambda request: request.endpoint_id == "c/d")
        w.clock.advance(LEASE_TTL / 2)
        w.renew("d1")
        w.renew("d3")
        w.clock.advance(LEASE_TTL / 2 + 0.01)
        w.registry.expire()
        await asyncio.wait_for(gate.entered.wait(), 5)
        halfway = await w.conferences.get_participant("c", "d")
        assert halfway.daemon_id == "d2"
        assert set((await w.conference("c")).participants) == {"a", "b", "d"}
        gate.release()
        for _ in range(100):
            if (await w.conferences.get_participant("c", "d")).daemon_id == "d1":
                break
            await asyncio.sleep(0.01)
        assert (await w.conferences.get_participant("c", "d")).daemon_id == "d1"

    run(scenario)


def test_participants_are_placed_near_them_and_a_moved_one_stays_near() -> None:
    # Daemons in two regions: each participant goes to a daemon of its own region, the
    # conference spreading there with room left at home; one whose region's daemon is lost
    # moves to the other daemon of its region; the region is kept in the store.
    async def scenario() -> None:
        w = World()
        eu = w.daemon("eu1", capacity=10, region="eu")
        us1 = w.daemon("us1", capacity=10, region="us")
        us2 = w.daemon("us2", capacity=10, region="us")
        await w.conferences.create("c", "", persistent=False)
        await w.join("c", "a", video(1), region="eu")
        await w.join("c", "b", video(2), region="us")
        await w.join("c", "n", video(3))
        conference = await w.conference("c")
        where = {p.participant_id: p.daemon_id for p in conference.participants.values()}
        assert where["a"] == "eu1" and where["b"] in ("us1", "us2") and where["n"] in (where["a"], where["b"])
        assert conference.participants["b"].region == "us" and conference.participants["n"].region == ""
        lost = where["b"]
        other = "us2" if lost == "us1" else "us1"
        for name in ("eu1", other):
            w.renew(name)
        w.clock.advance(LEASE_TTL / 2)
        for name in ("eu1", other):
            w.renew(name)
        w.clock.advance(LEASE_TTL / 2 + 0.01)
        w.registry.expire()
        for _ in range(100):
            if (await w.conferences.get_participant("c", "b")).daemon_id != lost:
                break
            await asyncio.sleep(0.01)
        assert (await w.conferences.get_participant("c", "b")).daemon_id == other
        # (the lost daemon's copy goes when reconciliation reaches it)
        assert "c/b" in {"us1": us1, "us2": us2}[other].endpoint_ids("c") and "c/b" not in eu.endpoint_ids("c")

    run(scenario)


def test_a_controller_that_has_not_yet_mirrored_a_daemons_lease_reads_the_leases_again() -> None:
    # Controllers sharing leases mirror them every half second: a join may reach one before
    # it has seen the lease of the daemon another placed the conference on.
    async def scenario() -> None:
        w, d1, _ = two_daemons()
        await w.conferences.create("c", "", persistent=False)
        unseen = w.registry._daemons.pop("d1")
        mirrored: list[str] = []

        async def refresh() -> None:
            mirrored.append("d1")
            w.registry._daemons["d1"] = unseen

        w.conferences.refresh_leases = refresh
        await w.join("c", "a", video(1))
        assert mirrored == ["d1"] and d1.endpoint_ids("c") == ["c/a"]

    run(scenario)
