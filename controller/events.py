"""Conference events and their fan-out to WatchConference streams.

Events are published while the conference's lock is held, and a watcher is added under the
same lock right after its initial events are built, so a watcher sees every change after
its snapshot exactly once.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from charter.errors import ResourceExhausted
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


@dataclass(eq=False)
class Watcher:
    conference_id: str
    participant_id: str
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
            assert isinstance(item, Event)
            yield item


class EventHub:
    def __init__(self) -> None:
        self._watchers: dict[str, set[Watcher]] = {}

    def watch(self, conference_id: str, participant_id: str, initial: list[Event]) -> Watcher:
        watcher = Watcher(conference_id, participant_id)
        for event in initial:
            watcher.queue.put_nowait(event)
        self._watchers.setdefault(conference_id, set()).add(watcher)
        return watcher

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
