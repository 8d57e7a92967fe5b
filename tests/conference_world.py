"""The controller's domain assembled in one process for tests: Conferences over a MemoryStore,
a Registry on a clock the test moves, an EventHub and in-memory media daemons
(tests/daemon_double.py). No socket, no gRPC: a scenario runs in milliseconds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from charter.addresses import Address
from charter.endpoints import EndpointSpec
from charter.errors import CharterError
from charter.subscriptions import SubscriptionSpec
from charter.suites import DEFAULT_SUITE, SrtpSuite, generate_key
from charter.tracks import Track
from controller import events
from controller.conferences import Conferences, JoinSpec, endpoint_id
from controller.model import Conference, Participant
from controller.registry import DaemonLoad, Registry
from controller.store import MemoryStore
from daemon_double import DaemonDouble, DaemonDoubles

LEASE_TTL = 10.0


class Clock:
    """Wall clock of the conferences and monotonic clock of the registry, moved by the test."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class World:
    def __init__(self, lease_ttl: float = LEASE_TTL) -> None:
        self.clock = Clock()
        self.store = MemoryStore()
        self.registry = Registry(lease_ttl, clock=self.clock)
        self.daemons = DaemonDoubles()
        self.hub = events.EventHub()
        self.conferences = Conferences(self.store, self.registry, self.daemons, self.hub, clock=self.clock)
        self.conferences.follow(self.registry)
        self.leases: dict[str, str] = {}

    def daemon(self, daemon_id: str = "d1", **options: Any) -> DaemonDouble:
        """A media daemon, registered."""
        double = self.daemons.add(daemon_id, **options)
        self.register(double)
        return double

    def register(self, double: DaemonDouble) -> None:
        self.leases[double.daemon_id] = self.registry.register(double.info(), double.load()).lease_id

    def renew(self, daemon_id: str, **load: Any) -> None:
        """A lease renewal with this load (default: what the daemon holds)."""
        reported = DaemonLoad(**load) if load else self.daemons.daemons[daemon_id].load()
        self.registry.keep_alive(daemon_id, self.leases[daemon_id], reported)

    async def join(
        self,
        conference_id: str,
        participant_id: str,
        *tracks: Track,
        receive_address: Address | None = None,
        suite: SrtpSuite = DEFAULT_SUITE,
        send_key: bytes | None = None,
        region: str = "",
    ) -> Participant:
        spec = JoinSpec(
            conference_id, participant_id, f"name of {participant_id}", tracks, receive_address, suite, send_key,
            region=region,
        )
        return await self.conferences.join(spec)

    async def conference(self, conference_id: str) -> Conference:
        return await self.conferences.get(conference_id)

    async def watch(self, conference_id: str, participant_id: str = "", after_sequence: int = 0) -> Watch:
        """A watch of the conference (as this participant; resumed after an event), started."""
        return await Watch.start(self.conferences, conference_id, participant_id, after_sequence)


def two_daemons(**options: Any) -> tuple[World, DaemonDouble, DaemonDouble]:
    """A World with two media daemons, "d1" and "d2" (each made with these options), and no
    conference yet."""
    w = World()
    return w, w.daemon("d1", **options), w.daemon("d2", **options)


async def one_conference(*, persistent: bool = False, **daemon_options: Any) -> tuple[World, DaemonDouble]:
    """A World with one media daemon, "d1" (made with these options), holding conference "c",
    with nobody in it yet."""
    w = World()
    d1 = w.daemon("d1", **daemon_options)
    await w.conferences.create("c", "", persistent=persistent)
    return w, d1


async def conference_with_a(
    *, persistent: bool = False, **daemon_options: Any
) -> tuple[World, DaemonDouble, Participant]:
    """`one_conference`, in which participant "a" has joined publishing video(1)."""
    w, d1 = await one_conference(persistent=persistent, **daemon_options)
    a = await w.join("c", "a", video(1))
    return w, d1, a


def leftover(ep_id: str) -> EndpointSpec:
    """An endpoint some earlier attempt left on a daemon (its conference is the id's prefix)."""
    return EndpointSpec(ep_id, ep_id.split("/")[0], DEFAULT_SUITE, generate_key(DEFAULT_SUITE),
                        generate_key(DEFAULT_SUITE), None)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


async def settle() -> None:
    """Let every ready task run (event delivery, a watch starting)."""
    for _ in range(10):
        await asyncio.sleep(0)


def video(ssrc: int) -> Track:
    return Track(ssrc=ssrc, kind="video", codec="VP8", payload_type=96, clock_rate=90000)


def audio(ssrc: int) -> Track:
    return Track(ssrc=ssrc, kind="audio", codec="opus", payload_type=111, clock_rate=48000, channels=2)


def routes_of(conference: Conference) -> set[SubscriptionSpec]:
    """The routes the daemon should hold for what the controller stored (video ones start at a
    key frame)."""
    return {
        SubscriptionSpec(endpoint_id(conference.conference_id, publisher_id), track_ssrc, receiver.endpoint_id, s.ssrc,
                         wait_for_key_frame=s.track.kind == "video")
        for receiver in conference.participants.values()
        for (publisher_id, track_ssrc), s in receiver.subscriptions.items()
    }


def summary(event: events.Event) -> tuple[Any, ...]:
    """An event as a comparable tuple (without its sequence and time)."""
    body = event.body
    if isinstance(body, events.ParticipantJoined):
        return ("joined", body.participant_id)
    if isinstance(body, events.ParticipantLeft):
        return ("left", body.participant_id)
    if isinstance(body, events.TrackAdded):
        return ("track added", body.publisher_id, body.track.ssrc, dict(body.ssrcs))
    if isinstance(body, events.TrackRemoved):
        return ("track removed", body.publisher_id, body.track.ssrc, dict(body.ssrcs))
    if isinstance(body, events.ParticipantMoved):
        return ("moved", body.participant.participant_id, body.participant.daemon_id, body.reason)
    if isinstance(body, events.ConferenceUnplaced):
        return ("unplaced", body.reason)
    assert isinstance(body, events.ConferenceEnded)
    return ("ended", body.reason)


class Watch:
    """A WatchConference stream read in the background into `events`."""

    def __init__(
        self, conferences: Conferences, conference_id: str, participant_id: str = "", after_sequence: int = 0
    ) -> None:
        self.events: list[events.Event] = []
        self.error: CharterError | None = None
        self.ended = False
        self._task = asyncio.get_running_loop().create_task(
            self._read(conferences, conference_id, participant_id, after_sequence)
        )

    @classmethod
    async def start(
        cls, conferences: Conferences, conference_id: str, participant_id: str = "", after_sequence: int = 0
    ) -> Watch:
        watch = cls(conferences, conference_id, participant_id, after_sequence)
        await settle()
        return watch

    async def _read(
        self, conferences: Conferences, conference_id: str, participant_id: str, after_sequence: int
    ) -> None:
        try:
            async for event in conferences.watch(conference_id, participant_id, after_sequence):
                self.events.append(event)
        except CharterError as error:
            self.error = error
        self.ended = True

    def summaries(self, initial: bool | None = None) -> list[tuple[Any, ...]]:
        return [summary(e) for e in self.events if initial is None or e.initial == initial]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
