"""The shared store (controller/redis_store.py) against a real redis-server: two stores on
one Redis stand for two controllers. What one writes the other reads back whole; keys rest
sealed; one conference's lock excludes across them, and a holder that died lets go after
its expiry; events are kept (the last EVENTS_KEPT) and reach the other's watchers in order,
each once, a gap read back from Redis; Redis down is UNAVAILABLE, and after a restart both
carry on, the relay included."""
from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from charter.errors import Unavailable
from controller import redis_store
from controller.events import ConferenceEnded, Event, EventHub, ParticipantLeft
from controller.model import Conference
from controller.redis_store import RedisStore
from controller.store import EVENTS_KEPT
from redis_server import RedisServer, missing, redis_server
from test_sqlite_store import a_conference

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


def stores(redis: RedisServer, tmp_path: Path) -> tuple[RedisStore, RedisStore]:
    """Two controllers' stores on one Redis, sharing the sealing key file."""
    key = tmp_path / "store.key"
    return RedisStore(redis.url, key), RedisStore(redis.url, key)


def plain(conference_id: str, daemon_id: str = "d1") -> Conference:
    return Conference(conference_id, "", daemon_id, persistent=False, created_at=0.0)


def test_what_one_controller_writes_the_other_reads_whole(redis: RedisServer, tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = stores(redis, tmp_path)
        written = a_conference()
        assert await a.add(written)
        assert not await b.add(plain(written.conference_id)), "the id is taken"
        assert await b.get("standup") == written
        for conference_id in ("b", "a", "c"):
            assert await b.add(plain(conference_id, "d2"))
        assert await a.ids() == ["a", "b", "c", "standup"]
        assert [c.conference_id for c in await a.page(after="a", limit=2)] == ["b", "c"]
        usage = await a.daemon_usage()
        assert (usage["mediad-0"].conferences, usage["mediad-0"].endpoints) == (1, 3)
        assert usage["d2"].conferences == 3
        await b.delete("b")
        await b.delete("nowhere")
        assert await a.ids() == ["a", "c", "standup"] and await a.get("b") is None
        assert (await a.daemon_usage())["d2"].conferences == 2
        # SRTP keys rest sealed: the raw record holds none of them, in any encoding.
        raw = await a.redis.get("charter:conference:standup")
        for participant in written.participants.values():
            for key in (participant.send_key, participant.receive_key):
                if key:
                    assert base64.b64encode(key) not in raw and key.hex().encode() not in raw
        # A controller with another key file reads nothing it could misuse.
        stranger = RedisStore(redis.url, tmp_path / "other.key")
        with pytest.raises(Unavailable, match="--store-key"):
            await stranger.get("standup")
        for store in (a, b, stranger):
            await store.aclose()

    asyncio.run(scenario())


def test_a_conference_lock_excludes_across_controllers(redis: RedisServer, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        a, b = stores(redis, tmp_path)
        inside: list[str] = []
        overlaps: list[list[str]] = []

        async def hold(store: RedisStore, name: str) -> None:
            async with store.lock("c"):
                inside.append(name)
                await asyncio.sleep(0.005)
                if len(inside) > 1:
                    overlaps.append(list(inside))
                inside.remove(name)

        await asyncio.gather(*(hold(store, f"{n}{i}") for i in range(10) for store, n in ((a, "a"), (b, "b"))))
        assert overlaps == []

        # A controller that died holding the lock: the others wait for its expiry, no longer.
        monkeypatch.setattr(redis_store, "LOCK_SECONDS", 0.5)
        await a.redis.set("charter:lock:c", "a dead controller", px=500)
        async with b.lock("c"):
            assert await b.redis.get("charter:lock:c") != b"a dead controller"
        await a.aclose()
        await b.aclose()

    asyncio.run(scenario())


def test_events_reach_the_other_controllers_watchers_in_order_once(redis: RedisServer, tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = stores(redis, tmp_path)
        conference = plain("ev")
        await a.add(conference)
        hub = EventHub(fetch=b.events_after)
        relay = asyncio.create_task(b.relay(hub))
        watcher = hub.watch("ev", "", [], last=0)
        seen: list[int] = []

        async def read() -> None:
            async for event in watcher.events():
                seen.append(event.sequence)

        reading = asyncio.create_task(read())

        async def put(sequence: int) -> Event:
            conference.sequence = sequence
            event = Event(sequence, float(sequence), ParticipantLeft(f"p{sequence}"))
            await a.put(conference, [event])
            return event

        async def until(count: int) -> None:
            for _ in range(500):
                if len(seen) >= count:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"only {seen} arrived")

        await asyncio.sleep(0.2)  # the relay subscribed
        for n in (1, 2, 3):
            await put(n)
        await until(3)
        # Event 5 is made here (b's own, published to its hub at once) before 4 was heard of:
        # the watcher reads 4 back from Redis first. The relayed copy of 5 is not yielded twice.
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await put(4)
        five = await put(5)
        hub.publish("ev", [five])
        await until(5)
        relay = asyncio.create_task(b.relay(hub))
        await asyncio.sleep(0.2)
        await put(6)
        await until(6)
        assert seen == [1, 2, 3, 4, 5, 6]

        # Only the last EVENTS_KEPT are kept; the end reaches the watcher and closes it.
        for n in range(7, EVENTS_KEPT + 17):
            conference.sequence = n
            await a.put(conference, [Event(n, 0.0, ParticipantLeft("x"))])
        assert await b.events_after("ev", 5) is None
        assert [e.sequence for e in await b.events_after("ev", EVENTS_KEPT + 14) or []] == [EVENTS_KEPT + 15,
                                                                                            EVENTS_KEPT + 16]
        assert await a.redis.zcard("charter:events:ev") == EVENTS_KEPT
        await a.delete("ev", [Event(EVENTS_KEPT + 17, 0.0, ConferenceEnded("ended"))])
        await asyncio.wait_for(reading, 10)
        assert seen[-1] == EVENTS_KEPT + 17 and len(seen) == len(set(seen))
        assert await a.redis.exists("charter:events:ev") == 0
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await a.aclose()
        await b.aclose()

    asyncio.run(scenario())


def test_redis_down_is_unavailable_and_a_restart_carries_on(redis: RedisServer, tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = stores(redis, tmp_path)
        conference = plain("r")
        await a.add(conference)
        hub = EventHub(fetch=b.events_after)
        relay = asyncio.create_task(b.relay(hub, retry=0.1))
        await asyncio.sleep(0.2)
        watcher = hub.watch("r", "", [], last=0)
        redis.stop()
        with pytest.raises(Unavailable, match="cannot reach its store at redis://.*nothing was changed"):
            await a.get("r")
        with pytest.raises(Unavailable):
            async with a.lock("r"):
                pass
        redis.start()
        assert await a.get("r") == conference, "what was written survives the restart"
        conference.sequence = 1
        await a.put(conference, [Event(1, 0.0, ParticipantLeft("p"))])
        first = await asyncio.wait_for(anext(watcher.events()), 10)
        assert first.sequence == 1
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await a.aclose()
        await b.aclose()

    asyncio.run(scenario())
