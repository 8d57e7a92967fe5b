"""A conference whose media daemon is gone (its lease expired: killed, hung or cut off; or it
came back without the conference's endpoints; or it drains) moves to a live daemon with
room: every participant is re-created there with new ports, keys and SSRCs and told so on
its watch stream; where no daemon has room the conference waits, unplaced, and is placed
when one registers.

controller.conferences.Conferences driven in one process (tests/conference_world.py)."""
from __future__ import annotations

from charter.errors import Unavailable
from conference_world import LEASE_TTL, World, audio, routes_of, run, settle, two_daemons, video
from controller import messages


async def a_and_b_on_d1(w: World) -> None:
    await w.conferences.create("c", "", persistent=False)
    assert (await w.conference("c")).daemon_id == "d1"
    await w.join("c", "a", video(1))
    await w.join("c", "b", audio(2), video(3))


async def lose(w: World, daemon_id: str) -> None:
    """`daemon_id` stops renewing its lease (SIGKILL, SIGSTOP): the others renew; it expires."""
    w.clock.advance(LEASE_TTL - 1)
    for other in w.daemons.daemons:
        if other != daemon_id and other in w.leases:
            w.renew(other)
    w.clock.advance(2)
    w.registry.expire()
    await settle()


def test_a_conference_whose_daemon_is_lost_moves_with_new_keys_ports_and_ssrcs() -> None:
    async def scenario() -> None:
        w, d1, d2 = two_daemons()
        d2.occupy(*range(20000, 20010))  # let d2's ports differ from d1's
        w.renew("d2", endpoints=0)
        await a_and_b_on_d1(w)
        before = await w.conference("c")
        old = {p.participant_id: (p.send_key, p.receive_key, p.media_address, dict(p.subscriptions))
               for p in before.participants.values()}
        watch_a = await w.watch("c", "a")
        await lose(w, "d1")

        after = await w.conference("c")
        assert after.daemon_id == "d2" and list(after.participants) == ["a", "b"]
        assert sorted(d2.endpoint_ids()) == ["c/a", "c/b"] and d2.routes == routes_of(after)
        for p in after.participants.values():
            send_key, receive_key, address, subscriptions = old[p.participant_id]
            assert p.daemon_id == "d2" and p.send_key != send_key and p.receive_key != receive_key
            assert p.media_address != address
            assert {k: s.ssrc for k, s in p.subscriptions.items()}.keys() == subscriptions.keys()
            assert all(s.ssrc != subscriptions[k].ssrc for k, s in p.subscriptions.items())
        assert watch_a.summaries(initial=False) == [
            ("moved", "a", "d2", "daemon lost"), ("moved", "b", "d2", "daemon lost"),
        ]
        # Each participant's own stream carries its new session; the others only the news.
        own, other = (messages.event_to_proto(e, "a").participant_moved for e in watch_a.events[-2:])
        assert own.participant.send_key
        assert own.participant.media_address.port == after.participants["a"].media_address[1]
        assert other.participant_id == "b" and not other.HasField("participant")
        await watch_a.close()

    run(scenario)


def test_with_no_room_the_conference_waits_unplaced_until_a_daemon_registers() -> None:
    async def scenario() -> None:
        w = World()
        d1 = w.daemon("d1")
        await a_and_b_on_d1(w)
        watch = await w.watch("c")
        await lose(w, "d1")
        conference = await w.conference("c")
        assert conference.daemon_id == "" and list(conference.participants) == ["a", "b"]
        (unplaced,) = watch.summaries(initial=False)
        assert unplaced[0] == "unplaced" and "no media daemon has room" in unplaced[1]
        try:
            await w.join("c", "late")
        except Unavailable as error:
            assert "waits for a media daemon" in str(error)
        else:
            raise AssertionError("a join must wait for the conference to be placed")
        d1.restart()
        w.register(d1)  # it comes back (restarted): the conference goes onto it
        await w.conferences.registered("d1")
        await settle()
        assert (await w.conference("c")).daemon_id == "d1" and sorted(d1.endpoint_ids()) == ["c/a", "c/b"]
        assert [s[0] for s in watch.summaries(initial=False)] == ["unplaced", "moved", "moved"]
        await watch.close()

    run(scenario)


def test_a_daemon_that_restarted_without_the_endpoints_gets_its_conference_back() -> None:
    async def scenario() -> None:
        w = World()
        d1 = w.daemon("d1")
        await a_and_b_on_d1(w)
        old_keys = {p.participant_id: p.send_key for p in (await w.conference("c")).participants.values()}
        d1.restart()  # quicker than its lease: the controller never saw it go
        w.register(d1)
        await w.conferences.registered("d1")
        conference = await w.conference("c")
        assert sorted(d1.endpoint_ids()) == ["c/a", "c/b"] and d1.routes == routes_of(conference)
        assert all(p.send_key != old_keys[p.participant_id] for p in conference.participants.values())

    run(scenario)


def test_a_draining_daemon_hands_its_conferences_over_if_another_has_room() -> None:
    async def scenario() -> None:
        w, d1, d2 = two_daemons()
        await a_and_b_on_d1(w)
        d2.drain()
        w.renew("d2")
        assert await w.conferences.move_off("d1", "daemon draining", only_if_room=True) == 0
        assert (await w.conference("c")).daemon_id == "d1", "nowhere to go: it stays and is served"
        d2.drain(resume=True)
        w.renew("d2")
        assert await w.conferences.move_off("d1", "daemon draining", only_if_room=True) == 1
        assert (await w.conference("c")).daemon_id == "d2"
        assert d1.endpoint_ids() == [], "the draining daemon released its copies"

    run(scenario)


def test_a_move_that_fails_keeps_the_conference_as_it_was() -> None:
    async def scenario() -> None:
        w, d1, d2 = two_daemons()
        await a_and_b_on_d1(w)
        before = await w.conference("c")
        keys = {p.participant_id: p.send_key for p in before.participants.values()}
        d2.fail("CreateEndpoint", when=lambda request: request.endpoint_id == "c/b")
        await lose(w, "d1")
        conference = await w.conference("c")
        assert conference.daemon_id == "d1" and {p.participant_id: p.send_key for p in
                                                 conference.participants.values()} == keys
        assert d2.endpoint_ids() == [], "nothing half-made is left on d2"
        # The next try (a registration) moves it.
        await w.conferences.move_off("d1", "daemon lost")
        assert (await w.conference("c")).daemon_id == "d2"

    run(scenario)
