"""Conference state as the controller keeps it (in a ConferenceStore)."""
from __future__ import annotations

from dataclasses import dataclass, field

from charter.subscriptions import Subscription
from charter.suites import SrtpSuite
from charter.tracks import Track


@dataclass
class Participant:
    conference_id: str
    participant_id: str
    display_name: str
    tracks: tuple[Track, ...]
    suite: SrtpSuite
    send_key: bytes
    """Participant -> SFU: the participant protects with it, the endpoint unprotects."""
    receive_key: bytes
    """SFU -> participant."""
    receive_address: tuple[str, int] | None
    daemon_id: str
    endpoint_id: str
    media_address: tuple[str, int]
    joined_at: float
    """Wall-clock seconds."""
    subscriptions: dict[tuple[str, int], Subscription] = field(default_factory=dict)
    """By (publisher_id, publisher's SSRC)."""

    def received_ssrcs(self) -> set[int]:
        return {s.ssrc for s in self.subscriptions.values()}

    def own_ssrcs(self) -> set[int]:
        return {t.ssrc for t in self.tracks}


@dataclass
class Conference:
    conference_id: str
    name: str
    daemon_id: str
    persistent: bool
    created_at: float
    participants: dict[str, Participant] = field(default_factory=dict)
    """In the order they joined."""
    sequence: int = 0
    """Number of the last event of the conference."""
