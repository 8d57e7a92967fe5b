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
    region: str = ""
    """Where it runs ("" for unnamed)."""

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


MAX_LINK_RESERVE = 4
"""At most this many endpoints a daemon keeps free for the ends of links to come."""


def place_participant(
    home: str, hosting: dict[str, int], linked: set[frozenset[str]], candidates: Iterable[Candidate],
    region: str = "",
) -> Candidate | None:
    """Which daemon takes a conference's next participant. `home`: the daemon the conference
    was placed on; `hosting`: its participants per daemon; `linked`: the pairs of daemons
    already joined by a relay link; `region`: where the participant is ("" for unsaid). A
    daemon that takes the participant needs an endpoint for it and one per daemon of the
    conference it has no link to yet; each of those needs one for its end of the new link.

    Near first: with a `region` that some daemon has, the participant goes to a daemon of
    that region with room, one of the conference's before another (the conference spreads
    to its region). Then, or without a region, in order: a daemon of the conference with
    room, most participants first (fewer relayed streams), the home daemon on ties; else the
    spread: the least-loaded other daemon with room for the participant and its links. Each
    keeps endpoints free for the ends of later links (one per other daemon, at most
    MAX_LINK_RESERVE), unless there is nowhere to spread to. None when none has room."""
    pool = {c.daemon_id: c for c in candidates}
    # Room for an end of a link to each other daemon (up to MAX_LINK_RESERVE) stays free: a
    # daemon filled to its last endpoints could never let its conference spread further.
    link_reserve = min(len(pool) - 1, MAX_LINK_RESERVE) if pool else 0

    def fits(candidate: Candidate, reserve: int = link_reserve) -> bool:
        others = [d for d in hosting if d != candidate.daemon_id and hosting[d] > 0]
        new_links = [d for d in others if frozenset((d, candidate.daemon_id)) not in linked]
        if candidate.draining or candidate.free < 1 + len(new_links) + reserve:
            return False
        return all(d in pool and not pool[d].draining and pool[d].free >= 1 for d in new_links)

    def here(daemon_id: str) -> tuple[int, int, str]:
        return (-hosting.get(daemon_id, 0), 0 if daemon_id == home else 1, daemon_id)

    def first_fit(among: dict[str, Candidate]) -> Candidate | None:
        """Of `among`: a daemon of the conference, else the least-loaded other one."""
        members = [among[d] for d in sorted(set(hosting) | ({home} if home else set()), key=here) if d in among]
        for candidate in members:
            if fits(candidate):
                return candidate
        spread = [c for c in among.values() if c.daemon_id not in hosting and c.daemon_id != home and fits(c)]
        return min(spread, key=lambda c: (c.load(0), c.conferences, c.daemon_id)) if spread else None

    if region:
        near = first_fit({d: c for d, c in pool.items() if c.region == region})
        if near is not None:
            return near
    chosen = first_fit(pool)
    if chosen is not None:
        return chosen
    # Nowhere to spread to: the conference's daemons give their last endpoints too.
    members = [pool[d] for d in sorted(set(hosting) | ({home} if home else set()), key=here) if d in pool]
    return next((c for c in members if fits(c, reserve=0)), None)
