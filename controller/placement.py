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
    """Endpoints in use: the larger of what it reported and what the controller assigned to it,
    so that joins since its last lease renewal count."""
    conferences: int
    draining: bool = False

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.endpoints)

    @property
    def utilisation(self) -> float:
        return self.endpoints / self.capacity if self.capacity > 0 else 1.0


def has_room(candidate: Candidate, endpoints_needed: int = 1) -> bool:
    return not candidate.draining and candidate.free >= endpoints_needed


def least_loaded(candidates: Iterable[Candidate], endpoints_needed: int = 1) -> Candidate | None:
    """The daemon with room and the lowest share of its capacity in use; ties go to the one
    with fewer conferences (a new conference has no endpoints yet, so empty conferences still
    spread), then to the smaller id (deterministic). None when no daemon has room."""
    eligible = [c for c in candidates if has_room(c, endpoints_needed)]
    if not eligible:
        return None
    return min(eligible, key=lambda c: (c.utilisation, c.conferences, c.daemon_id))


def describe(candidates: Iterable[Candidate]) -> str:
    """Why the daemons have no room, for the error message a client sees."""
    parts = []
    for c in sorted(candidates, key=lambda c: c.daemon_id):
        state = "draining" if c.draining else f"{c.endpoints} of {c.capacity} endpoints in use"
        parts.append(f"{c.daemon_id}: {state}")
    return "; ".join(parts)
