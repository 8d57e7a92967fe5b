"""Placement policy: which media daemon takes a new conference. Pure: no I/O, no clock."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """A live media daemon as placement sees it."""

    daemon_id: str
    capacity: int
    """Endpoints it takes at most."""
    endpoints: int
    """Endpoints in use: the participants of the conferences placed on it (from the store,
    exact at once; a renewal's reported count lags by up to a third of the lease)."""
    conferences: int
    draining: bool = False
    max_conferences: int = 0
    """Conferences it takes at most (0: as many as its endpoints allow)."""

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.endpoints)

    def load(self, reserve: int = 0) -> float:
        """Share of capacity in use, counting `reserve` more endpoints per conference."""
        if self.capacity <= 0:
            return float("inf")
        return (self.endpoints + reserve * self.conferences) / self.capacity


RESERVE_PER_CONFERENCE = 2
"""Endpoints a conference is expected to grow into (a conversation needs two). Without it,
conferences created before anyone joins would all go to the daemon that was emptiest at that
moment."""


def has_room(candidate: Candidate, endpoints_needed: int = 1) -> bool:
    """Room for one more conference of `endpoints_needed` endpoints."""
    full = 0 < candidate.max_conferences <= candidate.conferences
    return not candidate.draining and not full and candidate.free >= endpoints_needed


def least_loaded(
    candidates: Iterable[Candidate], endpoints_needed: int = 1, reserve: int = RESERVE_PER_CONFERENCE
) -> Candidate | None:
    """The daemon with room and the lowest load (endpoints in use plus `reserve` per
    conference, as a share of capacity); ties go to fewer conferences, then to the smaller id
    (deterministic). None when no daemon has room."""
    eligible = [c for c in candidates if has_room(c, endpoints_needed)]
    if not eligible:
        return None
    return min(eligible, key=lambda c: (c.load(reserve), c.conferences, c.daemon_id))


def describe(candidates: Iterable[Candidate]) -> str:
    """Why the daemons have no room, for the error message a client sees."""
    parts = []
    for c in sorted(candidates, key=lambda c: c.daemon_id):
        state = "draining" if c.draining else f"{c.endpoints} of {c.capacity} endpoints in use"
        if 0 < c.max_conferences <= c.conferences and not c.draining:
            state = f"{c.conferences} conferences, its most (--max-conferences-per-daemon)"
        parts.append(f"{c.daemon_id}: {state}")
    return "; ".join(parts)
