"""Where conference state lives: a small interface, and its in-memory implementation (the
durable one is controller/sqlite_store.py).

Everything the controller knows about a conference goes through ConferenceStore, so a shared
implementation (Redis) can replace these without touching the domain. Changes to one
conference happen under `lock(conference_id)`: read, change, `put`.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Protocol

from controller.model import Conference


@dataclass(frozen=True)
class DaemonUsage:
    conferences: int = 0
    endpoints: int = 0


class ConferenceStore(Protocol):
    durable: bool
    """True when the state outlives the controller process (then shutdown keeps conferences)."""

    def lock(self, conference_id: str) -> contextlib.AbstractAsyncContextManager[None]: ...
    async def get(self, conference_id: str) -> Conference | None: ...
    async def add(self, conference: Conference) -> bool:
        """Store a new conference; False if its id is taken."""
        ...
    async def put(self, conference: Conference) -> None: ...
    async def delete(self, conference_id: str) -> None: ...
    async def page(self, after: str = "", limit: int = 100) -> list[Conference]:
        """Conferences with an id greater than `after`, by id."""
        ...
    async def ids(self) -> list[str]: ...
    async def daemon_usage(self) -> dict[str, DaemonUsage]:
        """Conferences and endpoints (participants) placed on each daemon."""
        ...
    def close(self) -> None: ...


class ConferenceLocks:
    """One asyncio lock per conference, for stores that one controller process owns."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        """Per conference: its lock and how many tasks hold it or wait for it."""

    @contextlib.asynccontextmanager
    async def lock(self, conference_id: str) -> AsyncIterator[None]:
        # A lock is dropped only when no task holds it or waits for it: a waiter must get
        # the lock later callers get, even if the conference was ended and made again
        # meanwhile. Requests for ids that do not exist (they raise) leave nothing behind.
        lock, users = self._locks.get(conference_id, (asyncio.Lock(), 0))
        self._locks[conference_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[conference_id]
            if users == 1:
                del self._locks[conference_id]
            else:
                self._locks[conference_id] = (lock, users - 1)


class LocalStore(ConferenceLocks):
    """Conferences held in this process, read from memory: what one controller owns. A
    subclass that persists them writes through in `add`, `put` and `delete`."""

    durable = False

    def __init__(self) -> None:
        super().__init__()
        self._conferences: dict[str, Conference] = {}

    async def get(self, conference_id: str) -> Conference | None:
        return self._conferences.get(conference_id)

    async def add(self, conference: Conference) -> bool:
        if conference.conference_id in self._conferences:
            return False
        await self.put(conference)
        return True

    async def put(self, conference: Conference) -> None:
        self._conferences[conference.conference_id] = conference

    async def delete(self, conference_id: str) -> None:
        self._conferences.pop(conference_id, None)

    async def page(self, after: str = "", limit: int = 100) -> list[Conference]:
        ids = sorted(i for i in self._conferences if i > after)[:limit]
        return [self._conferences[i] for i in ids]

    async def ids(self) -> list[str]:
        return sorted(self._conferences)

    async def daemon_usage(self) -> dict[str, DaemonUsage]:
        return usage_of(self._conferences.values())

    def close(self) -> None:
        pass


class MemoryStore(LocalStore):
    """State in this process, lost when it stops (tests, and `charter controller --store
    memory`)."""


def usage_of(conferences: Iterable[Conference]) -> dict[str, DaemonUsage]:
    usage: dict[str, list[int]] = {}
    for conference in conferences:
        counts = usage.setdefault(conference.daemon_id, [0, 0])
        counts[0] += 1
        counts[1] += len(conference.participants)
    return {d: DaemonUsage(c, e) for d, (c, e) in usage.items()}
