"""The in-memory conference store: its per-conference locks."""
from __future__ import annotations

import asyncio

import pytest

from controller.model import Conference
from controller.store import MemoryStore


def conference(conference_id: str) -> Conference:
    return Conference(conference_id, "", "d1", persistent=False, created_at=0.0)


def test_a_failed_request_for_an_unknown_conference_leaves_no_lock() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        with pytest.raises(LookupError):
            async with store.lock("nowhere"):
                raise LookupError("not found")
        async with store.lock("also-nowhere"):
            pass
        assert store._locks == {}

    asyncio.run(scenario())


def test_a_waiter_keeps_the_lock_of_a_conference_ended_and_made_again() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        await store.add(conference("c"))
        inside: list[str] = []
        overlaps: list[tuple[str, ...]] = []

        async def hold(name: str, ready: asyncio.Event | None = None) -> None:
            async with store.lock("c"):
                inside.append(name)
                if ready is not None:
                    ready.set()
                await asyncio.sleep(0.01)
                if len(inside) > 1:
                    overlaps.append(tuple(inside))
                inside.remove(name)

        async def ender(entered: asyncio.Event, release: asyncio.Event) -> None:
            async with store.lock("c"):
                entered.set()
                await release.wait()
                await store.delete("c")

        entered, release = asyncio.Event(), asyncio.Event()
        ending = asyncio.create_task(ender(entered, release))
        await entered.wait()
        waiter = asyncio.create_task(hold("waiter"))
        await asyncio.sleep(0)  # the waiter queues on the ender's lock
        release.set()
        await ending
        # The conference is gone, the waiter has not run yet: it is made again and a new
        # request locks it. Both must not be inside at once.
        await store.add(conference("c"))
        late = asyncio.create_task(hold("late"))
        await asyncio.gather(waiter, late)
        assert overlaps == []
        assert store._locks == {}

    asyncio.run(scenario())
