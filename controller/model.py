"""Conference state as the controller keeps it (in a ConferenceStore)."""
from __future__ import annotations

from dataclasses import dataclass, field

from charter.subscriptions import Subscription
from charter.suites import SrtpSuite
from charter.tracks import Track
from charter.webrtc_sdp import BrowserOffer, Route, Transport


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
    webrtc: WebRtcSession | None = None
    """A browser's session (it joined with an SDP offer)."""
    region: str = ""
    """Where it is (JoinRequest.region): placed on a daemon of that region first."""

    def received_ssrcs(self) -> set[int]:
        """The SSRCs it receives on, RTX streams included."""
        return {s.ssrc for s in self.subscriptions.values()} | {
            s.rtx_ssrc for s in self.subscriptions.values() if s.rtx_ssrc
        }

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
    links: dict[frozenset[str], RelayLink] = field(default_factory=dict)
    """Relay links between the daemons its participants are on, by pair of daemon ids."""

    def daemons(self) -> set[str]:
        """Every daemon holding an endpoint of it (its own, its participants', link ends)."""
        held = {p.daemon_id for p in self.participants.values() if p.daemon_id}
        held |= {d for link in self.links.values() for d in link.daemons}
        return held | ({self.daemon_id} if self.daemon_id else set())

    def endpoints_on(self, daemon_id: str) -> set[str]:
        """The ids of its endpoints on `daemon_id`."""
        owned = {p.endpoint_id for p in self.participants.values() if p.daemon_id == daemon_id}
        return owned | {link.end(self.conference_id, daemon_id) for link in self.links.values()
                        if daemon_id in link.daemons}


@dataclass
class RelayLink:
    """Two daemons of one conference joined daemon to daemon: an SDES endpoint on each, sending
    to the other. A track of a participant on one daemon that a participant on the other
    receives is routed to this daemon's end with an SSRC of the link, and the other end
    publishes it there like any participant's track."""

    daemons: tuple[str, str]
    """The two daemon ids, sorted."""
    keys: tuple[bytes, bytes]
    """keys[i]: what the end on daemons[i] protects with (the other end unprotects)."""
    addresses: tuple[tuple[str, int], tuple[str, int]]
    """Where each end receives."""
    relayed: dict[tuple[str, int], int] = field(default_factory=dict)
    """(publisher id, its SSRC) -> the SSRC the track has on the link."""

    def end(self, conference_id: str, daemon_id: str) -> str:
        """The endpoint id of the end on `daemon_id` ('/' never occurs in a participant id
        and '~' starts none, so it is no participant's)."""
        other = self.daemons[1] if daemon_id == self.daemons[0] else self.daemons[0]
        return f"{conference_id}/~link~{other}"

    def side(self, daemon_id: str) -> int:
        return self.daemons.index(daemon_id)


@dataclass
class WebRtcSession:
    """A WebRTC participant's offer/answer state: what it offered, Charter's side of its
    transport, and the m-lines of Charter's offers to it (one per route, kept once gone)."""

    offer: BrowserOffer
    transport: Transport
    answer: str
    """Charter's answer to its offer."""
    routes: list[Route] = field(default_factory=list)
    """The m-lines of the next offer, in order."""
    version: int = 0
    """Of Charter's last offer (0: none yet)."""
    outstanding: tuple[Route, ...] | None = None
    """The routes of the offer awaiting an answer; None: no offer is outstanding."""
    outstanding_sdp: str = ""
    answered: tuple[Route, ...] = ()
    """The routes of the last offer the participant answered."""
    sdp: str = ""
    """The session as it stands: the answer, or the last offer answered."""

    def __post_init__(self) -> None:
        self.sdp = self.sdp or self.answer
