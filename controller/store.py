"""Where conference state lives: a small interface, and its in-memory implementation (the
durable one is controller/sqlite_store.py).

Everything the controller knows about a conference goes through ConferenceStore, so a shared
implementation (Redis) can replace these without touching the domain. Changes to one
conference happen under `lock(conference_id)`: read, change, `put`.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.events import Event
from controller.model import Conference

EVENTS_KEPT = 1024
"""Events kept per conference for watch streams that resume (WatchConferenceRequest.after_sequence)."""


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
    async def put(self, conference: Conference, events: Sequence[Event] = ()) -> None:
        """Store the conference as it is now, with the events of the change (numbered)."""
        ...
    async def delete(self, conference_id: str, events: Sequence[Event] = ()) -> None:
        """Forget the conference and its events; `events` are its last (ConferenceEnded), for
        the watchers of other controllers."""
        ...
    async def events_after(self, conference_id: str, sequence: int) -> list[Event] | None:
        """Its events numbered after `sequence`, oldest first (the last EVENTS_KEPT are
        kept); None when some of them are no longer kept."""
        ...
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
        self._events: dict[str, deque[Event]] = {}

    async def get(self, conference_id: str) -> Conference | None:
        return self._conferences.get(conference_id)

    async def add(self, conference: Conference) -> bool:
        if conference.conference_id in self._conferences:
            return False
        await self.put(conference)
        return True

    async def put(self, conference: Conference, events: Sequence[Event] = ()) -> None:
        self._conferences[conference.conference_id] = conference
        if events:
            self._events.setdefault(conference.conference_id, deque(maxlen=EVENTS_KEPT)).extend(events)

    async def delete(self, conference_id: str, events: Sequence[Event] = ()) -> None:
        self._conferences.pop(conference_id, None)
        self._events.pop(conference_id, None)

    async def events_after(self, conference_id: str, sequence: int) -> list[Event] | None:
        conference = self._conferences.get(conference_id)
        if conference is None or sequence >= conference.sequence:
            return []
        kept = self._events.get(conference_id, deque())
        if not kept or kept[0].sequence > sequence + 1:
            return None
        return [e for e in kept if e.sequence > sequence]

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


def endpoints_per_daemon(conference: Conference) -> dict[str, int]:
    """The endpoints a conference has on each daemon: its participants' and its link ends."""
    counts: dict[str, int] = {}
    for participant in conference.participants.values():
        counts[participant.daemon_id] = counts.get(participant.daemon_id, 0) + 1
    for link in conference.links.values():
        for daemon_id in link.daemons:
            counts[daemon_id] = counts.get(daemon_id, 0) + 1
    return counts


def usage_of(conferences: Iterable[Conference]) -> dict[str, DaemonUsage]:
    """Per daemon: the conferences placed on it, and the endpoints of any conference it holds."""
    usage: dict[str, list[int]] = {}
    for conference in conferences:
        usage.setdefault(conference.daemon_id, [0, 0])[0] += 1
        for daemon_id, count in endpoints_per_daemon(conference).items():
            usage.setdefault(daemon_id, [0, 0])[1] += count
    return {d: DaemonUsage(c, e) for d, (c, e) in usage.items()}
