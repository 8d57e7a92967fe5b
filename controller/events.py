"""Conference events and their fan-out to WatchConference streams.

Events are published while the conference's lock is held, and a watcher is added under the
same lock right after its initial events are built, so a watcher sees every change after
its snapshot exactly once.

With several controllers (a shared store), events made by another controller arrive through
the store's relay, and may come after a later one made here: a watcher yields each sequence
number once, in order, and reads a gap back from the store (`fetch`) before going on.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from charter.errors import FailedPrecondition, ResourceExhausted
from charter.tracks import Track
from controller.model import Participant

log = logging.getLogger("controller.events")

# A watcher this far behind is cut off (it can watch again and get a fresh snapshot) rather
# than letting the controller buffer without bound for a stalled client.
WATCHER_BACKLOG = 10_000


@dataclass(frozen=True)
class ParticipantJoined:
    """What every watcher is told of a participant (not its keys or routes)."""

    participant_id: str
    display_name: str
    tracks: tuple[Track, ...]
    joined_at: float

    @classmethod
    def of(cls, participant: Participant) -> ParticipantJoined:
        return cls(participant.participant_id, participant.display_name, participant.tracks, participant.joined_at)


@dataclass(frozen=True)
class ParticipantLeft:
    participant_id: str
    reason: str = "left"
    """"left" (Leave) or "gone" (its daemon closed its endpoint: the browser went silent)."""


@dataclass(frozen=True)
class TrackAdded:
    publisher_id: str
    track: Track
    ssrcs: dict[str, int]
    """The SSRC assigned to each receiving participant."""


@dataclass(frozen=True)
class TrackRemoved:
    publisher_id: str
    track: Track
    ssrcs: dict[str, int]


@dataclass(frozen=True)
class ConferenceEnded:
    reason: str


@dataclass(frozen=True)
class SessionOffer:
    """Charter's offer to one WebRTC participant: only its own watch streams carry it."""

    participant_id: str
    sdp: str
    version: int


@dataclass(frozen=True)
class ParticipantMoved:
    """A participant's new session after its conference moved to another daemon (a copy, as
    it was then): in full on its own watch streams only (it holds its keys)."""

    participant: Participant
    reason: str


@dataclass(frozen=True)
class ConferenceUnplaced:
    """No daemon has room for the conference: it waits for one."""

    reason: str


Body = (
    ParticipantJoined | ParticipantLeft | TrackAdded | TrackRemoved | ConferenceEnded | SessionOffer
    | ParticipantMoved | ConferenceUnplaced
)


@dataclass(frozen=True)
class Event:
    sequence: int
    time: float
    body: Body
    initial: bool = False


_END = object()
_RESYNC = object()  # read back from the store whatever may have been missed

Fetch = Callable[[str, int], Awaitable["list[Event] | None"]]
"""The store's events_after: a conference's events after a sequence number, None if gone."""


@dataclass(eq=False)
class Watcher:
    conference_id: str
    participant_id: str
    last: int = 0
    """The sequence number of the last event yielded (or the snapshot's)."""
    fetch: Fetch | None = None
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    lagging: bool = False

    async def events(self) -> AsyncIterator[Event]:
        while True:
            item = await self.queue.get()
            if item is _END:
                if self.lagging:
                    raise ResourceExhausted(
                        f"this watch of conference {self.conference_id!r} fell more than "
                        f"{WATCHER_BACKLOG} events behind: watch again"
                    )
                return
            if item is _RESYNC:
                for event in await self._missed(None):
                    yield event
                continue
            assert isinstance(item, Event)
            if item.initial:
                yield item
                continue
            if item.sequence <= self.last:
                continue  # had it already (relayed, or read back)
            if item.sequence > self.last + 1:
                for event in await self._missed(item.sequence):
                    yield event
            self.last = item.sequence
            yield item

    async def _missed(self, before: int | None) -> list[Event]:
        """Events after `last` (and before `before`) read back from the store, in order."""
        if self.fetch is None:
            return []
        missed = await self.fetch(self.conference_id, self.last)
        if missed is None:
            raise FailedPrecondition(f"the events of conference {self.conference_id!r} after {self.last} are no "
                                     "longer kept: watch again without after_sequence for its state")
        taken = [e for e in missed if e.sequence > self.last and (before is None or e.sequence < before)]
        if taken:
            self.last = taken[-1].sequence
        return taken


class EventHub:
    def __init__(self, fetch: Fetch | None = None) -> None:
        self._watchers: dict[str, set[Watcher]] = {}
        self.fetch = fetch
        """Where watchers read back events they missed (a store shared by controllers)."""

    def watch(self, conference_id: str, participant_id: str, initial: list[Event], last: int = 0) -> Watcher:
        """A watcher that gets `initial`, then every event after sequence number `last`."""
        watcher = Watcher(conference_id, participant_id, last=last, fetch=self.fetch)
        for event in initial:
            watcher.queue.put_nowait(event)
        self._watchers.setdefault(conference_id, set()).add(watcher)
        return watcher

    def resync_all(self) -> None:
        """Every watcher reads back what it may have missed (the relay was down)."""
        for watchers in self._watchers.values():
            for watcher in watchers:
                watcher.queue.put_nowait(_RESYNC)

    def unwatch(self, watcher: Watcher) -> None:
        watchers = self._watchers.get(watcher.conference_id)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[watcher.conference_id]

    def publish(self, conference_id: str, events: list[Event]) -> None:
        for watcher in list(self._watchers.get(conference_id, ())):
            if watcher.queue.qsize() + len(events) > WATCHER_BACKLOG:
                log.warning("watcher cut off: too far behind", extra={"conference_id": conference_id})
                watcher.lagging = True
                self._end(watcher)
                continue
            for event in events:
                watcher.queue.put_nowait(event)

    def end(self, conference_id: str) -> None:
        """Close the streams of a conference (after its ConferenceEnded was published)."""
        for watcher in list(self._watchers.get(conference_id, ())):
            self._end(watcher)

    def end_all(self) -> None:
        for conference_id in list(self._watchers):
            self.end(conference_id)

    def _end(self, watcher: Watcher) -> None:
        watcher.queue.put_nowait(_END)
        self.unwatch(watcher)
